"""Benchmarks of the pump drivers: poll round trips per protocol, throttled serial lines against
their theoretical limit, and the CPU the gateway spends polling 16 channels at 1 Hz.

Run from the repository root after scripts/bootstrap:   .venv/bin/python bench/drivers.py

Three sections, each printed as a table, then a summary of the key figures:

1. Poll round trips per second, unthrottled (as fast as a PTY or loopback TCP goes). The rig runs
   in its own process (``pumpgw rig up``), so the emulated pump does not share the driver's event
   loop; the driver runs here and times back-to-back ``read_status()`` calls. Baselines, same run,
   same byte counts (one poll's requests and replies, recorded with a tap on the rig's side):
   ``bare echo``: a blocking client here and a trivial responder process that answers each request
   with the recorded reply, over a bare PTY pair or loopback TCP; and ``raw vs rig``: the same
   blocking client replaying the driver's exact requests to the emulated pump, so the distance
   between the two baselines is the emulator's cost and the rest is driver, codec and asyncio.
   On Modbus RTU every client keeps the driver's t3.5 silence between frames: it is the protocol's,
   not overhead.
2. Throttled serial (New Era, Alaris-style, Modbus RTU at 19200 and 115200 baud): achieved polls/s
   as a share of the line's limit, (host bytes + pump bytes) x 10 bits / baud per poll (request then
   reply, one at a time), plus t3.5 per transaction on Modbus RTU. Goal: at least 80 %. The
   ``raw vs rig`` ceiling shows how much of the shortfall is the paced emulator's (timer
   granularity) rather than the driver's.
3. CPU of ``pumpgw run`` polling 16 channels at 1 Hz (goal: under 3 % of one core), from
   /proc/PID/stat, against the same gateway with no pumps, both running over the same windows so
   the machine's noise hits both alike; the rig's CPU is shown for information.

These are measurements, not tests: the machine is shared and noisy, so every figure is repeated
and shown as median (min-max); nothing fails on a number.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import tty
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pumpgw.drivers.base import PumpDriver
from pumpgw.drivers.modbus import rtu_gap_s
from pumpgw.gateway.app import make_driver
from pumpgw.gateway.clock import SystemClock
from pumpgw.gateway.config import parse_config
from pumpgw.gateway.errors import PumpGwError
from pumpgw.rig.bench_rig import BenchRig

BIN = Path(sys.executable).parent
PUMPGW = str(BIN / "pumpgw")
PROTOCOLS: Final = ("modbus-tcp", "modbus-rtu", "newera", "alaris")
SERIAL_PROTOCOLS: Final = ("newera", "alaris", "modbus-rtu")
BAUDS: Final = (19200, 115200)
CHANNELS: Final = 2  # per Modbus pump, the rig's default
#: The rig's serial lines are 8N1: 10 bits per character (rig/faults.py LinkConditioner).
BITS_PER_CHAR: Final = 10
THROTTLED_GOAL: Final = 0.80
CPU_GOAL_PERCENT: Final = 3.0
#: Safe mode stops a New Era pump left alone this long (reference §2.3); the bench leaves it alone
#: for a few seconds between rounds, so it sets more than the gateway's default of 10 s.
SAFE_MODE_TIMEOUT_S: Final = 30
CAPTURE_POLLS: Final = 50  # polls whose bytes are counted
MIN_POLLS: Final = 3  # per round, however slow the line
REPLY_TIMEOUT_S: Final = 2.0  # raw clients: a reply this late means something is broken
START_TIMEOUT_S: Final = 20.0  # pumpgw rig up: until its JSON line
#: pumpgw rig up --modbus-tcp 4 --modbus-rtu 2 --newera 2 --alaris 2 --channels 2: 16 channels.
CPU_RIG: Final = ("--modbus-tcp", "4", "--channels", "2")
CPU_RIG_SERIAL: Final = ("--modbus-rtu", "2", "--newera", "2", "--alaris", "2")
CPU_WINDOWS: Final = 3
#: What a failed row is allowed to raise; anything else is a bug in this script and should show.
ROW_ERRORS: Final = (PumpGwError, OSError, ValueError, RuntimeError, subprocess.SubprocessError)

# A bare peer for the "bare echo" baseline, run as its own process: answers each request (known by
# its length) with the recorded reply, over a PTY master or the first TCP connection on a listener.
ECHO_PEER: Final = """
import json, os, socket, sys
kind, fd = sys.argv[1], int(sys.argv[2])
pattern = [(n, bytes.fromhex(reply)) for n, reply in json.loads(sys.argv[3])]
if kind == "tcp":
    conn, _ = socket.socket(fileno=fd).accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    fd = conn.fileno()
