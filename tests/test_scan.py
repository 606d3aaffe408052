"""The bedside scan parser (gateway/scan.py): every vector of the barcode reference, the refusals a
nurse will meet, and properties over arbitrary and built input.

Vectors W1, S1, M1, A1, E1 and N1 and the check-digit keys are from
``../shared/reference/barcodes.md`` (§5 and §4); each test says which.
"""

from __future__ import annotations

import tomllib
from datetime import date

import pytest
from biip.checksums import gs1_standard_check_digit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pumpgw.gateway.config import ScanningSection, parse_config
from pumpgw.gateway.errors import ConfigError
from pumpgw.gateway.scan import DEFAULT_LABEL_PATTERN, MAX_SCAN_CHARS, ScanConfig, parse_scan
from pumpgw.gateway.scan_types import (
    ClinicianScan,
    LabelScan,
    MedicationScan,
    PatientScan,
    PumpScan,
    Scan,
    ScanKind,
    ScanRejected,
)

GS = "\x1d"
PUMPS = {"9520614141234567": ("pump-1", 2), "952061414PUMP7": ("pump-2", None)}
CONFIG = ScanConfig(pumps=PUMPS)


def outcome(raw: str, config: ScanConfig) -> Scan | ScanRejected:
    """What parse_scan makes of ``raw``: the scan, or the refusal (returned, not raised)."""
    try:
        return parse_scan(raw, config)
    except ScanRejected as exc:
        return exc


def rejected(raw: str, config: ScanConfig = CONFIG) -> str:
    """The reason ``raw`` is refused (fails the test if it is accepted)."""
    with pytest.raises(ScanRejected) as info:
        parse_scan(raw, config)
    assert info.value.raw in (raw, raw[:MAX_SCAN_CHARS])
    return info.value.reason


# --- barcodes.md §5 vectors ----------------------------------------------------------------------


def test_w1_patient_wristband() -> None:
    """barcodes.md §5 W1: 8018 GSRN (check digit ok) and 8019 SRIN; the GSRN is the patient id."""
    raw = "]d28018123456789012345675\x1d8019123"
    assert parse_scan(raw, CONFIG) == PatientScan(
        raw=raw, patient_id="123456789012345675", gsrn="123456789012345675", srin="123"
    )


def test_s1_staff_badge() -> None:
    """barcodes.md §5 S1: 8017 GSRN, check digit ok."""
    raw = "]d28017795260646688514634"
    scan = parse_scan(raw, CONFIG)
    assert scan == ClinicianScan(raw=raw, clinician_id="795260646688514634")
    assert scan.kind is ScanKind.CLINICIAN


def test_m1_drug_pack() -> None:
    """barcodes.md §5 M1: 01 GTIN, 17 = 2027-12-31, 10 = ABC123, 21 = SN0001."""
    raw = "]d201095212345432131727123110ABC123\x1d21SN0001"
    assert parse_scan(raw, CONFIG) == MedicationScan(
        raw=raw, gtin="09521234543213", expiry=date(2027, 12, 31), lot="ABC123", serial="SN0001"
    )


def test_a1_pump_asset_label_resolves_to_the_configured_pump_and_channel() -> None:
    """barcodes.md §5 A1: GS1-128 8004 GIAI 9520614141234567 (from GSE dl.c tests)."""
    raw = "]C180049520614141234567"
    assert parse_scan(raw, CONFIG) == PumpScan(raw=raw, pump_id="pump-1", channel=2, giai="9520614141234567")


def test_a1_an_unknown_giai_is_refused_naming_it() -> None:
    """barcodes.md §5 A1, with a gateway that does not know the label."""
    reason = rejected("]C180049520614141234567", ScanConfig())
    assert "this pump label is not known to this gateway: GIAI 9520614141234567" in reason


def test_a_pump_label_for_the_whole_pump_has_no_channel() -> None:
    assert parse_scan("]d28004952061414PUMP7", CONFIG) == PumpScan(
        raw="]d28004952061414PUMP7", pump_id="pump-2", channel=None, giai="952061414PUMP7"
    )


@pytest.mark.parametrize(
    ("raw", "gtin"),
    [("]E09521234543213", "09521234543213"), ("]E00311112222335", "00311112222335")],
)
def test_e1_linear_ean_upc_gives_a_gtin_padded_to_14(raw: str, gtin: str) -> None:
    """barcodes.md §5 E1: EAN-13, and UPC-A sent as 13 digits (the NDC GTIN of §3): bare GTINs."""
    assert parse_scan(raw, CONFIG) == MedicationScan(raw=raw, gtin=gtin)


