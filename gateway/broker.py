"""A local mosquitto broker on a free loopback port, for the demo and the tests.

A real deployment points the gateway at the hospital's broker; this starts Debian's ``mosquitto``
as a child process with a throw-away configuration (loopback only, anonymous, no persistence),
waits until it accepts connections, and stops it again. The child is asked by the kernel to die
with its parent (``PR_SET_PDEATHSIG``), so even a killed gateway leaves no broker behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
from pathlib import Path
from types import TracebackType
from typing import Any

from .errors import EnvironmentProblem

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_prctl: Any = None
with contextlib.suppress(OSError, AttributeError):  # not Linux: children are stopped by stop() only
    # Looked up once here: between fork and exec (preexec_fn) only a plain C call is safe.
    _prctl = ctypes.CDLL(None, use_errno=True).prctl


def die_with_parent() -> None:
    """``preexec_fn`` for child processes: SIGTERM the child when the parent dies (Linux only)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def write_mosquitto_conf(workdir: Path, host: str, port: int, *, persistence: bool = False) -> Path:
    """Write ``workdir/mosquitto.conf`` for a throw-away loopback broker; return its path."""
    stored = f"persistence true\npersistence_location {workdir}/\n" if persistence else "persistence false\n"
    # Started as root, mosquitto drops to the user "mosquitto", which cannot reach a private
    # work directory (pytest's and the demo's are 0700): this throw-away loopback broker stays
    # the user that started it.
    user = "user root\n" if os.geteuid() == 0 else ""
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} {host}\nallow_anonymous true\n{stored}{user}"
        "log_dest stderr\nlog_type error\nlog_type warning\n"
    )
    return conf


async def stop_child(proc: asyncio.subprocess.Process, what: str, grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; never waits forever. Idempotent."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.returncode is not None:
            return
        if sig is signal.SIGKILL:
            log.warning("child did not stop in time; killing it", extra={"child": what, "pid": proc.pid})
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), grace_s)
    if proc.returncode is None:
        log.error("child survived SIGKILL", extra={"child": what, "pid": proc.pid})


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary, or None. Debian installs it in /usr/sbin, often not on PATH."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it; the caller binds it soon after)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class MosquittoBroker:
    """``async with MosquittoBroker(workdir) as broker:`` -> ``broker.host``, ``broker.port``.

    Raises EnvironmentProblem if mosquitto is not installed or does not start within
    ``start_timeout_s``.
    """

    def __init__(
        self,
        workdir: Path,
        host: str = "127.0.0.1",
        *,
        port: int = 0,
        persistence: bool = False,
        start_timeout_s: float = 10.0,
    ) -> None:
        self.workdir = workdir
        self.host = host
        self.port = port  # 0: a free port is picked at the first start and kept for restarts
        self._persistence = persistence
        self._start_timeout_s = start_timeout_s
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise EnvironmentProblem(
                "mosquitto is not installed", "apt-get install mosquitto (scripts/bootstrap does it)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.port == 0:
            self.port = free_port(self.host)
        conf = write_mosquitto_conf(self.workdir, self.host, self.port, persistence=self._persistence)
        # stderr to a file, not a pipe: a pipe nobody reads would block the broker once full.
        logfile = self.workdir / "mosquitto.log"
        with logfile.open("ab") as err:
            self._proc = await asyncio.create_subprocess_exec(
                binary,
                "-c",
                str(conf),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=err,
                # Own session: a Ctrl-C at the terminal reaches only our process, which stops the
                # broker itself, in order (after the gateway has said goodbye over it).
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._start_timeout_s
        while True:
            if self._proc.returncode is not None:
                tail = logfile.read_text(errors="replace").strip().splitlines()[-3:]
                raise EnvironmentProblem(
                    f"mosquitto exited at start with code {self._proc.returncode}: {' / '.join(tail)}",
                    f"check {conf} and {logfile}",
                )
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                if loop.time() > deadline:
                    await self.stop()
                    raise EnvironmentProblem(
                        f"mosquitto did not accept connections on {self.host}:{self.port} "
                        f"within {self._start_timeout_s:g} s",
                        f"check that loopback networking works, and {logfile}",
                    ) from None
                # Start-up poll: mosquitto gives no readiness signal we can wait on instead.
                await asyncio.sleep(0.02)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            break
        log.info("mosquitto broker listening", extra={"host": self.host, "port": self.port})

    async def wait(self) -> int:
        """Wait until the broker process ends; its exit code."""
        if self._proc is None:
            raise EnvironmentProblem("mosquitto is not running", "start() it first")
        return await self._proc.wait()

    async def stop(self) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after 5 s). Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        await stop_child(proc, "mosquitto")

    async def __aenter__(self) -> MosquittoBroker:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.shield(self.stop())
