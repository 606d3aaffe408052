"""Benchmarks of the gateway process: start-up to first poll of every pump, and peak memory.

Run from the repository root after scripts/bootstrap:   .venv/bin/python bench/run.py [--runs N]

Each figure is printed as one line: name, value, unit, and where there is one the baseline
measured in the same run and the ratio to it, then the target. Baselines:

- start-up: a bare interpreter (``python -c "print('ready')"``) from spawn to its first line, so
  the ratio says what the gateway costs on top of Python itself on this machine;
- memory: the same bare interpreter's peak RSS (VmHWM).

The gateway runs as a real deployment would (``pumpgw run --config``) against the bench rig in a
separate process, with MQTT to a local mosquitto when one is installed, so the rig's emulated pumps
are not counted in the gateway's memory. These are measurements, not tests: shared machines are
noisy, so nothing here fails on a number; look at the median and the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pumpgw.gateway.broker import find_mosquitto, free_port, write_mosquitto_conf

BIN = Path(sys.executable).parent
PUMPGW = str(BIN / "pumpgw")
START_TARGET_S = 1.5
RSS_TARGET_MIB = 60.0


@dataclass
class Run:
    first_poll_s: float
    peak_rss_mib: float


def vm_hwm_mib(pid: int) -> float:
    """Peak resident set size of a live process, from /proc (kB -> MiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def baseline() -> Run:
    """A bare interpreter: time to its first line, and its peak RSS while it waits."""
    t0 = time.perf_counter()
    with subprocess.Popen(
        [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        assert proc.stdout is not None
        assert proc.stdin is not None
        proc.stdout.readline()
        elapsed = time.perf_counter() - t0
        rss = vm_hwm_mib(proc.pid)
        proc.stdin.close()
        proc.wait(10)
    return Run(elapsed, rss)


def start_rig(workdir: Path) -> tuple[subprocess.Popen[str], list[dict[str, object]]]:
    rig = subprocess.Popen(
        [PUMPGW, "rig", "up", "--json", "--dir", str(workdir / "rig")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=workdir,
    )
    assert rig.stdout is not None
    pumps: list[dict[str, object]] = json.loads(rig.stdout.readline())["pumps"]
    return rig, pumps


def start_broker(workdir: Path) -> tuple[subprocess.Popen[bytes] | None, int]:
    """mosquitto on a free loopback port, configured as the demo's is; (None, 0) if not installed."""
    binary = find_mosquitto()
    if binary is None:
        return None, 0
    port = free_port()
    conf = write_mosquitto_conf(workdir, "127.0.0.1", port)
    broker = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            break
        except OSError:
            time.sleep(0.02)  # start-up poll: mosquitto has no readiness signal
    return broker, port


def toml_value(value: object) -> str:
    return json.dumps(value)  # JSON strings and numbers are valid TOML values


def write_config(workdir: Path, pumps: list[dict[str, object]], mqtt_port: int) -> Path:
    lines = ["[gateway]", 'id = "bench"', f"state_dir = {toml_value(str(workdir / 'state'))}", ""]
    lines += ["[mqtt]", f"enabled = {'true' if mqtt_port else 'false'}", 'host = "127.0.0.1"']
    lines += [f"port = {mqtt_port or 1883}", ""]
    for pump in pumps:
        lines.append("[[pumps]]")
        lines += [f"{key} = {toml_value(value)}" for key, value in pump.items()]
        lines.append("")
    path = workdir / "bench.toml"
    path.write_text("\n".join(lines))
    return path


def gateway_run(config: Path, settle_s: float) -> Run:
    """Spawn ``pumpgw run``; time to 'all pumps polled'; peak RSS after ``settle_s`` of polling."""
    t0 = time.perf_counter()
    with subprocess.Popen(
        [PUMPGW, "--log-format", "json", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        assert proc.stderr is not None
        first_poll = None
        for line in proc.stderr:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("message") == "all pumps polled":
                first_poll = time.perf_counter() - t0
                break
        if first_poll is None:
            raise RuntimeError(f"the gateway exited with {proc.wait()} before polling every pump")
        time.sleep(settle_s)  # steady state: several polls, MQTT deliveries, status refreshes
        rss = vm_hwm_mib(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.stderr.read()
        proc.wait(30)
    return Run(first_poll, rss)


def line(name: str, values: list[float], unit: str, base: list[float], target: str) -> str:
    med, base_med = statistics.median(values), statistics.median(base)
    return (
        f"{name:<28} {med:8.3f} {unit:<4} (min {min(values):.3f}, max {max(values):.3f}, n={len(values)})"
        f"  baseline {base_med:.3f} {unit}  ratio {med / base_med:.2f}  target {target}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="gateway start-ups to measure (default 5)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds of polling before reading RSS")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pumpgw-bench-") as tmp:
        workdir = Path(tmp)
        rig, pumps = start_rig(workdir)
        broker, mqtt_port = start_broker(workdir)
        try:
            config = write_config(workdir, pumps, mqtt_port)
            bases = [baseline() for _ in range(args.runs)]
            runs = [gateway_run(config, args.settle) for _ in range(args.runs)]
        finally:
            for proc in (rig, broker):
                if proc is not None:
                    proc.terminate()
                    proc.wait(10)
    drivers = ", ".join(str(p["driver"]) for p in pumps)
    print(f"# pumpgw bench: {len(pumps)} pumps ({drivers}), MQTT {'on' if mqtt_port else 'off'}, "
          f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")  # fmt: skip
    print(line("start_to_first_poll_all", [r.first_poll_s for r in runs], "s",
               [b.first_poll_s for b in bases], f"<= {START_TARGET_S} s"))  # fmt: skip
    print(line("gateway_peak_rss", [r.peak_rss_mib for r in runs], "MiB",
               [b.peak_rss_mib for b in bases], f"<= {RSS_TARGET_MIB:g} MiB"))  # fmt: skip


if __name__ == "__main__":
    main()