@pytest.mark.parametrize("prefix", ["", "]d2", "]C1"])
def test_n1_gs_dropped_is_refused_with_the_fix(prefix: str) -> None:
    """barcodes.md §5 N1 (and §6.1): without GS, biip reads lot ABC12321SN0001 and loses the
    serial; the parser refuses to guess and says how to fix the scanner."""
    reason = rejected(prefix + "01095212345432131727123110ABC12321SN0001")
    assert "lot 'ABC12321SN0001'" in reason
    assert "lot 'ABC123' followed by serial number 'SN0001'" in reason
    assert "scanner seems to drop the group separator" in reason
    assert "[scanning] separator_chars" in reason


def test_n1_with_the_separator_kept_is_m1() -> None:
    """barcodes.md §5 N1 vs M1: the same fields with GS read as lot and serial."""
    scan = parse_scan("01095212345432131727123110ABC123\x1d21SN0001", CONFIG)
    assert isinstance(scan, MedicationScan)
    assert (scan.lot, scan.serial) == ("ABC123", "SN0001")


# --- barcodes.md §4 check digits -----------------------------------------------------------------


@pytest.mark.parametrize("gtin", ["09521234543213", "09520123456788", "12312312312333", "12345678901231"])
def test_s4_valid_gtins_in_ai_01(gtin: str) -> None:
    """barcodes.md §4: GTIN keys [verified]."""
    assert parse_scan(f"]d201{gtin}", CONFIG) == MedicationScan(raw=f"]d201{gtin}", gtin=gtin)


def test_s4_gtin8_and_itf14() -> None:
    """barcodes.md §4: GTIN-8 02345673 (EAN-8, ]E4) and a GTIN-14 as ITF-14 (]I1)."""
    assert parse_scan("]E402345673", CONFIG) == MedicationScan(raw="]E402345673", gtin="00000002345673")
    assert parse_scan("]I112312312312333", CONFIG) == MedicationScan(
        raw="]I112312312312333", gtin="12312312312333"
    )


@pytest.mark.parametrize("gsrn", ["123456789012345675", "795260646688514634"])
def test_s4_valid_gsrns_as_patient_and_staff(gsrn: str) -> None:
    """barcodes.md §4: GSRN keys [verified], in 8018 and in 8017."""
    assert parse_scan(f"]d28018{gsrn}", CONFIG) == PatientScan(
        raw=f"]d28018{gsrn}", patient_id=gsrn, gsrn=gsrn
    )
    assert parse_scan(f"]d28017{gsrn}", CONFIG) == ClinicianScan(raw=f"]d28017{gsrn}", clinician_id=gsrn)


def test_a_wrong_gsrn_check_digit_on_a_wristband_is_refused_naming_the_digit() -> None:
    """barcodes.md §4 GSRN 123456789012345675 with its last digit changed (biip does not check it, §6.7)."""
    reason = rejected("]d28018123456789012345670\x1d8019123")
    assert "wristband" in reason
    assert "GSRN 123456789012345670" in reason
    assert "last digit is 0 but should be 5" in reason


def test_a_wrong_gsrn_check_digit_on_a_badge_is_refused_naming_the_digit() -> None:
    """barcodes.md §4 GSRN 795260646688514634 with its last digit changed."""
    reason = rejected("]d28017795260646688514631")
    assert "badge" in reason
    assert "last digit is 1 but should be 4" in reason


@pytest.mark.parametrize("raw", ["]d20109521234543214", "]E09521234543214", "9521234543214"])
def test_a_wrong_gtin_check_digit_is_refused_naming_the_digit(raw: str) -> None:
    """barcodes.md §4 GTIN 09521234543213 with its last digit changed: in AI 01 (biip's gtin_error)
    and as a linear EAN-13."""
    reason = rejected(raw)
    assert "product code (GTIN)" in reason
    assert "last digit is 4 but should be 3" in reason


# --- separators ----------------------------------------------------------------------------------


