"""The rig's emulated eMAR (rig/emar.py): FHIR R4 over real HTTP, IHE PIV orders over real MLLP, its
data format, and the `pumpgw rig emar` commands against a running hospital on a real control socket.

The order consumer in these tests is not a mock of the gateway: it reads each RGV^O15 with the
gateway's own reader (``pumpgw.hl7.piv.read_rgv_o15``) and answers with the gateway's own builders
(``build_ack``, ``build_rrg_o16``), as IHE PCD TF-2 E.2.3 shows the exchange
(``shared/reference/hl7-examples/05_...ack_o15...CA.hl7`` and ``08_...rrg_o16...AR...ERR.hl7``).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.medication import Medication
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient
from hypothesis import given
from hypothesis import strategies as st

from pumpgw.fhir.client import loads_json
from pumpgw.fhir.orders import medication_request_to_order
from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.dose import Concentration
from pumpgw.gateway.errors import ConfigError, MllpError
from pumpgw.gateway.orders import Order, OrderProblem, PivError
from pumpgw.gateway.quantity import Quantity
from pumpgw.hl7.ack import build_ack, build_rrg_o16, read_ack
from pumpgw.hl7.build import Party
from pumpgw.hl7.message import parse_message
from pumpgw.hl7.mllp_io import MllpServer, Peer, mllp_request
from pumpgw.hl7.piv import read_rgv_o15
from pumpgw.hl7.validate import validate_strict
from pumpgw.rig.emar import EmulatedEmar
from pumpgw.rig.emar_data import EXAMPLE_DATA, MRN_SYSTEM, OrderData, load_emar_file, parse_emar_data

NOW = datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC)
GATEWAY = Party("PUMPGW", "WARD7")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
async def emar(clock: FakeClock) -> AsyncIterator[EmulatedEmar]:
    async with EmulatedEmar(clock, reply_timeout_s=5.0) as running:
        yield running


async def get(url: str) -> tuple[int, str, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.content_type, loads_json(await response.read())


# -- FHIR ----------------------------------------------------------------------------------------------


async def test_the_fhir_server_serves_valid_r4b_resources(emar: EmulatedEmar) -> None:
    """Each resource validates under the R4B models; searches are searchset Bundles."""
    base = emar.fhir_base
    status, kind, patient = await get(f"{base}/Patient/RIG-100001")
    assert (status, kind) == (200, "application/fhir+json")
    Patient.model_validate(patient)
    assert patient["identifier"][0]["value"] == "RIG-100001"
    assert patient["identifier"][0]["type"]["coding"][0]["code"] == "MR"

    status, _, bundle = await get(f"{base}/Patient?identifier={MRN_SYSTEM}|RIG-100002")
    Bundle.model_validate(bundle)
    assert (status, bundle["type"], bundle["total"]) == (200, "searchset", 1)
    assert bundle["entry"][0]["resource"]["id"] == "RIG-100002"

    status, _, request = await get(f"{base}/MedicationRequest/RIG-ORD-1")
    MedicationRequest.model_validate(request)
    assert request["status"] == "active"
    rate = request["dosageInstruction"][0]["doseAndRate"][0]["rateQuantity"]
    assert (rate["value"], rate["code"]) == (Decimal("0.1"), "ug/kg/min")  # exact, as written

    status, _, medication = await get(f"{base}/Medication/med-RIG-ORD-1")
    assert status == 200
    Medication.model_validate(medication)
    strength = medication["ingredient"][0]["strength"]
    assert (strength["numerator"]["value"], strength["denominator"]["value"]) == (4, 50)

    status, _, capability = await get(f"{base}/metadata")
    assert status == 200
    CapabilityStatement.model_validate(capability)


async def test_active_orders_for_a_patient_come_as_a_searchset(emar: EmulatedEmar) -> None:
    status, _, bundle = await get(
        f"{emar.fhir_base}/MedicationRequest?patient=Patient/RIG-100001&status=active"
    )
    assert status == 200
    Bundle.model_validate(bundle)
    assert bundle["type"] == "searchset"
    ids = [e["resource"]["id"] for e in bundle["entry"]]
    assert ids == ["RIG-ORD-1", "RIG-ORD-2"]
    for entry in bundle["entry"]:
        MedicationRequest.model_validate(entry["resource"])
        assert entry["fullUrl"] == f"{emar.fhir_base}/MedicationRequest/{entry['resource']['id']}"
    # The same by the wristband number, and no stopped orders.
    _, _, by_mrn = await get(f"{emar.fhir_base}/MedicationRequest?patient.identifier={MRN_SYSTEM}|RIG-100001")
    assert [e["resource"]["id"] for e in by_mrn["entry"]] == ids
    _, _, stopped = await get(f"{emar.fhir_base}/MedicationRequest?patient=RIG-100001&status=stopped")
    assert stopped["total"] == 0


async def test_unknown_ids_and_searches_get_an_operation_outcome(emar: EmulatedEmar) -> None:
    for path, expected in [
        ("/Patient/NOPE", 404),
        ("/MedicationRequest/NOPE", 404),
        ("/Medication/NOPE", 404),
        ("/Device/x", 404),  # a type the eMAR does not serve
        ("/MedicationRequest?colour=blue", 400),
    ]:
        status, kind, body = await get(emar.fhir_base + path)
        assert (status, kind) == (expected, "application/fhir+json"), path
        outcome = OperationOutcome.model_validate(body)
        assert outcome.issue[0].severity == "error"
    _, _, body = await get(emar.fhir_base + "/Patient/NOPE")
    assert "Patient/NOPE" in body["issue"][0]["diagnostics"]


async def test_the_gateways_fhir_reader_gets_the_order_the_emar_holds(
    emar: EmulatedEmar, clock: FakeClock
) -> None:
    """pumpgw.fhir.orders reads the served MedicationRequest into the same clinical values."""
    _, _, request = await get(f"{emar.fhir_base}/MedicationRequest/RIG-ORD-1")
    read = medication_request_to_order(request)
    held = emar.order("RIG-ORD-1")
    assert read.order_id == held.order_id == "RIG-ORD-1"
    assert read.patient_id == held.patient_id == "RIG-100001"
    assert (
        read.concentration
        == held.concentration
        == Concentration(Quantity.of("4", "mg"), Quantity.of("50", "mL"))
    )
    assert read.dose_rate == held.dose_rate == Quantity.of("0.1", "ug/kg/min")
    assert read.weight == held.weight == Quantity.of("82", "kg")
    assert read.ordered_at == held.ordered_at == NOW - timedelta(minutes=2)
    assert read.drug.code == held.drug.code == "7512"


async def test_relative_order_times_follow_the_clock(emar: EmulatedEmar, clock: FakeClock) -> None:
    """'-20m' is twenty minutes before whenever the order is served: always stale."""
    _, _, first = await get(f"{emar.fhir_base}/MedicationRequest/RIG-ORD-STALE")
    clock.advance(3600)
    _, _, later = await get(f"{emar.fhir_base}/MedicationRequest/RIG-ORD-STALE")
    assert datetime.fromisoformat(first["authoredOn"]) == NOW - timedelta(minutes=20)
    assert datetime.fromisoformat(later["authoredOn"]) == NOW + timedelta(hours=1) - timedelta(minutes=20)


# -- PIV: the tiny order consumer ----------------------------------------------------------------------


class Consumer:
    """A minimal IHE PIV order consumer: reads each RGV^O15 with the gateway's reader, answers
    ACK^O15 ``accept`` at once, then sends RRG^O16 (``decide(order) -> problems``) to the eMAR."""

    def __init__(
        self, rrg_port: int, *, accept: str = "CA", decide: Callable[[Order], list[OrderProblem]]
    ) -> None:
        self.rrg_port = rrg_port
        self.accept = accept
        self.decide = decide
        self.orders: list[Order] = []
        self.rrg_acks: list[bytes] = []
        self.rrg_sent = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, data: bytes, peer: Peer) -> bytes | None:
        message = parse_message(data)
        if self.accept == "CA":
            task = asyncio.create_task(self._answer(message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return build_ack(message, self.accept, at=NOW, sender=GATEWAY, trigger="O15")

    async def _answer(self, message: Any) -> None:
        order = read_rgv_o15(message)
        self.orders.append(order)
        problems = self.decide(order)
        rrg = build_rrg_o16(
            message, order, "AR" if problems else "AA", control_id=f"GW-{len(self.orders)}", at=NOW,
            sender=GATEWAY, receiver=message.sender, errors=problems,
        )  # fmt: skip
        self.rrg_acks.append(await mllp_request("127.0.0.1", self.rrg_port, rrg))
        self.rrg_sent.set()


async def consumer_server(consumer: Consumer) -> MllpServer:
    server = MllpServer(consumer.handle, host="127.0.0.1", port=0)
    await server.start()
    return server


async def test_send_order_records_the_ack_and_the_rrg_result(emar: EmulatedEmar) -> None:
    consumer = Consumer(emar.rrg_port, decide=lambda order: [])
    server = await consumer_server(consumer)
    try:
        sent = await emar.send_order("RIG-ORD-1", "127.0.0.1", server.port)
        assert sent.ack is not None
        assert sent.ack.code == "CA"
        assert sent.ack.acked_control_id == sent.control_id
        done = await emar.wait_for_result("RIG-ORD-1", 5)
        await consumer.rrg_sent.wait()
    finally:
        await server.close()
    assert done is sent
    assert sent.result is not None
    assert (sent.result.code, sent.result.acked_control_id, sent.result.errors) == ("AA", sent.control_id, ())
    assert sent.state == "result AA"
    validate_strict(sent.message)  # what the eMAR sends is valid HL7 2.6 (hl7apy STRICT)
    assert len(sent.control_id) <= 20
    # The eMAR acknowledged the RRG^O16 with ACK^O16 AA naming it.
    (ack,) = [read_ack(a) for a in consumer.rrg_acks]
    validate_strict(consumer.rrg_acks[0])
    assert (ack.code, ack.acked_control_id, ack.message_type[:2]) == ("AA", "GW-1", ("ACK", "O16"))
    # What the gateway's reader got is the order the eMAR holds.
    (order,) = consumer.orders
    held = emar.order("RIG-ORD-1")
    assert order.order_id == "RIG-ORD-1"
    assert order.patient_id == held.patient_id
    assert order.drug.code == "7512"
    assert order.concentration == held.concentration
    assert order.dose_rate == held.dose_rate
    assert order.vtbi == Quantity.of("50", "mL")
    assert (order.pump_id, order.channel) == ("rig-modbus-1", "1")
    assert order.weight == Quantity.of("82", "kg")
    assert order.ordered_at == NOW - timedelta(minutes=2)


async def test_a_refused_order_records_the_ar_and_each_err(emar: EmulatedEmar) -> None:
    """RRG^O16 AR with ERR-5 9022, as hl7-examples/08 carries 9010 in ERR-5."""
    stale = OrderProblem(PivError.STALE, "ordered_at", "the order was made 20 min ago")
    consumer = Consumer(emar.rrg_port, decide=lambda order: [stale])
    server = await consumer_server(consumer)
    try:
        await emar.send_order("RIG-ORD-STALE", "127.0.0.1", server.port)
        sent = await emar.wait_for_result("RIG-ORD-STALE", 5)
    finally:
        await server.close()
    assert sent.result is not None
    assert sent.result.code == "AR"
    (error,) = sent.result.errors
    assert "9022" in error
    assert "20 min ago" in error
    assert emar.describe_orders()[3]["sent"]["state"] == "result AR"


async def test_an_order_refused_on_receipt_is_decided_without_an_rrg(emar: EmulatedEmar) -> None:
    consumer = Consumer(emar.rrg_port, accept="CR", decide=lambda order: [])
    server = await consumer_server(consumer)
    try:
        await emar.send_order("RIG-ORD-2", "127.0.0.1", server.port)
        sent = await emar.wait_for_result("RIG-ORD-2", 5)  # returns at once: nothing more will come
    finally:
        await server.close()
    assert sent.ack is not None
    assert (sent.ack.code, sent.result) == ("CR", None)
    assert consumer.orders == []


async def test_no_gateway_is_an_mllp_error_and_recorded(emar: EmulatedEmar) -> None:
    server = MllpServer(lambda data, peer: asyncio.sleep(0, None), host="127.0.0.1", port=0)
    await server.start()
    port = server.port
    await server.close()  # nothing listens on that port now
    with pytest.raises(MllpError, match="refused"):
        await emar.send_order("RIG-ORD-1", "127.0.0.1", port)
    sent = emar.sent("RIG-ORD-1")
    assert sent is not None
    assert sent.state == "not delivered"
    assert (await emar.wait_for_result("RIG-ORD-1", 1)) is sent
    with pytest.raises(ConfigError, match="RIG-ORD-1, RIG-ORD-2"):
        await emar.send_order("NOPE", "127.0.0.1", port)


async def test_the_rrg_receiver_answers_what_it_cannot_match_and_survives_garbage(emar: EmulatedEmar) -> None:
    foreign = build_rrg_o16(
        parse_message(b"MSH|^~\\&|X|Y|Z|W|20260301100000+0000||RGV^O15^RGV_O15|NOT-OURS|P|2.6\r"),
        None, "AA", control_id="GW-9", at=NOW, sender=GATEWAY, receiver=Party("RIG_EMAR"),
    )  # fmt: skip
    ack = read_ack(await mllp_request("127.0.0.1", emar.rrg_port, foreign))
    assert (ack.code, ack.acked_control_id) == ("AA", "GW-9")
    assert [u.acked_control_id for u in emar.unmatched_results()] == ["NOT-OURS"]
    nak = read_ack(await mllp_request("127.0.0.1", emar.rrg_port, b"this is not HL7"))
    assert nak.code == "AR"
    again = read_ack(await mllp_request("127.0.0.1", emar.rrg_port, foreign))
    assert again.code == "AA"  # still up


# -- the data format ---------------------------------------------------------------------------------


def with_order(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(EXAMPLE_DATA))
    data["orders"][0].update(changes)
    return data


@pytest.mark.parametrize(
    ("data", "key", "expected"),
    [
        (with_order(rate="5 ml/hour"), "orders[0].rate", "unknown unit"),
        (
            with_order(rate="5 mg/h"),
            "orders[0].rate",
            "a flow (a volume per time, e.g. '5 mL/h'), not 5 mg/h",
        ),
        (with_order(vtbl="50 mL"), "orders[0].vtbl", "no such key"),
        (with_order(patient="RIG-999"), "(top level)", "not 'RIG-999'"),
        (with_order(ordered_at="2026-03-01T10:00:00"), "orders[0].ordered_at", "UTC offset"),
        (with_order(ordered_at="yesterday"), "orders[0].ordered_at", "relative time"),
        (with_order(route="IVX"), "orders[0].route", "table 0162"),
        (
            with_order(drug={"code": 9521234500131, "system": "gtin", "name": "x"}),
            "orders[0].drug.code",
            "in quotes",
        ),
        (with_order(dose_rate=None), "orders[0]", "dose_rate or rate"),
        (
            with_order(concentration={"amount": "4 mL", "volume": "50 mL"}),
            "orders[0].concentration.amount",
            "drug amount",
        ),
        (with_order(drug={"code": "7512", "system": "bnf", "name": "x"}), "orders[0].drug.system", "rxnorm"),
    ],
)
def test_a_bad_data_file_names_the_key(data: dict[str, Any], key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_emar_data(data, "emar.json")
    error = caught.value
    assert (error.source, error.key) == ("emar.json", key)
    assert expected in error.expected


def test_a_json_file_loads_and_a_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "emar.json"
    path.write_text(json.dumps(with_order(id="MY-1")), encoding="utf-8")
    assert load_emar_file(path).orders[0].id == "MY-1"
    with pytest.raises(ConfigError, match="readable file"):
        load_emar_file(tmp_path / "missing.json")
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="valid JSON"):
        load_emar_file(path)


def test_a_yaml_file_loads_and_a_bad_one_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "emar.yaml"
    path.write_text(
        "patients:\n  - {identifier: P-1, family: Doe, given: Jo, birth_date: 1970-01-01, weight: 70 kg}\n"
        "orders:\n  - {id: O-1, patient: P-1, drug: {code: '7512', system: rxnorm, name: noradrenaline},\n"
        "      rate: 5 mL/h, route: IV, ordered_at: -5m}\n",
        encoding="utf-8",
    )
    data = load_emar_file(path)
    assert data.orders[0].ordered_at_from(NOW) == NOW - timedelta(minutes=5)
    path.write_text("patients:\n  - {identifier: P-1\norders: []\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_emar_file(path)
    assert info.value.key.startswith("(line ")


@given(sign=st.sampled_from("+-"), amount=st.integers(0, 99999), unit=st.sampled_from("smhd"))
def test_relative_times_are_exact_offsets(sign: str, amount: int, unit: str) -> None:
    order = OrderData.model_validate(dict(EXAMPLE_DATA["orders"][0], ordered_at=f"{sign}{amount}{unit}"))
    delta = timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[unit]: amount})
    assert order.ordered_at_from(NOW) == (NOW + delta if sign == "+" else NOW - delta)


def _listen_port(config: str) -> int:
    return int(next(line for line in config.splitlines() if line.startswith("listen_port")).split("=")[1])


# -- the commands, against a running hospital ------------------------------------------------------


@pytest.fixture
async def running_rig(tmp_path: Path) -> AsyncIterator[tuple[Path, Any]]:
    """A hospital behind a real control socket (the pumps: none needed here, one Modbus TCP pump)."""
    from pumpgw.rig.bench_rig import BenchRig
    from pumpgw.rig.control import SOCKET_NAME, RigControlServer
    from pumpgw.rig.hospital import Hospital

    hospital = Hospital(FakeClock(NOW))
    bench = BenchRig(FakeClock(NOW), modbus_pumps=1, newera_pumps=0)
    async with bench, hospital, RigControlServer(bench, tmp_path / SOCKET_NAME, delegate=hospital.handle):
        yield tmp_path, hospital


async def pumpgw(rig_dir: Path, *args: str) -> Any:
    """`pumpgw rig ARGS --dir RIG_DIR` in a worker thread (it runs its own event loop)."""
    from pumpgw.gateway.cli import main

    return await asyncio.to_thread(CliRunner().invoke, main, ["rig", *args, "--dir", str(rig_dir)])


async def test_emar_commands_list_send_and_load(running_rig: tuple[Path, Any], tmp_path: Path) -> None:
    rig_dir, hospital = running_rig
    listed = await pumpgw(rig_dir, "emar", "orders", "--json")
    assert listed.exit_code == 0, listed.output
    assert [o["id"] for o in json.loads(listed.output)["orders"]] == [
        "RIG-ORD-1", "RIG-ORD-2", "RIG-ORD-3", "RIG-ORD-STALE",
    ]  # fmt: skip
    text = await pumpgw(rig_dir, "emar", "orders")
    assert "noradrenaline 4 mg in 50 mL at 0.1 ug/kg/min" in text.output

    consumer = Consumer(hospital.emar.rrg_port, decide=lambda order: [])
    server = await consumer_server(consumer)
    try:
        sent = await pumpgw(
            rig_dir, "emar", "send", "RIG-ORD-1", "--to", f"127.0.0.1:{server.port}", "--wait"
        )
    finally:
        await server.close()
    assert sent.exit_code == 0, sent.output
    assert "ACK^O15 CA" in sent.output
    assert "RRG^O16 AA" in sent.output
    assert "MSA|AA|" in sent.output  # the RRG^O16 itself is printed

    unknown = await pumpgw(rig_dir, "emar", "send", "NOPE", "--to", "127.0.0.1:1")
    assert unknown.exit_code == 2
    assert "RIG-ORD-1" in unknown.output  # the orders there are
    nowhere = await pumpgw(rig_dir, "emar", "send", "RIG-ORD-1")
    assert nowhere.exit_code == 2
    assert "--to" in nowhere.output

    data_file = tmp_path / "mine.json"
    data_file.write_text(json.dumps(with_order(id="MINE-1")), encoding="utf-8")
    loaded = await pumpgw(rig_dir, "emar", "load", str(data_file))
    assert loaded.exit_code == 0, loaded.output
    assert "4 order(s)" in loaded.output
    assert hospital.emar.data.orders[0].id == "MINE-1"
    data_file.write_text(json.dumps(with_order(rate="fast")), encoding="utf-8")
    refused = await pumpgw(rig_dir, "emar", "load", str(data_file))
    assert refused.exit_code == 2
    assert "orders[0].rate" in refused.output
    assert hospital.emar.data.orders[0].id == "MINE-1"  # the old data stays


def test_emar_commands_without_a_rig_say_how_to_start_one(tmp_path: Path) -> None:
    from pumpgw.gateway.cli import main

    result = CliRunner().invoke(main, ["rig", "emar", "orders", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "pumpgw rig up" in result.output


async def test_rig_up_runs_the_hospital_and_prints_its_endpoints(tmp_path: Path) -> None:
    """`pumpgw rig up --json` in its own process: the hospital's endpoints answer, and the
    gateway.toml it writes is unchanged (no hospital sections)."""
    up = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pumpgw.gateway.cli", "rig", "up", "--json", "--dir", str(tmp_path),
        "--modbus-tcp", "1", "--newera", "0", "--modbus-rtu", "0", "--alaris", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert up.stdout is not None
        started = json.loads(await asyncio.wait_for(up.stdout.readline(), 30))
        hospital = started["hospital"]
        assert set(hospital) == {"emar", "epr"}
        status, _, bundle = await get(f"{hospital['emar']['fhir_base']}/Patient?identifier=RIG-100001")
        assert (status, bundle["total"]) == (200, 1)
        status, _, _ = await get(f"{hospital['epr']['fhir_base']}/metadata")
        assert status == 200
        config = await asyncio.to_thread(Path(started["config"]).read_text)
        # The gateway configuration the rig writes points the gateway at its eMAR and EPR.
        assert f"order_programmer_port = {hospital['emar']['rrg_port']}" in config
        assert f'base_url = "{hospital["emar"]["fhir_base"]}"' in config
        assert f"port = {hospital['epr']['mllp_port']}" in config
        assert hospital["emar"]["gateway_piv"].endswith(f":{_listen_port(config)}")
        listed = await pumpgw(tmp_path, "emar", "orders", "--json")
        assert listed.exit_code == 0, listed.output
    finally:
        up.terminate()
        await asyncio.wait_for(up.wait(), 20)
    assert up.returncode == 0


async def test_rig_up_without_the_hospital(tmp_path: Path) -> None:
    up = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pumpgw.gateway.cli", "rig", "up", "--json", "--no-hospital", "--dir", str(tmp_path),
        "--modbus-tcp", "1", "--newera", "0", "--modbus-rtu", "0", "--alaris", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert up.stdout is not None
        started = json.loads(await asyncio.wait_for(up.stdout.readline(), 30))
        assert started["hospital"] is None
        listed = await pumpgw(tmp_path, "emar", "orders")
        assert listed.exit_code == 1
        assert "--no-hospital" in listed.output
    finally:
        up.terminate()
        await asyncio.wait_for(up.wait(), 20)
    assert up.returncode == 0
