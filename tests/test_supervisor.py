"""The supervisor starts parts in order, stops them in reverse, and names a failing part."""

from __future__ import annotations

import asyncio

import pytest

from pumpgw.gateway.errors import PartFailed
from pumpgw.gateway.supervisor import Supervisor


class Recorder:
    def __init__(self) -> None:
        self.log: list[str] = []
        self._seen: dict[str, asyncio.Event] = {}

    def record(self, entry: str) -> None:
        self.log.append(entry)
        self._seen.setdefault(entry, asyncio.Event()).set()

    async def seen(self, entry: str) -> None:
        await self._seen.setdefault(entry, asyncio.Event()).wait()


class GoodPart:
    def __init__(self, name: str, rec: Recorder) -> None:
        self.name = name
        self.rec = rec

    async def run(self, ready: asyncio.Event) -> None:
        self.rec.record(f"start {self.name}")
        ready.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.rec.record(f"stop {self.name}")


class FailingPart:
    name = "broken"

    def __init__(self, started: asyncio.Event) -> None:
        self.started = started
        self.go = asyncio.Event()

    async def run(self, ready: asyncio.Event) -> None:
        ready.set()
        self.started.set()
        await self.go.wait()
        raise OSError("serial port vanished")


class NeverReady:
    name = "sleepy"

    async def run(self, ready: asyncio.Event) -> None:
        await asyncio.Event().wait()


class Quitter:
    name = "quitter"

    async def run(self, ready: asyncio.Event) -> None:
        ready.set()


async def test_start_in_order_stop_in_reverse() -> None:
    rec = Recorder()
    stop = asyncio.Event()
    sup = Supervisor([GoodPart("a", rec), GoodPart("b", rec), GoodPart("c", rec)])
    task = asyncio.create_task(sup.run(stop))
    await rec.seen("start c")
    stop.set()
    await task
    assert rec.log == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]


async def test_a_failing_part_is_named_and_the_others_are_stopped() -> None:
    rec = Recorder()
    started = asyncio.Event()
    broken = FailingPart(started)
    sup = Supervisor([GoodPart("a", rec), broken, GoodPart("c", rec)])
    task = asyncio.create_task(sup.run(asyncio.Event()))
    await started.wait()
    await rec.seen("start c")
    broken.go.set()
    with pytest.raises(PartFailed) as info:
        await task
    assert info.value.part == "broken"
    assert isinstance(info.value.cause, OSError)
    assert "serial port vanished" in str(info.value)
    assert rec.log == ["start a", "start c", "stop c", "stop a"]


async def test_a_part_that_never_becomes_ready_fails_the_start_instead_of_hanging() -> None:
    rec = Recorder()
    sup = Supervisor([GoodPart("a", rec), NeverReady()], start_timeout_s=0.05)
    with pytest.raises(PartFailed, match=r"sleepy failed: TimeoutError: not ready within 0\.05 s"):
        await sup.run(asyncio.Event())
    assert rec.log == ["start a", "stop a"]


async def test_a_part_that_returns_on_its_own_is_a_failure() -> None:
    rec = Recorder()
    sup = Supervisor([Quitter(), GoodPart("a", rec)])
    with pytest.raises(PartFailed, match=r"quitter failed: .*ended without being asked to stop"):
        await sup.run(asyncio.Event())


async def test_stop_during_start_stops_what_started() -> None:
    rec = Recorder()
    stop = asyncio.Event()
    stop.set()
    await Supervisor([GoodPart("a", rec), GoodPart("b", rec)]).run(stop)
    assert rec.log[-1] == "stop a"
    assert "start b" not in rec.log


async def test_cancelling_the_supervisor_stops_every_part_and_propagates() -> None:
    rec = Recorder()
    sup = Supervisor([GoodPart("a", rec), GoodPart("b", rec)])
    task = asyncio.create_task(sup.run(asyncio.Event()))
    await rec.seen("start b")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rec.log == ["start a", "start b", "stop b", "stop a"]


def test_duplicate_part_names_are_refused() -> None:
    rec = Recorder()
    with pytest.raises(ValueError, match="unique"):
        Supervisor([GoodPart("a", rec), GoodPart("a", rec)])


class Stubborn:
    """Swallows the first ``n`` cancellations, as Python 3.11's wait_for can inside libraries."""

    def __init__(self, n: int) -> None:
        self.name = f"stubborn-{n}"
        self.n = n
        self.stopped = asyncio.Event()
        self.running = asyncio.Event()

    async def run(self, ready: asyncio.Event) -> None:
        ready.set()
        self.running.set()
        swallowed = 0
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed > self.n:
                    self.stopped.set()
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]


async def test_a_part_that_loses_a_cancellation_is_cancelled_again(caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    stubborn = Stubborn(1)
    stop = asyncio.Event()
    sup = Supervisor([GoodPart("a", rec), stubborn], stop_grace_s=0.05)
    task = asyncio.create_task(sup.run(stop))
    await stubborn.running.wait()
    stop.set()
    await task
    assert stubborn.stopped.is_set()
    assert rec.log[-1] == "stop a"  # the event log (first part) still closes
    assert any("cancelling it again" in r.message for r in caplog.records)


async def test_a_part_that_never_stops_is_left_behind_not_waited_for_forever(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = Recorder()
    stubborn = Stubborn(3)  # survives all three attempts
    stop = asyncio.Event()
    sup = Supervisor([GoodPart("a", rec), stubborn], stop_grace_s=0.02)
    task = asyncio.create_task(sup.run(stop))
    await stubborn.running.wait()
    stop.set()
    await task
    assert rec.log[-1] == "stop a"
    assert any("leaving it behind" in r.message for r in caplog.records)
    # Tidy up: the fourth cancellation ends it.
    leftover = [t for t in asyncio.all_tasks() if t.get_name() == "stubborn-3"]
    for t in leftover:
        t.cancel()
    await asyncio.wait(leftover)
