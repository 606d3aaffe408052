"""Orders pulled over FHIR R4 (fhir/order_source.py) from the rig's emulated eMAR, on real HTTP.

The eMAR (``rig/emar.py``) serves its patients and orders as valid R4 resources; the gateway's
:class:`FhirClient` asks it what the bedside workflow will ask on a wristband scan. What comes back
is compared with what the eMAR itself says the order is (:meth:`EmulatedEmar.order`), field by
field where FHIR R4 can carry the value. A recording pass-through in front of the eMAR shows which
search parameters the gateway sends (the eMAR answers 400 to any it does not support).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from pumpgw.fhir.client import FhirClient
from pumpgw.fhir.order_source import order_by_id, orders_for_patient
from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.dose import Concentration
from pumpgw.gateway.errors import FhirError
from pumpgw.gateway.orders import Order, OrderRefused, OrderSource, PivError
from pumpgw.gateway.quantity import Quantity
from pumpgw.rig.emar import EmulatedEmar
from pumpgw.rig.emar_data import EXAMPLE_DATA, MRN_SYSTEM, parse_emar_data
from pumpgw.rig.epr import serve_http

NOW = datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC)
#: The example data, and a third patient whose weight the eMAR gives in grams: the FHIR mapper
#: doses only with a body weight in kg, so that patient's order cannot be mapped.
DATA: dict[str, Any] = {
    "patients": [
        *EXAMPLE_DATA["patients"],
        {"identifier": "RIG-100003", "family": "Small", "given": ["Kim"], "birth_date": "2025-12-01", "weight": "3500 g"},
    ],
    "orders": [*EXAMPLE_DATA["orders"], {**EXAMPLE_DATA["orders"][0], "id": "RIG-ORD-G", "patient": "RIG-100003"}],
}  # fmt: skip


@dataclass
class Recorder:
    """A pass-through in front of the eMAR that records each request's path and query."""

    target: str
    seen: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)

    async def forward(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, list(request.query.items())))
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.target + request.path_qs) as answer,
        ):
            return web.Response(
                body=await answer.read(), status=answer.status, headers={"Content-Type": answer.content_type}
            )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
async def emar(clock: FakeClock) -> AsyncIterator[EmulatedEmar]:
    async with EmulatedEmar(clock, parse_emar_data(DATA, "test data")) as running:
        yield running


@pytest.fixture
async def recorder(emar: EmulatedEmar) -> AsyncIterator[tuple[Recorder, str]]:
    recorder = Recorder(emar.fhir_base)
    app = web.Application()
    app.router.add_get("/{tail:.*}", recorder.forward)
    runner, port = await serve_http(app, "127.0.0.1", 0)
    try:
        yield recorder, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def client(recorder: tuple[Recorder, str]) -> AsyncIterator[FhirClient]:
    async with FhirClient(recorder[1], timeout_s=5) as opened:
        yield opened


def assert_same_order(read: Order, held: Order) -> None:
    """``read`` (from FHIR) says what the eMAR's order ``held`` says, in every value FHIR R4 carries."""
    assert read.source is OrderSource.FHIR
    assert read.order_id == held.order_id
    assert read.patient_id == held.patient_id
    assert read.status == held.status == "active"
    assert (read.drug.code, read.drug.name) == (held.drug.code, held.drug.name)
    assert read.concentration == held.concentration
    assert read.container_volume == held.container_volume
    assert (read.dose_rate, read.rate) == (held.dose_rate, held.rate)  # a flow is the rate in both
    assert read.route == held.route == "IV"  # HL7 table 0162, as the PIV order carries it
    assert read.duration == held.duration
    assert read.weight == held.weight
    assert read.ordered_at == held.ordered_at
    assert read.ordered_by == held.ordered_by
    # What a MedicationRequest has no element for stays unknown: never guessed.
    assert (read.vtbi, read.pump_id, read.channel) == (None, None, None)