i = got = 0
try:
    while data := os.read(fd, 65536):
        got += len(data)
        while got >= pattern[i][0]:
            got -= pattern[i][0]
            os.write(fd, pattern[i][1])
            i = (i + 1) % len(pattern)
except OSError:
    pass  # the bench closed its end of the PTY (EIO)
"""


# --- what a poll puts on the wire --------------------------------------------------------------------


@dataclass(frozen=True)
class Wire:
    """One poll of one protocol on the wire, counted by a tap on the rig's side of the link."""

    protocol: str
    transactions: float  # request/reply pairs per poll
    host_bytes: float
    pump_bytes: float
    pattern: tuple[tuple[bytes, bytes], ...]  # one poll as sent: (request, reply) per transaction

    @property
    def bytes(self) -> float:
        return self.host_bytes + self.pump_bytes


class _CountingTap:
    """A rig tap (rig/faults.py ``Tap``) that pairs each reply with the request bytes before it."""

    def __init__(self) -> None:
        self.pending = bytearray()
        self.exchanges: list[tuple[bytes, bytes]] = []

    def host_sent(self, data: bytes, at: float, conn: int | None) -> None:
        self.pending += data

    def device_sent(self, data: bytes, at: float, conn: int | None) -> None:
        self.exchanges.append((bytes(self.pending), data))
        self.pending.clear()


_RIG_COUNT: Final = {
    "modbus-tcp": "modbus_pumps",
    "modbus-rtu": "modbus_rtu_pumps",
    "newera": "newera_pumps",
    "alaris": "alaris_pumps",
}


def bench_driver(endpoint: Mapping[str, Any]) -> PumpDriver:
    """The gateway's own driver for a rig endpoint, built as ``pumpgw run`` builds it."""
    entry = dict(endpoint)
    if entry["driver"] == "newera":
        entry["safe_mode_timeout_s"] = SAFE_MODE_TIMEOUT_S
    config = parse_config({"gateway": {"id": "bench"}, "pumps": [entry]}, "bench")
    return make_driver(config.pumps[0])


def gap_s(endpoint: Mapping[str, Any]) -> float:
    """The silence the driver keeps between frames: t3.5 on Modbus RTU, none elsewhere."""
    return rtu_gap_s(int(endpoint["baudrate"])) if endpoint["driver"] == "modbus-rtu" else 0.0


async def measure_wire(protocol: str, polls: int = CAPTURE_POLLS) -> Wire:
    """Bytes and transactions per poll: an in-process rig with a counting tap, ``polls`` polls after
    two warm-up polls (the first Modbus poll also reads the heartbeat it continues from)."""
    counts = dict.fromkeys(_RIG_COUNT.values(), 0)
    counts[_RIG_COUNT[protocol]] = 1
    async with BenchRig(SystemClock(), channels=CHANNELS, **counts) as rig:
        pump = rig.pumps[0]
        tap = _CountingTap()
        pump.taps.append(tap)
        driver = bench_driver(pump.endpoint)
        await driver.connect()
        try:
            for _ in range(2):
                await driver.read_status()
            tap.exchanges.clear()
            for _ in range(polls):
                await driver.read_status()
            exchanges = list(tap.exchanges)  # before close: the Alaris driver hands back control
        finally:
            await driver.close()
    per_poll = len(exchanges) / polls
    if per_poll != int(per_poll):
        raise RuntimeError(f"{protocol}: {len(exchanges)} replies in {polls} polls is not a whole number")
    return Wire(
        protocol,
        per_poll,
        sum(len(request) for request, _ in exchanges) / polls,
        sum(len(reply) for _, reply in exchanges) / polls,
        tuple(exchanges[-int(per_poll) :]),
    )


