"""Shared HL7 test material: the IHE example messages (read as bytes), parties, a sample order, and
hypothesis strategies for orders that a PCD-03 RGV^O15 can carry.

The examples are ``shared/reference/hl7-examples/`` (sources and defects in its SOURCES.md), beside
the checkout.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from hypothesis import strategies as st

from pumpgw.gateway.dose import Concentration
from pumpgw.gateway.orders import Drug, Order, OrderAction, OrderSource, OrderStep
from pumpgw.gateway.quantity import Quantity
from pumpgw.hl7.build import Party

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "reference" / "hl7-examples"
if not EXAMPLES.is_dir():  # the shared reference sits beside the checkout
    EXAMPLES = Path("/work/shared/reference/hl7-examples")

AT = datetime(2026, 12, 7, 12, 0, 5, tzinfo=timezone(timedelta(hours=1)))
GATEWAY = Party("PUMPGW", "WARD1")
EMAR = Party("EMAR", "HOSP", "1234560000000001", "EUI-64")


def example_path(number: str) -> Path:
    """The example whose file name starts with ``number`` (``"03"``)."""
    (path,) = EXAMPLES.glob(f"{number}_*.hl7")
    return path


def example(number: str) -> bytes:
    """The example's bytes, exactly as stored (never text mode: that turns ``\\r`` into ``\\n``)."""
    return example_path(number).read_bytes()


def all_examples() -> list[Path]:
    return sorted(EXAMPLES.glob("*.hl7"))


def q(text: str) -> Quantity:
    return Quantity.parse(text)


def dopamine(**changes: object) -> Order:
    """The order of example 03 as a complete, correct order (ORC-9 given, a pump channel, a route)."""
    base = Order(
        order_id="12345",
        source=OrderSource.HL7,
        patient_id="98765",
        drug=Drug("1234", None, "Dopamine"),
        concentration=Concentration(q("400 mg"), q("250 mL")),
        container_volume=q("250 mL"),
        dose_rate=q("10 ug/kg/min"),
        vtbi=q("250 mL"),
        route="IV",
        pump_type="IVP",
        line="IV",
        weight=q("85.0 kg"),
        pump_id="A0001",
        channel="1",
        ordered_at=AT - timedelta(minutes=1),
        ordered_by="N0001",
        patient_name="Doe, John",
        received_from="CTRL-1",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


# --- strategies ----------------------------------------------------------------------------------

# Text the wire must carry exactly: delimiters and escape characters included, no surrounding
# spaces (the reader strips them, as the IHE examples need), never the HL7 null "" on its own.
_TEXT_CHARS = st.characters(
    codec="utf-8", categories=("L", "N", "P", "S", "Zs"), exclude_characters="\x85\u2028\u2029"
)
texts = st.text(_TEXT_CHARS, min_size=1, max_size=16).map(str.strip).filter(lambda t: bool(t) and t != '""')
_NAME_PART = texts.filter(lambda t: ", " not in t and not t.endswith(","))
names = st.one_of(st.none(), _NAME_PART, st.builds(lambda f, g: f"{f}, {g}", _NAME_PART, _NAME_PART))
pump_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,15}", fullmatch=True)
channels = st.sampled_from(["1", "2", "3", "B"])


def _decimals(low: str = "0", high: str = "10000") -> st.SearchStrategy[Decimal]:
    return st.decimals(min_value=Decimal(low), max_value=Decimal(high), places=3, allow_nan=False)


positive = "0.001"  # an order's quantities are never zero (hl7/piv.py refuses zero)


def quantities(units: list[str], low: str = positive) -> st.SearchStrategy[Quantity]:
    return st.builds(Quantity, _decimals(low), st.sampled_from(units))


concentrations = st.builds(
    Concentration,
    quantities(["mg", "ug", "[iU]", "mmol", "g"], positive),
    quantities(["mL", "L"], positive),
)
offsets = st.integers(-12 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
times = st.builds(
    lambda moment, tz: moment.replace(microsecond=0, tzinfo=tz),
    # hypothesis takes naive bounds and draws naive times; the zone is added above.
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)),  # noqa: DTZ001
    offsets,
)
durations = st.one_of(st.none(), quantities(["min", "h", "s"]))
dose_rates = quantities(["ug/kg/min", "mg/h", "[iU]/h", "mg/kg/h", "ug/min", "mL/kg/h"])
rates = quantities(["mL/h"])
doses = quantities(["mg", "ug/kg", "[iU]", "mL"])


@st.composite
def later_steps(draw: st.DrawFn) -> tuple[OrderStep, ...]:
    count = draw(st.integers(0, 3))
    numbers = sorted(draw(st.sets(st.integers(2, 20), min_size=count, max_size=count)))
    steps = []
    for number in numbers:
        kind = draw(st.sampled_from(["dose_rate", "rate", "none"]))
        steps.append(
            OrderStep(
                number=number,
                dose_rate=draw(dose_rates) if kind == "dose_rate" else None,
                rate=draw(rates) if kind == "rate" else None,
                vtbi=draw(st.none() | quantities(["mL"])),
                duration=draw(durations),
            )
        )
    return tuple(steps)


@st.composite
def orders(draw: st.DrawFn) -> Order:
    """Orders that an RGV^O15 can carry (what build_rgv_o15 accepts), with valid quantities."""
    control_id = draw(st.from_regex(r"[A-Za-z0-9]{1,20}", fullmatch=True))
    conc_form = draw(st.sampled_from(["none", "in container", "per mL", "plain fluid"]))
    concentration = container = None
    if conc_form == "in container":
        concentration = draw(concentrations)
        container = concentration.volume
    elif conc_form == "per mL":
        concentration = Concentration(draw(quantities(["mg", "ug", "[iU]"], positive)), q("1 mL"))
        container = draw(st.none() | quantities(["mL"], positive))
    elif conc_form == "plain fluid":
        container = draw(quantities(["mL"], positive))
    kind = draw(st.sampled_from(["dose_rate", "rate", "dose", "none"]))
    pump = draw(st.none() | pump_ids)
    weight = draw(st.none() | quantities(["kg", "g{body}"], positive))
    bsa = draw(st.none() | quantities(["m2"], positive))
    if pump is None and weight is None and bsa is None:
        pump = draw(pump_ids)
    return Order(
        order_id=draw(texts),
        source=OrderSource.HL7,
        patient_id=draw(texts),
        drug=Drug(draw(texts), draw(st.none() | texts), draw(st.none() | texts)),
        action=draw(st.sampled_from(OrderAction)),
        status=draw(st.sampled_from(["active", "active", "cancelled", "stopped", "on-hold"])),
        concentration=concentration,
        container_volume=container,
        dose_rate=draw(dose_rates) if kind == "dose_rate" else None,
        rate=draw(rates) if kind == "rate" else None,
        dose=draw(doses) if kind == "dose" else None,
        vtbi=draw(st.none() | quantities(["mL"])),
        duration=draw(durations),
        route=draw(st.sampled_from(["IV", "EP", "SC", "IT"])),
        pump_type=draw(st.sampled_from([None, "IVP", "SYR"])),
        line=draw(st.sampled_from(["IV", "IVPB"])),
        weight=weight,
        bsa=bsa,
        pump_id=pump,
        channel=draw(st.none() | channels) if pump is not None else None,
        ordered_at=draw(times),
        ordered_by=draw(st.none() | texts),
        parent_order_id=draw(st.none() | texts),
        encounter=draw(st.none() | texts),
        patient_name=draw(names),
        later_steps=draw(later_steps()),
        received_from=control_id,
    )
