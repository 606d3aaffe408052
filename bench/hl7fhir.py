"""Benchmarks of the HL7 v2 and FHIR paths, each printed with a baseline measured in the same run.

Run from the repository root after scripts/bootstrap:   .venv/bin/python bench/hl7fhir.py [--runs N]

1. RGV^O15 received to ACK^O15 sent, p50 and p99 (goal: p99 under 20 ms here). A real
   :class:`~pumpgw.hl7.piv_consumer.PivConsumer` (MLLP server, live-path parser, a real event log on
   disk in a temporary directory) and one MLLP client on loopback sending PCD-03 orders one after
   another, each waiting for its ACK; the time is measured at the client, so it includes the
   loopback round trip. Baseline: the same MLLP server and client with a handler that returns a
   prepared ACK without reading the message (what MLLP and asyncio cost alone).
2. HL7 messages parsed per second: the live path (``parse_message`` on python-hl7 +
   ``read_rgv_o15`` to a domain order) versus hl7apy (``parse_message`` with find_groups, STRICT
   validation level, the strict validator the tests use) on the same RGV^O15, and python-hl7's
   ``hl7.parse`` alone.
3. FHIR MedicationAdministration built and validated with the R4B model, per second; baseline:
   built without validation.

Measurements, not tests: shared machines are noisy; each figure is the median of ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message as hl7apy_parse

import hl7 as python_hl7
from pumpgw.fhir.administration import Administered, medication_administration
from pumpgw.gateway.clock import SystemClock
from pumpgw.gateway.config import Hl7Section
from pumpgw.gateway.dose import Concentration
from pumpgw.gateway.eventlog import EventLog
from pumpgw.gateway.orders import Drug, Order, OrderSource, PendingOrders
from pumpgw.gateway.quantity import Quantity
from pumpgw.hl7.build import Party
from pumpgw.hl7.message import parse_message
from pumpgw.hl7.mllp_io import MllpClient, MllpServer, Peer
from pumpgw.hl7.piv import build_rgv_o15, read_rgv_o15
from pumpgw.hl7.piv_consumer import PivConsumer

EMAR = Party("EMAR", "HOSPITAL")
GATEWAY = Party("PUMPGW", "ICU3")


def order(i: int, now: datetime) -> Order:
    return Order(
        order_id=f"ORD-{i}",
        source=OrderSource.HL7,
        patient_id="MRN12345",
        patient_name="Doe, John",
        drug=Drug("1234", "LOCAL", "Dopamine"),
        concentration=Concentration(Quantity.of("400", "mg"), Quantity.of("250", "mL")),
        container_volume=Quantity.of("250", "mL"),
        dose_rate=Quantity.of("10", "ug/kg/min"),
        vtbi=Quantity.of("250", "mL"),
        weight=Quantity.of("85", "kg"),
        route="IV",
        pump_id="pump-a",
        ordered_at=now - timedelta(minutes=1),
    )


def rgv(i: int, now: datetime) -> bytes:
    return build_rgv_o15(order(i, now), control_id=f"MSG{i}", at=now, sender=EMAR, receiver=GATEWAY)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def _round_trips(port: int, messages: list[bytes]) -> list[float]:
    times: list[float] = []
    async with MllpClient("127.0.0.1", port) as client:
        for m in messages:
            t0 = time.perf_counter()
            await client.request(m)
            times.append((time.perf_counter() - t0) * 1000)
    return times


async def ack_latency(count: int, workdir: Path) -> tuple[list[float], list[float]]:
    now = datetime.now(UTC)
    messages = [rgv(i, now) for i in range(count)]
    clock = SystemClock()
    log = EventLog(workdir / f"events-{time.monotonic_ns()}.sqlite3", "bench", clock)
    await log.open()
    try:
        consumer = PivConsumer(
            Hl7Section(enabled=True, listen_port=0, stale_after_min=60),
            log,
            PendingOrders(),
            clock,
            lambda: {"pump-a": frozenset({"1"})},
        )
        ready = asyncio.Event()
        task = asyncio.create_task(consumer.run(ready))
        await ready.wait()
        gateway_ms = await _round_trips(consumer.port, messages)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await log.close()

    prepared_ack = b"MSH|^~\\&|PUMPGW|ICU3|EMAR|HOSPITAL|20261207120000+0000||ACK^O15^ACK|1|P|2.6\rMSA|CA|1\r"

    async def echo(_data: bytes, _peer: Peer) -> bytes:
        return prepared_ack

    async with MllpServer(echo) as server:
        baseline_ms = await _round_trips(server.port, messages)
    return gateway_ms, baseline_ms


def rate(fn: Callable[[], object], seconds: float = 1.0) -> float:
    n = 0
    t0 = time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        fn()
        n += 1
    return n / elapsed


def med(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f}/s (min {min(values):,.0f}, max {max(values):,.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="repetitions of each figure (default 3)")
    ap.add_argument("--orders", type=int, default=500, help="RGV^O15 messages per latency run")
    args = ap.parse_args()
    print("# pumpgw HL7/FHIR bench")

    print(f"\n## 1. RGV^O15 received -> ACK^O15 sent ({args.orders} orders, one client, loopback)")
    gw: list[float] = []
    base: list[float] = []
    with tempfile.TemporaryDirectory(prefix="pumpgw-bench-hl7-") as tmp:
        for _ in range(args.runs):
            g, b = asyncio.run(ack_latency(args.orders, Path(tmp)))
            gw += g
            base += b
    g50, g99, b50, b99 = (percentile(gw, 50), percentile(gw, 99), percentile(base, 50), percentile(base, 99))
    print(f"gateway (parse, ACK, queue)    p50 {g50:6.2f} ms  p99 {g99:6.2f} ms  max {max(gw):6.2f} ms")
    print("   goal: p99 < 20 ms:", "met" if g99 < 20 else "MISSED")
    print(f"  baseline: prepared ACK       p50 {b50:6.2f} ms  p99 {b99:6.2f} ms  ratio p50 {g50 / b50:.1f}")

    print("\n## 2. Parsing the same RGV^O15 (one message, repeatedly)")
    data = rgv(1, datetime.now(UTC))
    text = data.decode()
    live = [rate(lambda: read_rgv_o15(parse_message(data))) for _ in range(args.runs)]
    raw = [rate(lambda: python_hl7.parse(text)) for _ in range(args.runs)]  # type: ignore[attr-defined]
    strict = [
        rate(lambda: hl7apy_parse(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True))
        for _ in range(args.runs)
    ]
    print(f"live path: parse + read order   {med(live)}")
    print(f"  python-hl7 hl7.parse alone    {med(raw)}")
    ratio = statistics.median(live) / statistics.median(strict)
    print(f"  baseline: hl7apy STRICT parse {med(strict)}  ratio {ratio:.0f}x")

    print("\n## 3. FHIR MedicationAdministration (R4B)")
    now = datetime.now(UTC)
    happened = Administered(
        event_id="0193a1b2-0000-7000-8000-000000000001",
        status="in-progress",
        start=now,
        rate=Quantity.of("5", "mL/h"),
        volume_infused=Quantity.of("12.5", "mL"),
    )
    o = order(1, now)
    built = [rate(lambda: medication_administration(happened, o, validate=True)) for _ in range(args.runs)]
    bare = [rate(lambda: medication_administration(happened, o, validate=False)) for _ in range(args.runs)]
    print(f"built and validated (R4B)       {med(built)}")
    ratio = statistics.median(built) / statistics.median(bare)
    print(f"  baseline: built, not validated {med(bare)}  ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