# --- bare clients ------------------------------------------------------------------------------------


def reply_complete(protocol: str, buf: bytes | bytearray) -> bool:
    """Whether ``buf`` holds one whole reply, by the protocol's framing alone (no CRC checks: the
    baseline must cost next to nothing)."""
    if protocol == "modbus-tcp":  # MBAP: 6-byte header whose length field counts what follows
        return len(buf) >= 6 and len(buf) >= 6 + int.from_bytes(buf[4:6], "big")
    if protocol == "modbus-rtu":  # unit, function, then its fixed layout, then the CRC
        if len(buf) < 3:
            return False
        function = buf[1]
        size = 5 if function & 0x80 else 5 + buf[2] if function in (3, 4) else 8
        return len(buf) >= size
    if protocol == "newera":  # safe mode: STX, length byte (counts itself and what follows), ...
        return len(buf) >= 2 and len(buf) >= 1 + buf[1]
    return b"\r" in buf  # Alaris-style: '!' message '|' CRC CR


def _read_reply(fd: int, protocol: str) -> None:
    buf = bytearray()
    deadline = time.perf_counter() + REPLY_TIMEOUT_S
    while not reply_complete(protocol, buf):
        left = deadline - time.perf_counter()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"no whole {protocol} reply within {REPLY_TIMEOUT_S} s, got {bytes(buf)!r}")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise ConnectionError(f"{protocol}: the peer closed the link")
        buf += chunk


def raw_round(fd: int, wire: Wire, gap: float, seconds: float) -> float:
    """Polls per second of a blocking client sending one poll's recorded requests on ``fd`` and
    reading each reply whole, keeping ``gap`` seconds of silence before each request."""
    polls = 0
    quiet_since = 0.0
    start = time.perf_counter()
    end = start + seconds
    while True:
        for request, _ in wire.pattern:
            if gap:
                wait = quiet_since + gap - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            os.write(fd, request)  # a few dozen bytes to a blocking descriptor: written whole
            _read_reply(fd, wire.protocol)
            quiet_since = time.perf_counter()
        polls += 1
        now = time.perf_counter()
        if now >= end and polls >= MIN_POLLS:
            return polls / (now - start)


def _drain(fd: int) -> None:
    while select.select([fd], [], [], 0)[0]:
        if not os.read(fd, 4096):
            return


@contextlib.contextmanager
def raw_link(endpoint: Mapping[str, Any]) -> Iterator[int]:
    """A bare descriptor to a rig pump: a blocking TCP socket or the PTY opened raw."""
    if endpoint["driver"] == "modbus-tcp":
        with socket.create_connection((endpoint["host"], int(endpoint["port"])), timeout=5) as sock:
            sock.settimeout(None)  # blocking again: raw_round reads with select
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            yield sock.fileno()
        return
    fd = os.open(endpoint["port"], os.O_RDWR | os.O_NOCTTY)
    try:
        tty.setraw(fd)
        _drain(fd)  # a late reply from the driver's last poll must not end our first request
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def echo_peer(wire: Wire) -> Iterator[int]:
    """The bare-echo baseline's peer in its own process (``ECHO_PEER``); yields the descriptor to
    send requests on: a PTY slave in raw mode, or a loopback TCP connection for Modbus TCP."""
    pattern = json.dumps([[len(request), reply.hex()] for request, reply in wire.pattern])
    listener: socket.socket | None = None
    if wire.protocol == "modbus-tcp":
        listener = socket.create_server(("127.0.0.1", 0))
        kind, peer_fd, ours = "tcp", listener.fileno(), -1
    else:
        peer_fd, ours = os.openpty()
        tty.setraw(ours)
        kind = "pty"
    sock: socket.socket | None = None
    command = [sys.executable, "-c", ECHO_PEER, kind, str(peer_fd), pattern]
    proc = subprocess.Popen(command, pass_fds=(peer_fd,))
    try:
        if listener is not None:
            sock = socket.create_connection(listener.getsockname()[:2], timeout=5)
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            listener.close()
            ours = sock.fileno()
        else:
            os.close(peer_fd)  # the peer process holds the master now
        yield ours
    finally:
        if sock is not None:
            sock.close()
        elif listener is None:
            os.close(ours)  # the peer reads EIO and ends
        stop_process(proc)