def test_a_configured_substitute_separator_works() -> None:
    """barcodes.md §6.1: the scanner sends '|' for GS, and the gateway is told so."""
    config = ScanConfig(separator_chars=("|",))
    assert config.separator_chars == (GS, "|")  # GS always separates
    scan = parse_scan("]d201095212345432131727123110ABC123|21SN0001", config)
    assert isinstance(scan, MedicationScan)
    assert (scan.lot, scan.serial) == ("ABC123", "SN0001")
    assert isinstance(parse_scan("]d201095212345432131727123110ABC123\x1d21SN0001", config), MedicationScan)


def test_an_unconfigured_substitute_is_refused_naming_it() -> None:
    reason = rejected("]d201095212345432131727123110ABC123|21SN0001")
    assert "'|'" in reason
    assert "[scanning] separator_chars" in reason


def test_a_trailing_separator_and_the_enter_suffix_are_ignored() -> None:
    """barcodes.md §2: a trailing FNC1 is not always stripped; wedge scanners append Enter."""
    scan = parse_scan("]d201095212345432131727123110ABC123\x1d\r\n", CONFIG)
    assert isinstance(scan, MedicationScan)
    assert scan.lot == "ABC123"


def test_a_lot_without_an_ai_inside_it_is_not_taken_for_a_lost_separator() -> None:
    scan = parse_scan("]d20109521234543213172712311012345", CONFIG)
    assert isinstance(scan, MedicationScan)
    assert scan.lot == "12345"


def test_digits_in_a_giai_are_not_taken_for_a_lost_separator() -> None:
    """A GIAI holding "21..." or "10..." cannot hide a serial or lot: those need a GTIN (01)."""
    config = ScanConfig(pumps={"952061421SN10AB": ("pump-1", 1)})
    assert isinstance(parse_scan("]C18004952061421SN10AB", config), PumpScan)


# --- pairing rules -------------------------------------------------------------------------------


def test_an_srin_without_a_gsrn_is_refused() -> None:
    """GS1 syntax dictionary: 8019 req=8017,8018 (barcodes.md §1, §6.6)."""
    reason = rejected("]d28019123")
    assert "SRIN" in reason
    assert "GS1 requires" in reason


def test_patient_and_staff_on_one_code_are_refused() -> None:
    """GS1 syntax dictionary: 8017 ex=8018 (barcodes.md §1, §6.6), with the W1 and S1 keys."""
    reason = rejected("]d28017795260646688514634\x1d8018123456789012345675\x1d8019123")
    assert "both a patient number (8018) and a staff number (8017)" in reason


def test_a_lot_without_a_gtin_is_refused() -> None:
    """GS1 syntax dictionary: 10 req=01,02,8006,8026."""
    assert "without a product code (GTIN, AI 01)" in rejected("]d28018123456789012345675\x1d10ABC")


def test_two_keys_on_one_code_are_refused() -> None:
    reason = rejected("]d201095212345432138018123456789012345675")
    assert "identifies one thing" in reason


def test_the_same_ai_twice_with_different_values_is_refused() -> None:
    reason = rejected("]d2010952123454321310A\x1d10B")
    assert "two different lots" in reason


def test_a_gs1_code_without_a_bedside_key_is_refused_saying_what_it_holds() -> None:
    """barcodes.md §4 GLN 9521234500001 [computed], a location label."""
    reason = rejected("]C14149521234500001")
    assert "location code (GLN)" in reason
    assert "none of what the bedside uses" in reason


# --- other formats -------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["=A99992412345600", "]C0=A99992412345600", "&)1234"])
def test_isbt_128_is_refused_cleanly(raw: str) -> None:
    """barcodes.md §6.9: blood products carry ISBT 128, not GS1."""
    assert "ISBT 128" in rejected(raw)


def test_hibc_is_refused() -> None:
    """barcodes.md §4: HIBC LIC worked example +A123BJC5D6E71G."""
    assert "HIBC" in rejected("+A123BJC5D6E71G")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://id.gs1.org/01/09521234543213/10/ABC123/21/SN0001?17=271231", "medication"),
        ("]Q1https://id.gs1.org/8018/123456789012345675/8019/123", "patient"),
        ("]d1https://example.org/8004/9520614141234567", "pump"),
    ],
)
def test_gs1_digital_link_urls_are_read(raw: str, expected: str) -> None:
    """barcodes.md §2 (Digital Link arrives as ]d1/]Q1 https://...), §7 (biip reads uncompressed links)."""
    scan = parse_scan(raw, CONFIG)
    assert scan.kind == expected
    if isinstance(scan, MedicationScan):
        assert (scan.gtin, scan.lot, scan.serial, scan.expiry) == (
            "09521234543213", "ABC123", "SN0001", date(2027, 12, 31)
        )  # fmt: skip


