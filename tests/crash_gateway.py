"""The real gateway in a process of its own, for tests/test_eventlog_crash.py to kill.

    python tests/crash_gateway.py STATE_DIR MQTT_HOST MQTT_PORT --burst WRITERS
    python tests/crash_gateway.py STATE_DIR MQTT_HOST MQTT_PORT --watch-from SEQ

Builds :class:`pumpgw.gateway.app.Gateway` from a configuration as ``pumpgw run`` does (the system
clock, MQTT to the test's mosquitto, no drug library required, no pumps) and runs it until SIGINT
or SIGTERM, exactly as ``pumpgw run`` does (:func:`~pumpgw.gateway.cli_common.run_until_signal`:
exit code 0 on a clean stop), with one extra part. Every line on stdout is flushed at once:

- ``running``: every part of the gateway is ready (the extra part is started last);
- ``--burst N``: N writers append events as fast as the log accepts them, concurrently, so commits
  are grouped; ``accepted <seq> <id>`` is printed after each append has returned, i.e. after the
  log said the event is committed. The test kills the process with SIGKILL in the middle.
- ``--watch-from SEQ``: ``logged <seq> <id> <type>`` for every event committed after SEQ (those of
  this run, the gateway's own included), as soon as it is committed; those written while the
  gateway started come before ``running``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
from pathlib import Path
from typing import Any

from event_samples import sample

from pumpgw.gateway.app import Gateway
from pumpgw.gateway.cli_common import run_until_signal
from pumpgw.gateway.clock import SystemClock
from pumpgw.gateway.config import parse_config
from pumpgw.gateway.eventlog import EventLog
from pumpgw.gateway.events import EventType, Refs
from pumpgw.gateway.logs import setup_logging

GATEWAY_ID = "gw-crash"

#: What the burst writes: the bedside's events (never the gateway's own gateway.*, eventlog.* or
#: delivery.* events, which the test counts), cycled so payloads of every size and shape are in it.
BURST_TYPES = tuple(t for t in EventType if not t.value.startswith(("gateway.", "eventlog.", "delivery.")))


def config(state_dir: Path, host: str, port: int) -> dict[str, Any]:
    return {
        "gateway": {"id": GATEWAY_ID, "state_dir": str(state_dir)},
        "mqtt": {"enabled": True, "host": host, "port": port, "keepalive_s": 5},
        "library": {"required": False},  # monitoring only: library.unavailable, not a fault
    }


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Burst:
    """The extra part of ``--burst``: ``writers`` concurrent tasks appending until killed."""

    name = "crash-burst"

    def __init__(self, events: EventLog, writers: int) -> None:
        self._events = events
        self._writers = writers

    async def run(self, ready: asyncio.Event) -> None:
        ready.set()
        say("running")
        async with asyncio.TaskGroup() as group:
            for writer in range(self._writers):
                group.create_task(self._write(writer), name=f"burst-{writer}")

    async def _write(self, writer: int) -> None:
        for i in itertools.count():
            type_ = BURST_TYPES[(writer + i) % len(BURST_TYPES)]
            refs = Refs(patient=f"MRN-{writer:03d}", order=f"ORD-{writer}-{i}", clinician=f"RN-{writer % 5}")
            event = await self._events.append(
                type_, sample(type_), pump=f"pump-{writer % 4}", channel=1 + writer % 2, refs=refs
            )
            say(f"accepted {event.seq} {event.id}")


class Watch:
    """The extra part of ``--watch-from``: reports every event committed after ``after``."""

    name = "crash-watch"

    def __init__(self, events: EventLog, after: int) -> None:
        self._events = events
        self._after = after

    async def run(self, ready: asyncio.Event) -> None:
        committed = asyncio.Event()
        self._events.subscribe(committed)  # set after every commit of the log
        # What this run has written while starting (gateway.started, library.unavailable ...)
        # is reported before "running", so a test that saw "running" knows those events.
        seq = await self._report(self._after)
        ready.set()
        say("running")
        while True:
            committed.clear()  # before reading: a commit during the read sets it again
            seq = await self._report(seq)
            await committed.wait()

    async def _report(self, seq: int) -> int:
        """Say every event after ``seq``; return the newest seq said."""
        while batch := await self._events.read_after(seq, limit=500):
            for event in batch:
                say(f"logged {event.seq} {event.id} {event.type}")
            seq = batch[-1].seq
        return seq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("state_dir", type=Path)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--burst", type=int, metavar="WRITERS")
    mode.add_argument("--watch-from", type=int, metavar="SEQ")
    args = parser.parse_args()

    gateway_config = parse_config(config(args.state_dir, args.host, args.port), "crash_gateway")
    setup_logging("info")  # to stderr, which the test keeps in a file and shows when it fails

    async def run(stop: asyncio.Event) -> None:
        gateway = Gateway(gateway_config, SystemClock())
        extra = Burst(gateway.events, args.burst) if args.burst else Watch(gateway.events, args.watch_from)
        await gateway.run(stop, extra=[extra])

    run_until_signal(run, None)


if __name__ == "__main__":
    main()