# --- processes ---------------------------------------------------------------------------------------


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then wait; SIGKILL only if it does not end within 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr, proc.stdin):
        if stream is not None:
            stream.close()


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass(frozen=True)
class Rig:
    pid: int
    pumps: list[dict[str, Any]]
    config: Path


@contextlib.contextmanager
def rig_process(workdir: Path, name: str, flags: Sequence[str]) -> Iterator[Rig]:
    """``pumpgw rig up --json`` with only the pumps in ``flags``, in its own process and directory."""
    rig_dir = workdir / name
    rig_dir.mkdir()
    log = rig_dir / "stderr.log"
    command = [PUMPGW, "rig", "up", "--json", "--dir", str(rig_dir), "--modbus-tcp", "0", "--newera", "0"]
    with log.open("w") as err:
        proc = subprocess.Popen([*command, *flags], stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert proc.stdout is not None
        ready = select.select([proc.stdout], [], [], START_TIMEOUT_S)[0]
        line = proc.stdout.readline() if ready else ""
        if not line:
            proc.poll()
            raise RuntimeError(
                f"pumpgw rig up {' '.join(flags)} gave no endpoints (exit {proc.returncode}): {_tail(log)}"
            )
        info = json.loads(line)
        yield Rig(proc.pid, info["pumps"], Path(info["config"]))
    finally:
        stop_process(proc)


# --- statistics and printing -------------------------------------------------------------------------


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float], fmt: str = ".0f") -> str:
    """``median (min-max)``, or ``-`` for nothing measured."""
    if not values:
        return "-"
    return f"{med(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def pct(value: float) -> str:
    return f"{100 * value:.0f} %"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    full = [row for row in rows if len(row) == len(headers)]  # error rows span the table
    widths = [max([len(h), *(len(r[i]) for r in full)]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in rows:
        if len(row) < len(headers):  # an error row: the protocol, then the message
            print(f"{row[0].ljust(widths[0])}  {row[1]}")
        else:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# --- 1: unthrottled ----------------------------------------------------------------------------------


@dataclass
class Unthrottled:
    protocol: str
    wire: Wire
    driver: list[float] = field(default_factory=list)
    raw_rig: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)
    gap: float = 0.0


async def driver_round(driver: PumpDriver, seconds: float) -> float:
    """Polls per second of back-to-back ``read_status()`` for ``seconds`` (at least MIN_POLLS),
    after a warm-up poll; the driver connects before and closes after, so raw clients may use the
    port between rounds."""
    await driver.connect()
    try:
        await driver.read_status()
        polls = 0
        start = time.perf_counter()
        end = start + seconds
        while True:
            await driver.read_status()
            polls += 1
            now = time.perf_counter()
            if now >= end and polls >= MIN_POLLS:
                return polls / (now - start)
    finally:
        await driver.close()


async def settle_pump(driver: PumpDriver) -> None:
    """One connection and poll before any raw client: a New Era pump is switched to safe mode (the
    framing of the recorded requests) and its power-up alarm acknowledged."""
    await driver.connect()
    try:
        await driver.read_status()
    finally:
        await driver.close()


async def unthrottled(protocol: str, wire: Wire, workdir: Path, args: argparse.Namespace) -> Unthrottled:
    row = Unthrottled(protocol, wire)
    with rig_process(workdir, f"rig-{protocol}", [f"--{protocol}", "1"]) as rig, echo_peer(wire) as echo:
        endpoint = rig.pumps[0]
        driver = bench_driver(endpoint)
        row.gap = gap_s(endpoint)
        await settle_pump(driver)
        for _ in range(args.rounds):  # interleaved, so a noisy moment hits all three alike
            row.bare.append(raw_round(echo, wire, row.gap, args.raw_seconds))
            with raw_link(endpoint) as fd:
                row.raw_rig.append(raw_round(fd, wire, row.gap, args.raw_seconds))
            row.driver.append(await driver_round(driver, args.seconds))
    return row


def print_unthrottled(rows: Sequence[Unthrottled | tuple[str, str]]) -> None:
    print("\n## 1. Poll round trips, unthrottled (rig in its own process; polls/s, median (min-max))")
    cells: list[list[str]] = []
    for row in rows:
        if isinstance(row, tuple):
            cells.append(list(row))
            continue
        w = row.wire
        cells.append(
            [
                row.protocol,
                f"{w.transactions:.0f}",
                f"{w.host_bytes:.0f}+{w.pump_bytes:.0f}",
                spread(row.driver),
                f"{1000 / med(row.driver):.2f}",
                spread(row.raw_rig),
                spread(row.bare),
                f"{med(row.driver) / med(row.bare):.2f}",
                f"{med(row.raw_rig) / med(row.bare):.2f}",
                f"{1 / (w.transactions * row.gap):.0f}/s" if row.gap else "",
            ]
        )
    table(
        [
            "protocol",
            "tx/poll",
            "B/poll host+pump",
            "driver polls/s",
            "ms/poll",
            "raw vs rig",
            "bare echo",
            "driver/bare",
            "raw rig/bare",
            "t3.5 cap",
        ],
        cells,
    )
    print(
        "tx: request/reply transactions per read_status (Modbus: system block, one block per channel,\n"
        "heartbeat write). raw vs rig: a blocking client replaying the driver's exact requests to the\n"
        "emulated pump; bare echo: the same bytes against a trivial responder process. On Modbus RTU\n"
        "every client keeps t3.5 between frames (the endpoint's 19200 baud sets it even on an unpaced\n"
        "PTY); 't3.5 cap' is the most polls/s those silences alone allow."
    )


# --- 2: throttled ------------------------------------------------------------------------------------


@dataclass
class Throttled:
    protocol: str
    baud: int
    wire: Wire
    gap: float
    driver: list[float] = field(default_factory=list)
    raw_rig: list[float] = field(default_factory=list)

    @property
    def theory(self) -> float:
        """The line's limit in polls/s: every bit of request and reply in turn, plus t3.5 each."""
        seconds = self.wire.bytes * BITS_PER_CHAR / self.baud + self.wire.transactions * self.gap
        return 1 / seconds


async def throttled(
    protocol: str, baud: int, wire: Wire, workdir: Path, args: argparse.Namespace
) -> Throttled:
    flags = [f"--{protocol}", "1", "--baud", str(baud)]
    with rig_process(workdir, f"rig-{protocol}-{baud}", flags) as rig:
        endpoint = rig.pumps[0]
        row = Throttled(protocol, baud, wire, gap_s(endpoint))
        driver = bench_driver(endpoint)
        await settle_pump(driver)
        for _ in range(args.rounds):
            with raw_link(endpoint) as fd:
                row.raw_rig.append(raw_round(fd, wire, row.gap, args.throttled_raw_seconds))
            row.driver.append(await driver_round(driver, args.throttled_seconds))
    return row


def print_throttled(rows: Sequence[Throttled | tuple[str, str]]) -> None:
    print("\n## 2. Throttled serial lines (rig paced at the baud rate, 8N1; polls/s, median (min-max))")
    cells: list[list[str]] = []
    for row in rows:
        if isinstance(row, tuple):
            cells.append(list(row))
            continue
        driver, raw = med(row.driver), med(row.raw_rig)
        achieved = driver / row.theory
        tx = row.wire.transactions
        cells.append(
            [
                row.protocol,
                str(row.baud),
                f"{row.wire.bytes:.0f}",
                f"{1000 * tx * row.gap:.2f}" if row.gap else "-",
                f"{row.theory:.2f}",
                spread(row.raw_rig, ".2f"),
                spread(row.driver, ".2f"),
                pct(raw / row.theory),
                pct(achieved),
                f"{1000 * (1 / raw - 1 / row.theory) / tx:.2f}",
                f"{1000 * (1 / driver - 1 / raw) / tx:.2f}",
                "met" if achieved >= THROTTLED_GOAL else "NOT met",
            ]
        )
    table(
        [
            "protocol",
            "baud",
            "B/poll",
            "t3.5 ms/poll",
            "limit/s",
            "raw vs rig",
            "driver",
            "raw/limit",
            "driver/limit",
            "rig ms/tx",
            "driver ms/tx",
            f"goal >= {pct(THROTTLED_GOAL)}",
        ],
        cells,
    )
    print(
        f"limit = 1 / (B/poll x {BITS_PER_CHAR} bits / baud + transactions x t3.5); t3.5 is what the driver\n"
        "keeps (drivers/modbus.py rtu_gap_s: 3.5 characters of 11 bits up to 19200 baud, 1.75 ms above,\n"
        "Modbus over Serial Line v1.02 §2.5.1.1). raw vs rig: a blocking client replaying the driver's\n"
        "requests against the same paced rig, the most a host with no overhead gets from it.\n"
        "Time per transaction beyond the line's: 'rig ms/tx' = raw client over the limit (the paced\n"
        "emulator and the OS: PTY hops, reply timers), 'driver ms/tx' = driver over the raw client."
    )


# --- 3: CPU ------------------------------------------------------------------------------------------


CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, in seconds (proc(5): fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields[0] is field 3, state


def empty_config(rig_config: Path, state_dir: Path, out: Path) -> Path:
    """A copy of the rig's gateway config with its [gateway] and [mqtt] sections only (no pumps) and
    its own state directory."""
    head = rig_config.read_text().split("[[pumps]]", 1)[0]
    lines = [
        f"state_dir = {json.dumps(str(state_dir))}" if line.startswith("state_dir") else line
        for line in head.splitlines()
    ]
    out.write_text("\n".join(lines) + "\n")
    parsed = tomllib.loads(out.read_text())
    if parsed.get("pumps") or parsed["gateway"]["state_dir"] != str(state_dir):
        raise RuntimeError(f"{out}: could not derive a pump-less config from {rig_config}")
    return out


@dataclass
class Gateway:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    cpu: list[float] = field(default_factory=list)  # % of one core, per window

    def messages(self) -> list[str]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                found.append(str(json.loads(line).get("message", "")))
        return found


@contextlib.contextmanager
def gateway_process(name: str, config: Path, log: Path) -> Iterator[Gateway]:
    with log.open("w") as err:
        proc = subprocess.Popen(
            [PUMPGW, "--log-format", "json", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        yield Gateway(name, proc, log)
    finally:
        stop_process(proc)


@dataclass
class CpuResult:
    loaded: list[float]
    idle: list[float]
    rig: list[float]
    window_s: float
    pumps: int
    channels: int
    loaded_log: dict[str, int]


def cpu_load(workdir: Path, args: argparse.Namespace) -> CpuResult:
    with rig_process(workdir, "rig-cpu", CPU_RIG + CPU_RIG_SERIAL) as rig:
        pumps = len(rig.pumps)
        channels = sum(CHANNELS if str(p["driver"]).startswith("modbus") else 1 for p in rig.pumps)
        empty = empty_config(rig.config, workdir / "state-empty", workdir / "empty.toml")
        with (
            gateway_process("16 channels", rig.config, workdir / "gateway-16.log") as loaded,
            gateway_process("no pumps", empty, workdir / "gateway-0.log") as idle,
        ):
            time.sleep(args.settle)  # start-up (imports, first connects) is not steady polling
            pids = {"loaded": loaded.proc.pid, "idle": idle.proc.pid, "rig": rig.pid}
            samples: dict[str, list[float]] = {key: [] for key in pids}
            window = args.cpu_window / CPU_WINDOWS
            for gw in (loaded, idle):
                if gw.proc.poll() is not None:
                    raise RuntimeError(f"gateway ({gw.name}) exited ({gw.proc.returncode}): {_tail(gw.log)}")
            before = {key: cpu_seconds(pid) for key, pid in pids.items()}
            t0 = time.perf_counter()
            for _ in range(CPU_WINDOWS):
                time.sleep(window)
                after = {key: cpu_seconds(pid) for key, pid in pids.items()}
                t1 = time.perf_counter()
                for key in pids:
                    samples[key].append(100 * (after[key] - before[key]) / (t1 - t0))
                before, t0 = after, t1
            messages = loaded.messages()
    counted = {key: messages.count(key) for key in ("all pumps polled", "pump poll failed", "pump link lost")}
    return CpuResult(samples["loaded"], samples["idle"], samples["rig"], window, pumps, channels, counted)


def print_cpu(result: CpuResult | str) -> None:
    print("\n## 3. CPU of the gateway polling 16 channels at 1 Hz (% of one core, median (min-max))")
    if isinstance(result, str):
        print(result)
        return
    diff = [a - b for a, b in zip(result.loaded, result.idle, strict=True)]
    rows = [
        [f"gateway, {result.pumps} pumps / {result.channels} channels", spread(result.loaded, ".2f")],
        ["gateway, no pumps (baseline)", spread(result.idle, ".2f")],
        ["difference: polling 16 channels", spread(diff, ".2f")],
        ["rig process (for information)", spread(result.rig, ".2f")],
    ]
    table(["process", "CPU %"], rows)
    log = result.loaded_log
    seen = "seen" if log["all pumps polled"] else "NOT seen"
    print(
        f"{CPU_WINDOWS} windows of {result.window_s:.0f} s after settling, both gateways running at once "
        f"(same noise for both); /proc counts CPU in ticks of {1000 / CLOCK_TICKS:.0f} ms, so a window's "
        f"resolution is {100 / CLOCK_TICKS / result.window_s:.2f} %.\n"
        f"Gateway log: 'all pumps polled' {seen}, "
        f"{log['pump poll failed']} failed polls, {log['pump link lost']} links lost. "
        f"Goal: total under {CPU_GOAL_PERCENT:g} % of one core: "
        f"{'met' if med(result.loaded) < CPU_GOAL_PERCENT else 'NOT met'}."
    )


# --- main --------------------------------------------------------------------------------------------


def error_row(name: str, exc: BaseException) -> tuple[str, str]:
    return name, f"FAILED: {type(exc).__name__}: {exc}"


async def run_drivers(
    workdir: Path, args: argparse.Namespace
) -> tuple[list[Unthrottled | tuple[str, str]], list[Throttled | tuple[str, str]]]:
    wires: dict[str, Wire] = {}
    wire_errors: dict[str, BaseException] = {}
    for protocol in PROTOCOLS:
        try:
            wires[protocol] = await measure_wire(protocol)
        except ROW_ERRORS as exc:
            wire_errors[protocol] = exc
    first: list[Unthrottled | tuple[str, str]] = []
    if "unthrottled" in args.sections:
        for protocol in PROTOCOLS:
            if protocol in wire_errors:
                first.append(error_row(protocol, wire_errors[protocol]))
                continue
            try:
                first.append(await unthrottled(protocol, wires[protocol], workdir, args))
            except ROW_ERRORS as exc:
                first.append(error_row(protocol, exc))
    second: list[Throttled | tuple[str, str]] = []
    if "throttled" in args.sections:
        for protocol in SERIAL_PROTOCOLS:
            for baud in BAUDS:
                if protocol in wire_errors:
                    second.append(error_row(f"{protocol} {baud}", wire_errors[protocol]))
                    continue
                try:
                    second.append(await throttled(protocol, baud, wires[protocol], workdir, args))
                except ROW_ERRORS as exc:
                    second.append(error_row(f"{protocol} {baud}", exc))
    return first, second


def print_summary(
    first: Sequence[Unthrottled | tuple[str, str]],
    second: Sequence[Throttled | tuple[str, str]],
    cpu: CpuResult | str | None,
) -> None:
    print("\n## Summary")
    for row in first:
        if isinstance(row, Unthrottled):
            driver, bare = med(row.driver), med(row.bare)
            print(
                f"unthrottled {row.protocol:<10} {driver:7.0f} polls/s ({1000 / driver:.2f} ms/poll, "
                f"{row.wire.transactions:.0f} tx, {row.wire.bytes:.0f} B); bare echo {bare:.0f}/s, "
                f"driver/bare {driver / bare:.2f}"
            )
    for t_row in second:
        if isinstance(t_row, Throttled):
            share = med(t_row.driver) / t_row.theory
            print(
                f"throttled   {t_row.protocol:<10} {t_row.baud:>6} baud {med(t_row.driver):6.2f} polls/s "
                f"of {t_row.theory:.2f} = {pct(share)} of the line "
                f"(goal {pct(THROTTLED_GOAL)}: {'met' if share >= THROTTLED_GOAL else 'NOT met'}; "
                f"a raw client gets {pct(med(t_row.raw_rig) / t_row.theory)} from the paced rig)"
            )
    if isinstance(cpu, CpuResult):
        diff = med([a - b for a, b in zip(cpu.loaded, cpu.idle, strict=True)])
        print(
            f"cpu         gateway with {cpu.channels} channels at 1 Hz {med(cpu.loaded):.2f} % of one core, "
            f"no pumps {med(cpu.idle):.2f} %, polling costs {diff:.2f} % "
            f"(goal < {CPU_GOAL_PERCENT:g} %: {'met' if med(cpu.loaded) < CPU_GOAL_PERCENT else 'NOT met'})"
        )
    failed = [row[0] for row in [*first, *second] if isinstance(row, tuple)]
    if isinstance(cpu, str):
        failed.append("cpu")
    if failed:
        print(f"failed rows: {', '.join(failed)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="repeats of every measurement (default 3)")
    parser.add_argument("--seconds", type=float, default=1.5, help="unthrottled driver round (s)")
    parser.add_argument("--raw-seconds", type=float, default=0.5, help="unthrottled baseline round (s)")
    parser.add_argument("--throttled-seconds", type=float, default=2.0, help="paced driver round (s)")
    parser.add_argument("--throttled-raw-seconds", type=float, default=1.0, help="paced baseline round (s)")
    parser.add_argument("--settle", type=float, default=5.0, help="gateway start-up before CPU windows (s)")
    parser.add_argument("--cpu-window", type=float, default=30.0, help="CPU measurement, in total (s)")
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=("unthrottled", "throttled", "cpu"),
        default=["unthrottled", "throttled", "cpu"],
    )
    args = parser.parse_args()

    started = time.perf_counter()
    print(
        f"# pumpgw driver bench: python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"{args.rounds} rounds per figure"
    )
    with tempfile.TemporaryDirectory(prefix="pumpgw-bench-drivers-") as tmp:
        workdir = Path(tmp)
        first, second = asyncio.run(run_drivers(workdir, args))
        if "unthrottled" in args.sections:
            print_unthrottled(first)
        if "throttled" in args.sections:
            print_throttled(second)
        cpu: CpuResult | str | None = None
        if "cpu" in args.sections:
            try:
                cpu = cpu_load(workdir, args)
            except ROW_ERRORS as exc:
                cpu = f"FAILED: {type(exc).__name__}: {exc}"
            print_cpu(cpu)
    print_summary(first, second, cpu)
    print(f"\n(bench took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
