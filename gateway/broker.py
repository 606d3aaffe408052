"""A local mosquitto broker on a free loopback port, for the demo and the tests.

A real deployment points the gateway at the hospital's broker; this starts Debian's ``mosquitto``
as a child process with a throw-away configuration (loopback only, anonymous, no persistence),
waits until it accepts connections, and stops it again. The child is asked by the kernel to die
with its parent (``PR_SET_PDEATHSIG``), so even a killed gateway leaves no broker behind.

The tests of TLS and credentials (tests/test_mqtt_security.py) also give it a server certificate
(:class:`BrokerTls`, optionally requiring client certificates) and users with passwords (anonymous
clients are then refused).
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
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class BrokerTls:
    """TLS for the broker's listener (mosquitto.conf(5), "Certificate based SSL/TLS Support").

    ``ca_file`` holds the CAs that client certificates must chain to; ``require_certificate`` makes
    the broker refuse clients without a valid one (it then needs ``ca_file``).
    """

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    require_certificate: bool = False

    def __post_init__(self) -> None:
        if self.require_certificate and self.ca_file is None:
            raise ValueError("require_certificate needs ca_file (the CA that signs client certificates)")


def write_mosquitto_conf(
    workdir: Path,
    host: str,
    port: int,
    *,
    persistence: bool = False,
    tls: BrokerTls | None = None,
    password_file: Path | None = None,
) -> Path:
    """Write ``workdir/mosquitto.conf`` for a throw-away loopback broker; return its path.

    Anonymous clients are allowed unless ``password_file`` (mosquitto_passwd(1) format) is given.
    """
    stored = f"persistence true\npersistence_location {workdir}/\n" if persistence else "persistence false\n"
    # Started as root, mosquitto drops to the user "mosquitto", which cannot reach a private
    # work directory (pytest's and the demo's are 0700): this throw-away loopback broker stays
    # the user that started it.
    user = "user root\n" if os.geteuid() == 0 else ""
    # Settings after "listener" belong to that listener; the others are global (mosquitto 2.0
    # without per_listener_settings).
    listener = f"listener {port} {host}\n"
    if tls is not None:
        listener += f"certfile {tls.cert_file}\nkeyfile {tls.key_file}\n"
        if tls.ca_file is not None:
            listener += f"cafile {tls.ca_file}\n"
        listener += f"require_certificate {str(tls.require_certificate).lower()}\n"
    if password_file is None:
        auth = "allow_anonymous true\n"
    else:
        auth = f"allow_anonymous false\npassword_file {password_file}\n"
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"{listener}{auth}{stored}{user}log_dest stderr\nlog_type error\nlog_type warning\n")
    return conf


def find_mosquitto_passwd() -> str | None:
    """Path of mosquitto_passwd (Debian package mosquitto, in /usr/bin), or None."""
    return shutil.which("mosquitto_passwd") or shutil.which(
        "mosquitto_passwd", path="/usr/bin:/usr/sbin:/usr/local/bin"
    )


async def write_password_file(path: Path, users: Mapping[str, str]) -> None:
    """Write a mosquitto password file (salted hashes) for ``users`` with mosquitto_passwd(1).

    Raises EnvironmentProblem if mosquitto_passwd is missing or fails. The passwords are on its
    command line (``-b``): fine for a throw-away test broker, not for a real one.
    """
    binary = find_mosquitto_passwd()
    if binary is None:
        raise EnvironmentProblem(
            "mosquitto_passwd is not installed", "apt-get install mosquitto (scripts/bootstrap does it)"
        )
    for i, (username, password) in enumerate(users.items()):
        create = ["-c"] if i == 0 else []  # -c: a new file, replacing an old one
        proc = await asyncio.create_subprocess_exec(
            binary, "-b", *create, str(path), username, password,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise EnvironmentProblem(
                f"mosquitto_passwd failed for user {username!r} with code {proc.returncode}: "
                f"{out.decode(errors='replace').strip()}",
                f"check that {path.parent} is writable",
            )


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

    ``tls``: the listener speaks TLS only. ``users`` (name -> password): only they may connect
    (anonymous clients are refused).

    Raises EnvironmentProblem if mosquitto (or, with ``users``, mosquitto_passwd) is not installed,
    or mosquitto does not start within ``start_timeout_s``.
    """

    def __init__(
        self,
        workdir: Path,
        host: str = "127.0.0.1",
        *,
        port: int = 0,
        persistence: bool = False,
        tls: BrokerTls | None = None,
        users: Mapping[str, str] | None = None,
        start_timeout_s: float = 10.0,
    ) -> None:
        if users is not None and not users:
            raise ValueError("users: give at least one user, or None for anonymous access")
        self.workdir = workdir
        self.host = host
        self.port = port  # 0: a free port is picked at the first start and kept for restarts
        self._persistence = persistence
        self.tls = tls
        self._users = dict(users) if users is not None else None
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
        password_file: Path | None = None
        if self._users is not None:
            password_file = self.workdir / "passwd"
            await write_password_file(password_file, self._users)
        conf = write_mosquitto_conf(
            self.workdir,
            self.host,
            self.port,
            persistence=self._persistence,
            tls=self.tls,
            password_file=password_file,
        )
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
            if await self._answers():
                break
            if loop.time() > deadline:
                await self.stop()
                raise EnvironmentProblem(
                    f"mosquitto did not accept connections on {self.host}:{self.port} "
                    f"within {self._start_timeout_s:g} s",
                    f"check that loopback networking works, and {logfile}",
                )
            # Start-up poll: mosquitto gives no readiness signal we can wait on instead.
            await asyncio.sleep(0.02)
        log.info("mosquitto broker listening", extra={"host": self.host, "port": self.port})

    async def _answers(self) -> bool:
        """True once the listener answers: it accepts a TCP connection and, with TLS, a handshake.

        mosquitto listens before it loads the listener's certificate and key (src/net.c,
        ``net__socket_listen``) and exits if they do not load, so for a TLS listener an accepted
        TCP connection alone could come from a broker about to exit. The handshake checks only
        that the broker speaks TLS with its certificate: no verification, no client certificate.
        With ``require_certificate`` the broker logs one "peer did not return a certificate" for
        it; expected.
        """
        context: ssl.SSLContext | None = None
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # a readiness probe on loopback, not a trust decision
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.host, self.port, ssl=context, server_hostname="" if context else None
                ),
                2.0,
            )
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, TimeoutError):
            return False  # accepted, then closed or silent: not serving yet, or on its way out
        except ssl.SSLError:
            return True  # a TLS alert (a client certificate required, under TLS 1.2): it speaks TLS
        except OSError:
            return False  # not listening yet
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

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