async def test_the_patients_active_orders_are_the_orders_the_emar_holds(
    emar: EmulatedEmar, client: FhirClient, recorder: tuple[Recorder, str]
) -> None:
    found = await orders_for_patient(client, "RIG-100001", mrn_system=MRN_SYSTEM)
    assert found.patient_identifier == "RIG-100001"
    assert found.refused == ()
    assert [o.order_id for o in found.orders] == ["RIG-ORD-1", "RIG-ORD-2"]
    for order in found.orders:
        assert_same_order(order, emar.order(order.order_id))
        assert order.received_from == f"{client.base_url}/MedicationRequest/{order.order_id}"
    first = found.orders[0]
    assert first.concentration == Concentration(Quantity.of("4", "mg"), Quantity.of("50", "mL"))
    assert first.dose_rate == Quantity.of("0.1", "ug/kg/min")
    assert first.weight == Quantity.of("82", "kg")
    assert first.ordered_at == NOW - timedelta(minutes=2)
    # The standard search parameters, which the eMAR serves: Patient by identifier (the wristband,
    # in its system), then MedicationRequest by patient and status.
    searches = [
        (path, query) for path, query in recorder[0].seen if path in ("/Patient", "/MedicationRequest")
    ]
    assert searches == [
        ("/Patient", [("identifier", f"{MRN_SYSTEM}|RIG-100001")]),
        ("/MedicationRequest", [("patient", "Patient/RIG-100001"), ("status", "active")]),
    ]


async def test_only_active_orders_come_back(emar: EmulatedEmar, client: FhirClient) -> None:
    data = parse_emar_data(
        {
            **DATA,
            "orders": [{**o, "status": "stopped"} if o["id"] == "RIG-ORD-2" else o for o in DATA["orders"]],
        },
        "one order stopped",
    )
    emar.load(data)
    found = await orders_for_patient(client, "RIG-100001")  # any identifier system
    assert [o.order_id for o in found.orders] == ["RIG-ORD-1"]


async def test_an_order_by_id_is_the_order_the_emar_holds(emar: EmulatedEmar, client: FhirClient) -> None:
    for order_id in ("RIG-ORD-1", "RIG-ORD-2", "RIG-ORD-3"):
        assert_same_order(await order_by_id(client, order_id, mrn_system=MRN_SYSTEM), emar.order(order_id))
    stale = await order_by_id(client, "RIG-ORD-STALE")
    assert stale.ordered_at == NOW - timedelta(minutes=20)  # read as it is; check_order judges it


async def test_an_unknown_wristband_is_refused_with_9012(client: FhirClient) -> None:
    with pytest.raises(OrderRefused) as refused:
        await orders_for_patient(client, "RIG-999999", mrn_system=MRN_SYSTEM)
    (problem,) = refused.value.problems
    assert problem.code == PivError.PATIENT_MISMATCH
    assert problem.element == "Patient.identifier"
    assert "no patient" in problem.reason
    assert "RIG-999999" in problem.reason


async def test_an_order_that_cannot_be_mapped_comes_back_refused_naming_the_element(
    emar: EmulatedEmar, client: FhirClient
) -> None:
    """RIG-100003's weight is served in grams; the order exists but cannot be used to dose: it is
    not dropped, it comes back in ``refused`` with the element, the value and the code."""
    found = await orders_for_patient(client, "RIG-100003", mrn_system=MRN_SYSTEM)
    assert found.orders == ()
    (refused,) = found.refused
    assert refused.order_id == "RIG-ORD-G"
    (problem,) = refused.problems
    assert problem.element == "MedicationRequest.contained[1].valueQuantity.code"  # the weight
    assert "3500 g" in problem.reason
    assert "kg" in problem.reason
    assert problem.code == "102"
    with pytest.raises(OrderRefused) as by_id:
        await order_by_id(client, "RIG-ORD-G")
    assert by_id.value.problems == refused.problems


async def test_an_unknown_order_is_a_fhir_error_404(client: FhirClient) -> None:
    with pytest.raises(FhirError) as missing:
        await order_by_id(client, "RIG-ORD-NOPE")
    assert missing.value.status == 404
    assert "MedicationRequest/RIG-ORD-NOPE" in str(missing.value)


async def test_the_emar_down_is_a_fhir_error(clock: FakeClock) -> None:
    async with EmulatedEmar(clock) as emar:
        base = emar.fhir_base
    async with FhirClient(base, timeout_s=2, backoff_base_s=0.01, backoff_cap_s=0.02) as client:
        with pytest.raises(FhirError) as down:
            await orders_for_patient(client, "RIG-100001")
        assert down.value.status is None  # no answer at all
        assert "127.0.0.1" in str(down.value)
        with pytest.raises(FhirError):
            await order_by_id(client, "RIG-ORD-1")
