"""The codes HL7 v2 IHE PCD messages carry, written once: profile OIDs, MDC (ISO/IEEE 11073-10101)
terms and units, and the HL7 tables the gateway answers with.

Every value here is from ``../shared/reference/ihe-pcd.md`` (IHE PCD TF-2 Rev 9/10 and the
examples in ``hl7-examples/``). MDC codes are context-free (partition × 65536 + term code). The
numeric codes of ``MDC_EVT_PUMP_DELIV_STOP`` and ``_COMP`` were not found in a source we trust, so
they are not invented here: the IPEC builder takes them from configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

MDC_SYSTEM: Final = "MDC"
# MDC codes in FHIR (the same terms): urn:iso:std:iso:11073:10101
MDC_FHIR_SYSTEM: Final = "urn:iso:std:iso:11073:10101"


@dataclass(frozen=True, slots=True)
class Profile:
    """An IHE PCD message profile: MSH-21 entity id (EI-1), and the OID (EI-3, universal id type ISO)."""

    entity: str
    oid: str

    def msh21(self) -> str:
        return f"{self.entity}^IHE PCD^{self.oid}^ISO"


PCD_01_DEC: Final = Profile("IHE_PCD_001", "1.3.6.1.4.1.19376.1.6.1.1.1")
PCD_03_PIV: Final = Profile("IHE_PCD_PIV_001", "1.3.6.1.4.1.19376.1.6.1.3.1")
PCD_03_RRG: Final = Profile("IHE_PCD_PIV_001", "1.3.6.1.4.1.19376.1.6.1.3.2")
PCD_04_ACM: Final = Profile("IHE_PCD_ACM_001", "1.3.6.1.4.1.19376.1.6.1.4.1")
PCD_10_IPEC: Final = Profile("IHE_PCD_010", "1.3.6.1.4.1.19376.1.6.4.10")

# OIDs accepted in an incoming RGV^O15's MSH-21 (matched leniently: spaces trimmed). The examples
# carry no OID at all; whether that is accepted is a setting (hl7.require_profile_oid).
PIV_OIDS: Final = frozenset({PCD_03_PIV.oid})


@dataclass(frozen=True, slots=True)
class Mdc:
    """An MDC term: context-free code and reference id."""

    code: int
    refid: str

    def cwe(self) -> str:
        """As an HL7 CWE: ``code^REFID^MDC``."""
        return f"{self.code}^{self.refid}^{MDC_SYSTEM}"


# Containment (Vol 3) and the pump model (App. M).
MDS = Mdc(69985, "MDC_DEV_PUMP_INFUS_MDS")
VMD = Mdc(69986, "MDC_DEV_PUMP_INFUS_VMD")
CHAN_SOURCE = Mdc(126977, "MDC_DEV_PUMP_INFUS_CHAN_SOURCE")
CHAN_DELIVERY = Mdc(126978, "MDC_DEV_PUMP_INFUS_CHAN_DELIVERY")
LVP_MDS = Mdc(70049, "MDC_DEV_PUMP_INFUS_LVP_MDS")
LVP_VMD = Mdc(70050, "MDC_DEV_PUMP_INFUS_LVP_VMD")
SYRINGE_MDS = Mdc(70053, "MDC_DEV_PUMP_INFUS_SYRINGE_MDS")
SYRINGE_VMD = Mdc(70054, "MDC_DEV_PUMP_INFUS_SYRINGE_VMD")
DELIVERY_INFO = Mdc(70067, "MDC_DEV_PUMP_DELIVERY_INFO")
INFUSATE_SOURCE_PRIMARY = Mdc(70071, "MDC_DEV_PUMP_INFUSATE_SOURCE_PRIMARY")

# Flow, dose, volumes and time.
FLOW_FLUID_PUMP = Mdc(157784, "MDC_FLOW_FLUID_PUMP")
FLOW_FLUID_PUMP_CURRENT = Mdc(158014, "MDC_FLOW_FLUID_PUMP_CURRENT")
RATE_DOSE = Mdc(157924, "MDC_RATE_DOSE")
FLOW_DRUG_DELIV = Mdc(157804, "MDC_FLOW_DRUG_DELIV")
VOL_FLUID_TBI = Mdc(157884, "MDC_VOL_FLUID_TBI")
VOL_FLUID_TBI_REMAIN = Mdc(157872, "MDC_VOL_FLUID_TBI_REMAIN")
VOL_FLUID_DELIV = Mdc(157864, "MDC_VOL_FLUID_DELIV")
VOL_FLUID_DELIV_TOTAL = Mdc(157993, "MDC_VOL_FLUID_DELIV_TOTAL")
VOL_FLUID_DELIV_TOTAL_SET = Mdc(157888, "MDC_VOL_FLUID_DELIV_TOTAL_SET")
VOL_INFUS_ACTUAL_TOTAL = Mdc(157948, "MDC_VOL_INFUS_ACTUAL_TOTAL")
TIME_PD_REMAIN = Mdc(157916, "MDC_TIME_PD_REMAIN")

# Drug, status, library.
CONC_DRUG = Mdc(157760, "MDC_CONC_DRUG")
DRUG_NAME_TYPE = Mdc(184330, "MDC_DRUG_NAME_TYPE")
DRUG_NAME_LABEL = Mdc(184514, "MDC_DRUG_NAME_LABEL")
PUMP_STAT = Mdc(184508, "MDC_PUMP_STAT")
PUMP_MODE = Mdc(184504, "MDC_PUMP_MODE")
PUMP_INFUSING_STATUS = Mdc(184519, "MDC_PUMP_INFUSING_STATUS")
CURRENT_DELIVERY_STATUS = Mdc(158005, "MDC_DEV_PUMP_CURRENT_DELIVERY_STATUS")
NOT_DELIVERING_REASON = Mdc(158006, "MDC_DEV_PUMP_NOT_DELIVERING_REASON")
PROGRAM_DELIVERY_MODE = Mdc(158008, "MDC_DEV_PUMP_PROGRAM_DELIVERY_MODE")
SOURCE_CHANNEL_LABEL = Mdc(158012, "MDC_DEV_PUMP_SOURCE_CHANNEL_LABEL")
ACTIVE_SOURCES = Mdc(158016, "MDC_DEV_PUMP_ACTIVE_SOURCES")
LIBRARY_CARE_AREA = Mdc(184516, "MDC_PUMP_DRUG_LIBRARY_CARE_AREA")
LIBRARY_VERSION = Mdc(184517, "MDC_PUMP_DRUG_LIBRARY_VERSION")
LIBRARY_NAME = Mdc(184520, "MDC_PUMP_DRUG_LIBRARY_NAME")

# Patient attributes (PIV OBX).
PT_WEIGHT = Mdc(68063, "MDC_ATTR_PT_WEIGHT")
PT_HEIGHT = Mdc(68060, "MDC_ATTR_PT_HEIGHT")
PT_BSA = Mdc(188744, "MDC_AREA_BODY_SURF_ACTUAL")

# Events (IPEC) and alerts (ACM).
EVT_COND = Mdc(68487, "MDC_ATTR_EVT_COND")
EVT_SOURCE = Mdc(68488, "MDC_ATTR_EVT_SOURCE")
EVT_PUMP_DELIV_START = Mdc(197288, "MDC_EVT_PUMP_DELIV_START")
EVT_ALARM = Mdc(196616, "MDC_EVT_ALARM")
EVT_FLUID_LINE_OCCL = Mdc(196940, "MDC_EVT_FLUID_LINE_OCCL")
ALERT_SOURCE = Mdc(68480, "MDC_ATTR_ALERT_SOURCE")
EVENT_PHASE = Mdc(68481, "MDC_ATTR_EVENT_PHASE")
ALARM_STATE = Mdc(68482, "MDC_ATTR_ALARM_STATE")
ALARM_INACTIVATION_STATE = Mdc(68483, "MDC_ATTR_ALARM_INACTIVATION_STATE")
ALARM_PRIORITY = Mdc(68484, "MDC_ATTR_ALARM_PRIORITY")
ALERT_TYPE = Mdc(68485, "MDC_ATTR_ALERT_TYPE")
ALERT_TEXT = Mdc(68546, "MDC_ATTR_ALERT_TEXT")


@dataclass(frozen=True, slots=True)
class MdcUnit:
    """A unit as MDC code and reference id, and the UCUM code the gateway uses for it."""

    code: int
    refid: str
    ucum: str

    def ce(self) -> str:
        """As an HL7 CWE with the UCUM alternate: ``263762^MDC_DIM_MILLI_L^MDC^mL^mL^UCUM``."""
        return f"{self.code}^{self.refid}^{MDC_SYSTEM}^{self.ucum}^{self.ucum}^UCUM"


UNITS: Final[tuple[MdcUnit, ...]] = (
    MdcUnit(263762, "MDC_DIM_MILLI_L", "mL"),
    MdcUnit(265266, "MDC_DIM_MILLI_L_PER_HR", "mL/h"),
    MdcUnit(265619, "MDC_DIM_MICRO_G_PER_KG_PER_MIN", "ug/kg/min"),
    MdcUnit(263890, "MDC_DIM_MILLI_G", "mg"),
    MdcUnit(263872, "MDC_DIM_X_G", "g"),
    MdcUnit(263875, "MDC_DIM_KILO_G", "kg"),
    MdcUnit(264306, "MDC_DIM_MILLI_G_PER_ML", "mg/mL"),
    MdcUnit(265522, "MDC_DIM_MILLI_G_PER_HR", "mg/h"),
    MdcUnit(264352, "MDC_DIM_MIN", "min"),
    MdcUnit(264384, "MDC_DIM_HR", "h"),
    MdcUnit(264320, "MDC_DIM_SEC", "s"),
    MdcUnit(263441, "MDC_DIM_CENTI_M", "cm"),
)
UNIT_BY_MDC_CODE: Final[dict[int, MdcUnit]] = {u.code: u for u in UNITS}
UNIT_BY_MDC_REFID: Final[dict[str, MdcUnit]] = {u.refid: u for u in UNITS}
UNIT_BY_UCUM: Final[dict[str, MdcUnit]] = {u.ucum: u for u in UNITS}

# HL7 table 0008 (acknowledgment codes).
ACK_ACCEPT: Final = frozenset({"AA", "CA"})
ACK_ERROR: Final = frozenset({"AE", "CE"})
ACK_REJECT: Final = frozenset({"AR", "CR"})

# HL7 table 0357 (message error condition codes): the codes the gateway uses are named in
# pumpgw.gateway.orders (HL7_*), next to the PIV codes; their texts, for ERR-3:
TABLE_0357_TEXT: Final[dict[str, str]] = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}
