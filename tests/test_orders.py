"""The domain order's checks (gateway/orders.py): what makes an order unusable, and with which code.

Codes are the IHE PIV application error codes and HL7 table 0357 codes from
``shared/reference/ihe-pcd.md`` (9012 patient, 9022 stale program).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pumpgw.gateway.dose import Concentration
from pumpgw.gateway.events import EventType, payload_problem
from pumpgw.gateway.orders import (
    Drug,
    Order,
    OrderAction,
    OrderPolicy,
    OrderSource,
    PendingOrders,
    PivError,
    check_order,
    received_payload,
    rejected_payload,
)
from pumpgw.gateway.quantity import Quantity

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
PUMPS = {"pump-a": frozenset({"1", "2"})}
POLICY = OrderPolicy()


def order(**changes: object) -> Order:
    base = Order(
        order_id="ORD-1",
        source=OrderSource.HL7,
        patient_id="MRN123",
        drug=Drug("1234", "LOCAL", "Dopamine"),
        concentration=Concentration(Quantity.of("400", "mg"), Quantity.of("250", "mL")),
        dose_rate=Quantity.of("10", "ug/kg/min"),
        vtbi=Quantity.of("250", "mL"),
        weight=Quantity.of("85", "kg"),
        ordered_at=NOW - timedelta(minutes=3),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def codes(o: Order, now: datetime = NOW) -> list[str]:
    return [str(p.code) for p in check_order(o, now=now, policy=POLICY, pumps=PUMPS)]


def test_a_good_order_has_no_problem() -> None:
    assert check_order(order(), now=NOW, policy=POLICY, pumps=PUMPS) == []
    assert check_order(order(pump_id="pump-a", channel="2"), now=NOW, policy=POLICY, pumps=PUMPS) == []


def test_stale_order_is_refused_with_9022_and_its_age() -> None:
    problems = check_order(order(ordered_at=NOW - timedelta(minutes=16)), now=NOW, policy=POLICY, pumps=PUMPS)
    assert [p.code for p in problems] == [PivError.STALE]
    assert "16 min ago" in problems[0].reason
    assert "15 min" in problems[0].reason


def test_the_stale_limit_is_inclusive_of_its_edge() -> None:
    assert codes(order(ordered_at=NOW - timedelta(minutes=15))) == []
    assert codes(order(ordered_at=NOW - timedelta(minutes=15, seconds=1))) == ["9022"]


def test_missing_order_time_is_stale_by_default_and_allowed_only_by_policy() -> None:
    """ORC-9 is missing in the IHE PIV examples 03 and 06 (hl7-examples/SOURCES.md)."""
    assert codes(order(ordered_at=None)) == ["9022"]
    lenient = OrderPolicy(require_ordered_at=False)
    assert check_order(order(ordered_at=None), now=NOW, policy=lenient, pumps=PUMPS) == []


def test_future_dated_and_zoneless_orders_are_refused() -> None:
    ahead = check_order(order(ordered_at=NOW + timedelta(minutes=5)), now=NOW, policy=POLICY, pumps=PUMPS)
    assert [p.code for p in ahead] == [PivError.STALE]
    assert "ahead of this gateway's clock" in ahead[0].reason
    zoneless = datetime(2026, 12, 7, 11, 58)  # noqa: DTZ001 - the case under test
    naive = check_order(order(ordered_at=zoneless), now=NOW, policy=POLICY, pumps=PUMPS)
    assert "no time zone" in naive[0].reason


def test_an_order_in_another_zone_is_judged_by_the_instant() -> None:
    tz = timezone(timedelta(hours=-6))
    assert codes(order(ordered_at=(NOW - timedelta(minutes=5)).astimezone(tz))) == []


def test_unknown_pump_or_channel_names_what_this_gateway_has() -> None:
    pump = check_order(order(pump_id="pump-z"), now=NOW, policy=POLICY, pumps=PUMPS)
    assert pump[0].element == "pump"
    assert "pump-a" in pump[0].reason
    channel = check_order(order(pump_id="pump-a", channel="3"), now=NOW, policy=POLICY, pumps=PUMPS)
    assert channel[0].element == "channel"
    assert "1, 2" in channel[0].reason


def test_patient_status_bolus_parent_and_nothing_to_program() -> None:
    assert codes(order(patient_id=" ")) == ["9012"]
    assert codes(order(status="on-hold")) == ["207"]
    assert codes(order(action=OrderAction.BOLUS, dose=Quantity.of("25", "ug"))) == ["101"]
    assert codes(order(dose_rate=None)) == ["101"]


def test_every_problem_is_reported_not_only_the_first() -> None:
    bad = order(patient_id="", status="stopped", ordered_at=None, pump_id="nope", dose_rate=None)
    assert len(check_order(bad, now=NOW, policy=POLICY, pumps=PUMPS)) == 5


@given(st.integers(min_value=-10_000, max_value=10_000))
def test_age_decides_staleness_exactly(seconds: int) -> None:
    o = order(ordered_at=NOW - timedelta(seconds=seconds))
    stale = seconds > 15 * 60 or -seconds > 2 * 60
    assert (codes(o) == ["9022"]) is stale
    assert codes(o) in ([], ["9022"])


def test_payloads_fit_the_published_event_schema() -> None:
    assert payload_problem(EventType.ORDER_RECEIVED, received_payload(order())) is None
    problems = check_order(order(ordered_at=None, patient_id=""), now=NOW, policy=POLICY, pumps=PUMPS)
    payload = rejected_payload(OrderSource.HL7, "ORD-1", problems)
    assert payload_problem(EventType.ORDER_REJECTED, payload) is None
    assert payload["code"] == "9012"
    assert "ordered_at" in str(payload["reason"])
    with pytest.raises(ValueError, match="at least one problem"):
        rejected_payload(OrderSource.HL7, "ORD-1", [])


def test_received_payload_says_what_was_ordered() -> None:
    payload = received_payload(order())
    assert payload["concentration"] == "400 mg in 250 mL"
    assert payload["rate"] == "10 ug/kg/min"
    assert payload["drug_code"] == "LOCAL|1234"


def test_pending_orders_keep_the_newest_version_per_order() -> None:
    pending = PendingOrders()
    first = order()
    assert pending.put(first) is None
    second = order(vtbi=Quantity.of("100", "mL"))
    assert pending.put(second) is first
    pending.put(order(order_id="ORD-2", patient_id="MRN999"))
    assert len(pending) == 2
    assert pending.get("ORD-1") is second
    assert [o.order_id for o in pending.for_patient("MRN123")] == ["ORD-1"]
    assert pending.remove("ORD-1") is second
    assert [o.order_id for o in pending] == ["ORD-2"]


@pytest.mark.parametrize("element", ["dose_rate", "vtbi", "weight", "container_volume"])
def test_a_zero_or_negative_quantity_is_refused_naming_it(element: str) -> None:
    unit = {"dose_rate": "ug/kg/min", "vtbi": "mL", "weight": "kg", "container_volume": "mL"}[element]
    for value in ("0", "-1"):
        problems = check_order(
            order(**{element: Quantity.of(value, unit)}), now=NOW, policy=POLICY, pumps=PUMPS
        )
        assert [(p.code, p.element) for p in problems] == [("102", element)], problems


def test_a_change_or_a_bolus_does_not_replace_the_order_it_refers_to() -> None:
    """Found in review: a PIV XO (rate change) with the RE's order number replaced the held
    new-container order, and its concentration and VTBI were gone."""
    pending = PendingOrders()
    new = order()
    change = order(
        action=OrderAction.CHANGE, concentration=None, vtbi=None, dose_rate=Quantity.of("12", "ug/kg/min")
    )
    pending.put(new)
    assert pending.put(change) is None
    assert pending.get("ORD-1") is new
    assert pending.get("ORD-1", OrderAction.CHANGE) is change
    fhir = order(source=OrderSource.FHIR)
    pending.put(fhir)
    assert pending.get("ORD-1") is None  # two systems, one number: ambiguous without the source
    assert pending.get("ORD-1", source=OrderSource.FHIR) is fhir
    assert pending.remove("ORD-1", source=OrderSource.HL7) is new
    assert pending.get("ORD-1") is fhir