def test_a_digital_link_with_a_wrong_check_digit_is_refused() -> None:
    assert "last digit is 4 but should be 3" in rejected("https://id.gs1.org/01/09521234543214")


def test_a_compressed_digital_link_is_refused_clearly() -> None:
    assert "compressed links are not supported" in rejected("]Q1https://id.gs1.org/ARHKVAdpQgTgj")


def test_upc_e_is_expanded_to_its_upc_a_gtin() -> None:
    """ISO/IEC 15424: ]E0 covers UPC-E (8 digits); 0 123456 5 expands to UPC-A 012345000065."""
    assert parse_scan("]E001234565", CONFIG) == MedicationScan(raw="]E001234565", gtin="00012345000065")


def test_expiry_day_00_is_the_last_day_of_the_month() -> None:
    """barcodes.md §1 (AI 17 yymmd0) and §6.5: the expiry is returned; the workflow compares it."""
    scan = parse_scan("]d2010952123454321317270200", CONFIG)
    assert isinstance(scan, MedicationScan)
    assert scan.expiry == date(2027, 2, 28)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("", "nothing was scanned"),
        (" \r\n", "nothing was scanned"),
        ("]d2", "no data"),
        ("]", "not a symbology identifier"),
        ("]Yx0109521234543213", "not a symbology identifier"),
        ("]d20109521234543213\x0410ABC", "control character U+0004"),
        ("RX-\x1e12", "control character U+001E"),
        ("]d2(01)09521234543213", "printed under a barcode"),
        ("]C0HELLO", "plain Code 128"),
        ("12345670", "EAN-8 or a UPC-E"),
        ("80041234567890", "pump label"),
        ("]d28018\u0661\u0662", "keyboard layout"),
        ("]E3952123454321312", "add-on"),
        ("]d29912345", "none of what the bedside uses"),
        ("]d20109521234543213177213", "not a GS1 code this gateway can read"),
    ],
)
def test_refusals_say_why(raw: str, words: str) -> None:
    assert words in rejected(raw)


def test_very_long_input_is_refused_before_parsing() -> None:
    raw = "]d2010952123454321310" + "A" * 600
    reason = rejected(raw)
    assert f"at most {MAX_SCAN_CHARS}" in reason
    assert "at most" not in rejected("]d2" + "9" * (MAX_SCAN_CHARS - 3))  # the limit is inclusive


# --- pharmacy labels and the patient id ---------------------------------------------------------


def test_the_default_label_format_gives_the_order_id() -> None:
    assert DEFAULT_LABEL_PATTERN == r"^RX-(?P<order>[A-Za-z0-9._-]{1,40})$"
    assert parse_scan("]C0RX-ORD.778-2", CONFIG) == LabelScan(raw="]C0RX-ORD.778-2", order_id="ORD.778-2")
    assert parse_scan("RX-778", CONFIG) == LabelScan(raw="RX-778", order_id="778")


def test_a_label_is_not_looked_for_in_a_gs1_symbology() -> None:
    """A GS1 DataMatrix is read as GS1 even if a site's pattern would match its text."""
    config = ScanConfig(label_pattern=r"^(?P<order>[0-9A-Z]{5,9})$")
    assert parse_scan("]C0AB1234", config) == LabelScan(raw="]C0AB1234", order_id="AB1234")
    assert "none of what the bedside uses" in rejected("]d29112345", config)


def test_a_configured_label_format_with_dispense_and_patient() -> None:
    config = ScanConfig(label_pattern=r"^PH\*(?P<dispense>\d{6})\*(?P<patient>[A-Z]\d{7})$")
    assert parse_scan("]Q1PH*004211*M1234567", config) == LabelScan(
        raw="]Q1PH*004211*M1234567", dispense_id="004211", patient_id="M1234567"
    )


@pytest.mark.parametrize(
    ("pattern", "words"),
    [
        (r"^(?P<order>\d+)$", "matches the GS1/EAN code"),
        (r"^RX-(?P<who>\d+)$", "unknown named groups"),
        (r"^RX-(?P<patient>\d+)$", "needs a named group order or dispense"),
        (r"^RX-(", "not a valid regular expression"),
    ],
)
def test_an_unusable_label_pattern_is_refused_at_configuration(pattern: str, words: str) -> None:
    with pytest.raises(ValueError, match="label_pattern") as info:
        ScanConfig(label_pattern=pattern)
    assert words in str(info.value)


def test_the_patient_id_from_an_internal_ai() -> None:
    """barcodes.md §3: NHS bands carry the hospital number in internal AI 91 beside the GSRN."""
    config = ScanConfig(patient_id_from="ai:91")
    raw = "]d28018123456789012345675\x1d91RXH123456\x1d8019123"
    assert parse_scan(raw, config) == PatientScan(
        raw=raw, patient_id="RXH123456", gsrn="123456789012345675", srin="123"
    )
    assert "without the hospital number (AI 91)" in rejected("]d28018123456789012345675", config)
    # the GSRN is still checked
    assert "last digit is 0" in rejected("]d28018123456789012345670\x1d91RXH123456", config)


# --- configuration ([scanning]) --------------------------------------------------------------


def test_the_scanning_section_builds_the_parser_configuration() -> None:
    text = """
[scanning]
separator_chars = ["|"]
patient_id_from = "ai:91"
label_pattern = '^PH-(?P<dispense>[0-9]{1,12})$'

[[scanning.pump_labels]]
giai = "9520614141234567"
pump = "syringe-1"
channel = 1

[[scanning.pump_labels]]
giai = "952061414PUMP7"
pump = "volumetric-2"
"""
    cfg = parse_config(tomllib.loads(text), "test.toml")
    config = ScanConfig.from_section(cfg.scanning)
    assert config.separator_chars == (GS, "|")
    assert config.patient_id_from == "ai:91"
    assert dict(config.pumps) == {
        "9520614141234567": ("syringe-1", 1),
        "952061414PUMP7": ("volumetric-2", None),
    }
    assert parse_scan("]C180049520614141234567", config) == PumpScan(
        raw="]C180049520614141234567", pump_id="syringe-1", channel=1, giai="9520614141234567"
    )
    assert parse_config({}, "empty.toml").scanning == ScanningSection()


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"separator_chars": ["1"]}, "scanning.separator_chars"),
        ({"separator_chars": ["||"]}, "scanning.separator_chars"),
        ({"patient_id_from": "mrn"}, "scanning.patient_id_from"),
        ({"label_pattern": "(?P<order>.*)"}, "scanning.label_pattern"),
        ({"pump_labels": [{"giai": "A", "pump": "p"}, {"giai": "A", "pump": "q"}]}, "scanning.pump_labels"),
        ({"pump_labels": [{"giai": "A B", "pump": "p"}]}, "scanning.pump_labels[0].giai"),
        ({"pump_labels": [{"giai": "A", "pump": "p", "channel": 0}]}, "scanning.pump_labels[0].channel"),
        ({"separator": ["|"]}, "scanning.separator"),
    ],
)
def test_a_bad_scanning_section_is_refused_naming_the_key(section: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"scanning": section}, "test.toml")
    assert info.value.key == key


# --- properties ----------------------------------------------------------------------------------

CSET82 = "!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
READ_AIS = ("01", "10", "11", "17", "21", "8004", "8017", "8018", "8019")
SCANNERISH = st.text(alphabet=st.sampled_from([*"0123456789]dCQeE123|()=+&:/.?htps", GS, "\r", "\x04"]))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.text(max_size=MAX_SCAN_CHARS + 20),
        SCANNERISH,
        st.tuples(
            st.sampled_from(["]d2", "]C1", "]Q3", "]E0", "]e0", "]C0", "]d1", "]Q1", "]E4", "]I1", ""]),
            st.sampled_from(["", "01", "8018", "8017", "8004", "10", "https://id.gs1.org/01/", "RX-"]),
            st.one_of(SCANNERISH, st.text(alphabet=CSET82 + GS)),
        ).map("".join),
    )
)
def test_arbitrary_text_only_ever_raises_scan_rejected(raw: str) -> None:
    result = outcome(raw, ScanConfig(separator_chars=("|",), pumps=PUMPS))
    if isinstance(result, ScanRejected):
        assert result.reason
    else:
        assert result.raw == raw


def with_check_digit(body: str) -> str:
    return body + str(gs1_standard_check_digit(body))


GTINS = st.text(alphabet="0123456789", min_size=13, max_size=13).map(with_check_digit)
GSRNS = st.text(alphabet="0123456789", min_size=17, max_size=17).map(with_check_digit)
XVALUES = st.text(alphabet=CSET82, min_size=1, max_size=20)
GS1_PREFIXES = st.sampled_from(["]d2", "]C1", "]Q3", "]e0", "]J1", ""])
SEPARATORS = st.sampled_from([GS, "|"])
SUBSTITUTE = ScanConfig(separator_chars=("|",))


def build(fields: list[tuple[str, str]], separator: str, variable: set[str]) -> str:
    """GS1 element strings with ``separator`` after each variable-length field but the last."""
    out = ""
    for i, (ai, value) in enumerate(fields):
        out += ai + value
        if ai in variable and i < len(fields) - 1:
            out += separator
    return out


@settings(max_examples=300)
@given(
    prefix=GS1_PREFIXES,
    separator=SEPARATORS,
    gtin=GTINS,
    expiry=st.none() | st.dates(min_value=date(2000, 1, 1), max_value=date(2049, 12, 31)),
    lot=st.none() | XVALUES,
    serial=st.none() | XVALUES,
    order=st.randoms(use_true_random=False),
)
def test_a_built_medication_code_round_trips(
    prefix: str,
    separator: str,
    gtin: str,
    expiry: date | None,
    lot: str | None,
    serial: str | None,
    order: object,
) -> None:
    """Random valid GTINs (computed check digit), expiry, lot and serial from GS1 character set 82,
    in any order. With a separator in the scan it must read back exactly; without one (a single
    variable field, last) it may only be refused as a lost separator, and only when the field
    really holds text that reads as another AI (the ambiguity documented in gateway/scan.py)."""
    fields = [("01", gtin)]
    if expiry is not None:
        fields.append(("17", expiry.strftime("%y%m%d")))
    if lot is not None:
        fields.append(("10", lot))
    if serial is not None:
        fields.append(("21", serial))
    order.shuffle(fields)  # type: ignore[attr-defined]
    raw = prefix + build(fields, separator, {"10", "21"})
    expected = MedicationScan(raw=raw, gtin=gtin, expiry=expiry, lot=lot, serial=serial)
    if separator in raw:
        assert parse_scan(raw, SUBSTITUTE) == expected
        return
    result = outcome(raw, SUBSTITUTE)
    if isinstance(result, ScanRejected):
        assert "drop the group separator" in result.reason
        last = fields[-1][1]
        assert any(last[cut:].startswith(READ_AIS) for cut in range(1, len(last)))
    else:
        assert result == expected


@settings(max_examples=200)
@given(
    prefix=GS1_PREFIXES,
    separator=SEPARATORS,
    gsrn=GSRNS,
    srin=st.none() | st.text(alphabet="0123456789", min_size=1, max_size=10),
    srin_first=st.booleans(),
    staff=st.booleans(),
)
def test_a_built_wristband_or_badge_round_trips(
    prefix: str, separator: str, gsrn: str, srin: str | None, srin_first: bool, staff: bool
) -> None:
    """Random valid GSRNs (computed check digit) in 8018 or 8017, with an SRIN before or after."""
    key = "8017" if staff else "8018"
    fields = [(key, gsrn)] + ([("8019", srin)] if srin is not None else [])
    if srin_first:
        fields.reverse()
    raw = prefix + build(fields, separator, {"8017", "8018", "8019"})
    scan = parse_scan(raw, SUBSTITUTE)
    if staff:
        assert scan == ClinicianScan(raw=raw, clinician_id=gsrn)
    else:
        assert scan == PatientScan(raw=raw, patient_id=gsrn, gsrn=gsrn, srin=srin)


@settings(max_examples=200)
@given(
    prefix=st.sampled_from(["]d2", "]C1", "]Q3"]),
    giai=st.text(alphabet=CSET82, min_size=1, max_size=30),
    channel=st.none() | st.integers(min_value=1, max_value=8),
)
def test_a_built_pump_label_round_trips(prefix: str, giai: str, channel: int | None) -> None:
    """Random GIAIs from GS1 character set 82, mapped in the configuration."""
    config = ScanConfig(pumps={giai: ("pump-1", channel)})
    raw = f"{prefix}8004{giai}"
    assert parse_scan(raw, config) == PumpScan(raw=raw, pump_id="pump-1", channel=channel, giai=giai)
