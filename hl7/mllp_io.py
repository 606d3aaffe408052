"""MLLP over TCP (and TLS) with asyncio: a server that answers each message, and a client.

The framing itself lives in :mod:`pumpgw.hl7.mllp` (sans-I/O); this module only moves bytes and
keeps time. Both sides are used by the gateway (PIV order consumer: server; EPR sender: client) and
by the rig (emulated eMAR: client; emulated EPR: server).

Server
======

``MllpServer(handler, host=..., port=...)`` accepts connections and, for each frame received,
awaits ``handler(message, peer)``; a returned ``bytes`` is sent back framed, ``None`` sends nothing.
Frames on one connection are handled one at a time, in the order they arrived, and their replies
go out in that order (a sender may pipeline; MLLP senders normally wait for each ACK). Connections
are served concurrently.

The handler owns the HL7 answer: a message it cannot read gets a NAK (``AE``/``AR``/``CE``/``CR``)
that the handler builds and returns. An exception escaping the handler is treated as a bug: it is
reported, the connection is closed without a reply (the sender sees no ACK and will resend or
alarm), and the server carries on with every other connection and with new ones.

Limits, and what happens at each (every case is reported, see below; the server always stays up):

============================  ==================================================================
``max_message_bytes``          a larger frame is dropped and its connection closed: after a frame
                               that size the stream cannot be trusted to be MLLP at all
``read_timeout_s``             a frame started but not finished within this time: connection
                               closed (a sender that died mid-message must not hold a slot). Also
                               bounds the TLS handshake
``idle_timeout_s``             nothing received or sent for this long: connection closed (senders
                               reconnect when they next have something to say)
``max_connections``            a connection beyond this many open ones is closed at once
============================  ==================================================================

Tolerated (see :mod:`pumpgw.hl7.mllp` for the framing rules): garbage between frames is dropped
and reported, the connection stays open and the next frame is answered; END as 0x1c alone; CR/LF
between frames (silently). A peer that sends its messages and then shuts down its sending side
(half-close) still gets every reply before the server closes the connection; over TLS there is no
half-close (TLS closes both directions), so a TLS sender must wait for its replies.

Reported: each problem is passed to ``on_problem(peer, text)`` and logged (logger
``pumpgw.hl7.mllp_io``, fields ``peer``, ``problem`` and ``tls_subject`` in ``extra``). ``text``
starts with one of these kinds, then a colon and the details: ``garbage``, ``oversize``,
``truncated`` (the peer closed mid-frame), ``read timeout``, ``idle timeout``, ``handler error``,
``closed by the handler`` (it raised :class:`CloseConnection`),
``reply not sent`` (the connection broke, or the peer did not read its replies within
``read_timeout_s``), ``connection lost``, ``too many connections``, ``tls handshake``, ``internal
error`` (a bug in this module: the connection is closed, the server carries on).
``on_problem`` is called from the event loop and must not block; an exception from it is logged
and otherwise ignored.

TLS: pass a server ``ssl.SSLContext``. To require client certificates set ``verify_mode =
ssl.CERT_REQUIRED`` and load the CA; the client's certificate subject (``CN=...,O=...``, RFC 4514
order) is then in ``peer.tls_subject`` for the handler to authorise on. A failed handshake (a plain
MLLP client, an untrusted client certificate) is reported as ``tls handshake``.

Client
======

``MllpClient(host, port)`` keeps one connection. ``request(message)`` sends one framed message and
returns the next frame the peer sends (bytes before it that are not a frame are skipped);
``send(message)`` sends without waiting. Requests on one client run one at a time. The client
connects on the first request if ``connect()`` was not called, and reconnects before a request
when the server had closed the idle connection (nothing was sent, so this is safe). After any
failure the connection is closed, so a late reply can never be taken for the answer to the next
message; the caller decides whether to resend (HL7 senders resend with the same MSH-10, and
receivers de-duplicate on it). ``request`` returns the next frame, whatever it is: match its MSA-2
against the MSH-10 sent.

Every failure is an :class:`MllpError` whose ``peer`` is ``"host:port"`` and whose ``detail`` says
what to check: connection refused, name not resolved, no connection within the timeout, TLS
certificate not trusted or not for that host name, the server closing before it answered, no reply
within ``reply_timeout_s``, a reply over ``max_message_bytes``. No ``OSError``, ``ssl.SSLError``
or ``TimeoutError`` escapes. A message that cannot be framed (it contains 0x0b or 0x1c) is the
caller's error: :class:`Hl7Error`, raised before anything is sent.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl as ssl_module
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, cast

from pumpgw.gateway.errors import EnvironmentProblem, MllpError

from .mllp import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Frame,
    Garbage,
    MllpDecoder,
    MllpEvent,
    Oversize,
    Truncated,
    frame,
)

__all__ = ["Handler", "MllpClient", "MllpServer", "Peer", "ProblemCallback", "mllp_request"]

log = logging.getLogger(__name__)

_READ_CHUNK = 65_536
_CLOSE_WAIT_S = 2.0  # how long closing waits for the peer's side of a (TLS) shutdown before aborting
_TLS_RECORD_START = b"\x16\x03"  # a TLS handshake record: a TLS client talking to a plain port


@dataclass(frozen=True, slots=True)
class Peer:
    """The other end of a connection. ``tls_subject`` is its certificate's subject, if it sent one."""

    host: str
    port: int
    tls_subject: str | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


Handler = Callable[[bytes, Peer], Awaitable[bytes | None]]
ProblemCallback = Callable[[Peer, str], None]


def _peer_of(writer: asyncio.StreamWriter) -> Peer:
    address = writer.get_extra_info("peername")
    if isinstance(address, tuple) and len(address) >= 2:
        return Peer(str(address[0]), int(address[1]))
    return Peer(str(address), 0)


_RDN_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "domainComponent": "DC",
    "serialNumber": "serialNumber",
}


def _subject(writer: asyncio.StreamWriter) -> str | None:
    """The peer certificate's subject as an RFC 4514 string (last RDN first), if one was verified."""
    cert = writer.get_extra_info("peercert")
    if not cert:
        return None
    rdns: tuple[tuple[tuple[str, str], ...], ...] = cert.get("subject", ())
    parts = ["+".join(f"{_RDN_NAMES.get(k, k)}={v}" for k, v in rdn) for rdn in rdns]
    return ",".join(reversed(parts)) or None


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    """Close and wait (bounded) for the transport to go; never raises except CancelledError."""
    writer.close()
    try:
        async with asyncio.timeout(_CLOSE_WAIT_S):
            await writer.wait_closed()
    except (OSError, TimeoutError):  # ssl.SSLError is an OSError: a shutdown the peer botched
        writer.transport.abort()


def _tls_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl_module.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl_module.SSLError):
        # OpenSSL's reason code (WRONG_VERSION_NUMBER) in words: "wrong version number".
        return exc.reason.lower().replace("_", " ") if exc.reason else str(exc)
    if isinstance(exc, TimeoutError):
        return "handshake not finished in time"
    if isinstance(exc, ConnectionError | EOFError):
        return "connection closed during the handshake"
    return str(exc) or type(exc).__name__


# --- server ---------------------------------------------------------------------------------------


class _Connection:
    """One accepted connection: its task, and whether it is inside the handler right now."""

    def __init__(self, peer: Peer, writer: asyncio.StreamWriter) -> None:
        self.peer = peer
        self.writer = writer
        self.task: asyncio.Task[None] | None = None
        self.busy = False  # a frame is being handled / answered: close() lets it finish
        # Until a TLS handshake succeeds, the stream's protocol is not the transport's: wait_closed()
        # would never return, so such a connection is aborted, not closed.
        self.orderly_close = False


class CloseConnection(Exception):
    """Raised by a handler to close the connection without a reply, on purpose (a receiver that
    must look as if it went away: the rig's EPR in ``fail`` mode). Reported at INFO, no traceback."""


class _Close(Exception):
    """Internal: this connection is done (the reason was already reported)."""


class MllpServer:
    """Answers MLLP frames with ``handler``. Use ``async with`` or :meth:`start` / :meth:`close`."""

    def __init__(
        self,
        handler: Handler,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl: ssl_module.SSLContext | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        read_timeout_s: float = 30.0,
        idle_timeout_s: float = 300.0,
        max_connections: int = 64,
        on_problem: ProblemCallback | None = None,
    ) -> None:
        if max_message_bytes < 1 or max_connections < 1 or read_timeout_s <= 0 or idle_timeout_s <= 0:
            raise ValueError(
                "MllpServer limits must be positive: "
                f"max_message_bytes={max_message_bytes}, max_connections={max_connections}, "
                f"read_timeout_s={read_timeout_s}, idle_timeout_s={idle_timeout_s}"
            )
        self._handler = handler
        self.host = host
        self._port = port
        self._ssl = ssl
        self.max_message_bytes = max_message_bytes
        self.read_timeout_s = read_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self._on_problem = on_problem
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._closing = False
        self.accepted = 0  # connections accepted (not refused) since start
        self.frames = 0  # frames handed to the handler since start

    @property
    def port(self) -> int:
        """The bound TCP port after :meth:`start` (the requested one before).

        With port 0 and a host name that resolves to several addresses (``localhost``: 127.0.0.1
        and ::1), each address gets its own port and this is the first one's: listen on an address.
        """
        return self._port

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._connections)

    async def start(self) -> None:
        """Listen. Raises EnvironmentProblem if the address cannot be bound."""
        if self._server is not None:
            raise RuntimeError(f"MllpServer on {self.host}:{self._port} is already running")
        self._closing = False
        try:
            # A plain callable (not a coroutine function): asyncio then wraps nothing in a task of its
            # own, and this server owns, cancels and awaits every connection task itself.
            server = await asyncio.start_server(self._accept, self.host, self._port)
        except OSError as exc:
            raise EnvironmentProblem(
                f"cannot listen for MLLP on TCP {self.host}:{self._port} ({exc.strerror or exc})",
                "choose a free port, or port 0 to let the system pick one",
            ) from exc
        self._port = int(server.sockets[0].getsockname()[1])
        self._server = server
        log.info(
            "MLLP server listening", extra={"host": self.host, "port": self._port, "tls": bool(self._ssl)}
        )

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop accepting, close every connection, and wait for the handlers.

        A connection waiting for bytes is closed at once; one whose handler is running gets up to
        ``grace_s`` seconds to finish and send its reply, then its handler is cancelled.
        Idempotent; the port is free when it returns.
        """
        server, self._server = self._server, None
        self._closing = True
        if server is not None:
            server.close()
        tasks = {c.task for c in self._connections if c.task is not None}
        for connection in list(self._connections):
            if not connection.busy and connection.task is not None:
                connection.task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- connections ---

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer_of(writer)
        if self._closing:
            writer.close()
            return
        if len(self._connections) >= self.max_connections:
            writer.transport.abort()
            self._report(
                peer, "too many connections", f"{self.max_connections} are open; refused", logging.WARNING
            )
            return
        if self._ssl is not None:
            # Before any byte is read: the TLS ClientHello must reach the TLS layer, not our reader.
            cast(asyncio.Transport, writer.transport).pause_reading()
        connection = _Connection(peer, writer)
        connection.orderly_close = self._ssl is None
        self._connections.add(connection)
        self.accepted += 1
        connection.task = asyncio.get_running_loop().create_task(
            self._serve(connection, reader), name=f"mllp-connection-{peer}"
        )

    async def _serve(self, connection: _Connection, reader: asyncio.StreamReader) -> None:
        try:
            if self._ssl is not None:
                await self._handshake(connection)
            log.debug("MLLP connection open", extra=self._extra(connection.peer))
            await self._read_loop(connection, reader)
        except _Close:
            pass
        except Exception as exc:  # a bug of ours must cost one connection, never the server
            log.exception("MLLP internal error", extra=self._extra(connection.peer, "internal error"))
            self._notify(connection.peer, f"internal error: {type(exc).__name__}: {exc}; connection closed")
        finally:
            try:
                if connection.orderly_close:
                    await _close_writer(connection.writer)
                else:
                    connection.writer.transport.abort()
            finally:
                self._connections.discard(connection)  # only now: the slot is free once the socket is

    async def _handshake(self, connection: _Connection) -> None:
        assert self._ssl is not None
        try:
            await connection.writer.start_tls(self._ssl, ssl_handshake_timeout=self.read_timeout_s)
        except (OSError, TimeoutError, EOFError) as exc:
            self._report(connection.peer, "tls handshake", _tls_reason(exc), logging.WARNING)
            raise _Close from exc
        connection.orderly_close = True
        connection.peer = Peer(connection.peer.host, connection.peer.port, _subject(connection.writer))

    async def _read_loop(self, connection: _Connection, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        decoder = MllpDecoder(self.max_message_bytes)
        last_activity = loop.time()
        frame_started: float | None = None
        while not self._closing:
            idle_deadline = last_activity + self.idle_timeout_s
            deadline = idle_deadline
            if frame_started is not None:
                deadline = min(deadline, frame_started + self.read_timeout_s)
            try:
                async with asyncio.timeout_at(deadline):
                    data = await reader.read(_READ_CHUNK)
            except TimeoutError:
                self._timed_out(connection.peer, decoder, frame_started, loop.time(), idle_deadline)
                raise _Close from None
            except OSError as exc:  # reset by the peer, or a TLS error after the handshake
                for event in decoder.eof():
                    if not isinstance(event, Frame):
                        self._report_event(connection.peer, event)
                self._report(connection.peer, "connection lost", str(exc) or type(exc).__name__, logging.INFO)
                raise _Close from exc
            now = loop.time()
            last_activity = now
            if not data:
                await self._handle_events(connection, decoder.eof())
                return  # the peer half-closed: every reply is out; close our side
            events = decoder.feed(data)
            # A frame began in this chunk and is unfinished: its clock starts once the frames before
            # it are answered (the time our handler takes is not the sender's delay).
            new_frame = decoder.in_frame and (
                frame_started is None or any(isinstance(e, Frame | Garbage | Oversize) for e in events)
            )
            await self._handle_events(connection, events)
            last_activity = loop.time()
            if not decoder.in_frame:
                frame_started = None
            elif new_frame:
                frame_started = last_activity

    async def _handle_events(self, connection: _Connection, events: list[MllpEvent]) -> None:
        peer = connection.peer
        for event in events:
            if not isinstance(event, Frame):
                self._report_event(peer, event)
                if isinstance(event, Oversize):
                    raise _Close
                continue
            if self._closing:
                raise _Close
            connection.busy = True
            try:
                await self._answer(connection, event.message)
            finally:
                connection.busy = False

    async def _answer(self, connection: _Connection, message: bytes) -> None:
        peer = connection.peer
        self.frames += 1
        try:
            reply = await self._handler(message, peer)
            wire = None if reply is None else frame(reply)
        except CloseConnection as exc:
            self._report(peer, "closed by the handler", f"{exc}; no reply", logging.INFO)
            raise _Close from exc
        except Exception as exc:  # the handler's bug: report it, drop this connection, keep serving
            self._report(
                peer,
                "handler error",
                f"{type(exc).__name__}: {exc}; connection closed without a reply",
                logging.ERROR,
                exc_info=True,
            )
            raise _Close from exc
        if wire is None:
            return
        try:
            connection.writer.write(wire)
            async with asyncio.timeout(self.read_timeout_s):
                await connection.writer.drain()  # waits only while the peer is not reading
        except TimeoutError as exc:  # before OSError, of which it is a subclass
            self._report(
                peer,
                "reply not sent",
                f"the peer did not read its replies within {self.read_timeout_s:g} s; connection closed",
                logging.WARNING,
            )
            raise _Close from exc
        except OSError as exc:
            detail = str(exc) or type(exc).__name__
            self._report(peer, "reply not sent", f"the connection was lost: {detail}", logging.WARNING)
            raise _Close from exc

    # --- reports ---

    def _timed_out(
        self, peer: Peer, decoder: MllpDecoder, frame_started: float | None, now: float, idle_deadline: float
    ) -> None:
        partial = decoder.frame_bytes
        for event in decoder.eof():
            if isinstance(event, Garbage):
                self._report_event(peer, event)
        if frame_started is not None and now < idle_deadline:
            self._report(
                peer,
                "read timeout",
                f"a frame started {now - frame_started:.3g} s ago is not finished ({partial} bytes of it "
                f"received; limit {self.read_timeout_s:g} s); connection closed",
                logging.WARNING,
            )
        else:
            self._report(
                peer,
                "idle timeout",
                f"nothing received for {self.idle_timeout_s:g} s; connection closed",
                logging.INFO,
            )

    def _report_event(self, peer: Peer, event: MllpEvent) -> None:
        if isinstance(event, Garbage):
            hint = ""
            if event.data.startswith(_TLS_RECORD_START):
                hint = " (this looks like a TLS handshake: the client speaks TLS to a plain MLLP port)"
            self._report(
                peer,
                "garbage",
                f"{event.size} bytes dropped, {event.reason}: {event.data!r}{hint}",
                logging.WARNING,
            )
        elif isinstance(event, Oversize):
            self._report(
                peer,
                "oversize",
                f"a frame passed max_message_bytes={event.limit} ({event.size} bytes so far); "
                "connection closed",
                logging.WARNING,
            )
        elif isinstance(event, Truncated):
            self._report(
                peer,
                "truncated",
                f"the peer closed the connection inside a frame after {event.size} bytes: {event.data!r}",
                logging.WARNING,
            )

    @staticmethod
    def _extra(peer: Peer, problem: str | None = None) -> dict[str, Any]:
        extra: dict[str, Any] = {"peer": str(peer)}
        if peer.tls_subject is not None:
            extra["tls_subject"] = peer.tls_subject
        if problem is not None:
            extra["problem"] = problem
        return extra

    def _report(self, peer: Peer, kind: str, detail: str, level: int, *, exc_info: bool = False) -> None:
        log.log(
            level, "MLLP %s from %s: %s", kind, peer, detail, extra=self._extra(peer, kind), exc_info=exc_info
        )
        self._notify(peer, f"{kind}: {detail}")

    def _notify(self, peer: Peer, text: str) -> None:
        if self._on_problem is None:
            return
        try:
            self._on_problem(peer, text)
        except Exception:
            log.exception("the on_problem callback failed", extra=self._extra(peer))


# --- client ---------------------------------------------------------------------------------------


_VERIFY_HINTS = {
    # OpenSSL X509_V_ERR_* codes (openssl/x509_vfy.h) an integration engineer will meet first.
    10: "the server's certificate has expired",
    18: "the server sent a self-signed certificate: trust it, or give it one from your CA",
    19: "the server's chain ends in a CA this client does not trust: check the CA file",
    20: "the server's certificate is not signed by a CA this client trusts: check the CA file",
    62: "the certificate is not for this host name: connect by a name it lists, or set server_hostname",
    64: "the certificate is not for this IP address: connect by a name it lists, or set server_hostname",
}


class MllpClient:
    """One MLLP connection to ``host:port``. Use ``async with``, or :meth:`connect` / :meth:`close`."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
        connect_timeout_s: float = 10.0,
        reply_timeout_s: float = 30.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.host = host
        self.port = port
        self._ssl = ssl
        self._server_hostname = server_hostname
        self.connect_timeout_s = connect_timeout_s
        self.reply_timeout_s = reply_timeout_s
        self.max_message_bytes = max_message_bytes
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._decoder = MllpDecoder(max_message_bytes)
        self._lock = asyncio.Lock()

    @property
    def peer(self) -> str:
        """``host:port``, as MllpError names it."""
        return str(Peer(self.host, self.port))

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    def _error(self, detail: str) -> MllpError:
        return MllpError(self.peer, detail)

    async def connect(self) -> None:
        """Open the connection (and the TLS session) unless it is open. Raises MllpError."""
        if self.connected:
            return
        await self._drop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                reader, writer = await self._open()
        except TimeoutError as exc:
            hint = (
                " (is the server speaking TLS on this port?)"
                if self._ssl is not None
                else " (a host that is down, or a firewall that drops the packets, looks like this)"
            )
            raise self._error(f"no connection within {self.connect_timeout_s:g} s{hint}") from exc
        self._reader, self._writer = reader, writer
        self._decoder = MllpDecoder(self.max_message_bytes)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except socket.gaierror as exc:
            raise self._error(f"cannot resolve host name {self.host!r}: {exc.strerror}") from exc
        except ConnectionRefusedError as exc:
            raise self._error(
                "connection refused: nothing listens on that port (is the server running, is the port right?)"
            ) from exc
        except OSError as exc:
            raise self._error(f"cannot connect: {exc.strerror or exc}") from exc
        if self._ssl is None:
            return reader, writer
        try:
            await writer.start_tls(self._ssl, server_hostname=self._server_hostname or self.host)
        except ssl_module.SSLCertVerificationError as exc:
            writer.transport.abort()
            hint = _VERIFY_HINTS.get(exc.verify_code, "")
            raise self._error(
                f"TLS: certificate verify failed: {exc.verify_message}" + (f" ({hint})" if hint else "")
            ) from exc
        except (OSError, EOFError) as exc:
            writer.transport.abort()
            raise self._error(
                f"TLS handshake failed: {_tls_reason(exc)} (does the server speak TLS on this port, "
                "and does it require a client certificate?)"
            ) from exc
        except BaseException:  # a timeout or cancellation mid-handshake: leave no socket behind
            writer.transport.abort()
            raise
        return reader, writer

    async def request(self, message: bytes) -> bytes:
        """Send ``message`` framed and return the next frame the peer sends. Raises MllpError, and
        Hl7Error if ``message`` cannot be framed."""
        wire = frame(message)
        async with self._lock:
            await self._reconnect_if_closed()
            await self._write(wire)
            return await self._read_reply()

    async def send(self, message: bytes) -> None:
        """Send ``message`` framed and wait for nothing. Raises MllpError or Hl7Error.

        For peers that do not answer. A reply the peer sends anyway is not read here: a later
        :meth:`request` on this connection would return it as its own answer.
        """
        wire = frame(message)
        async with self._lock:
            await self._reconnect_if_closed()
            await self._write(wire)

    async def close(self) -> None:
        """Close the connection. Idempotent; never raises."""
        await self._drop()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _reconnect_if_closed(self) -> None:
        reader = self._reader
        if reader is not None and (reader.at_eof() or reader.exception() is not None):
            await self._drop()  # the server closed (or reset) the idle connection; nothing was sent on it
        await self.connect()

    async def _drop(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            await _close_writer(writer)

    async def _fail(self, detail: str) -> MllpError:
        """Close the connection (its state is unknown now) and build the error to raise."""
        await self._drop()
        return self._error(detail)

    async def _write(self, wire: bytes) -> None:
        assert self._writer is not None
        try:
            self._writer.write(wire)
            async with asyncio.timeout(self.reply_timeout_s):
                await self._writer.drain()  # waits only while the peer is not reading
        except TimeoutError as exc:  # before OSError, of which it is a subclass
            raise await self._fail(
                f"the peer did not take the message within {self.reply_timeout_s:g} s"
            ) from exc
        except OSError as exc:
            raise await self._fail(f"connection lost while sending: {exc.strerror or exc}") from exc

    async def _read_reply(self) -> bytes:
        assert self._reader is not None
        reader = self._reader
        received = 0
        try:
            async with asyncio.timeout(self.reply_timeout_s):
                while True:
                    data = await reader.read(_READ_CHUNK)
                    received += len(data)
                    events = self._decoder.feed(data) if data else self._decoder.eof()
                    reply = self._reply_in(events)
                    if isinstance(reply, Oversize):
                        raise await self._fail(
                            f"the reply is larger than max_message_bytes={reply.limit} "
                            f"({reply.size} bytes of it received)"
                        )
                    if reply is not None:
                        return reply
                    if not data:
                        raise await self._fail(self._closed_detail(events, received))
        except TimeoutError as exc:
            raise await self._fail(f"no reply within {self.reply_timeout_s:g} s") from exc
        except ssl_module.SSLError as exc:
            raise await self._fail(f"TLS: {_tls_reason(exc)} (the server ended the TLS session)") from exc
        except ConnectionResetError as exc:
            raise await self._fail(self._closed_detail([], received, reset=True)) from exc
        except OSError as exc:
            raise await self._fail(f"connection lost before the reply: {exc.strerror or exc}") from exc

    def _reply_in(self, events: list[MllpEvent]) -> bytes | Oversize | None:
        """The first frame in ``events`` (or the Oversize that stands in its place)."""
        for index, event in enumerate(events):
            if isinstance(event, Frame):
                if index + 1 < len(events):
                    log.warning(
                        "MLLP peer sent more than one reply; the extra frames are dropped",
                        extra={"peer": self.peer, "events": len(events) - index - 1},
                    )
                return event.message
            if isinstance(event, Oversize):
                return event
            if isinstance(event, Garbage):
                log.info(
                    "MLLP bytes before the reply skipped",
                    extra={"peer": self.peer, "size": event.size, "reason": event.reason},
                )
        return None

    def _closed_detail(self, events: list[MllpEvent], received: int, *, reset: bool = False) -> str:
        how = "reset" if reset else "closed"
        for event in events:
            if isinstance(event, Truncated):
                return (
                    f"connection {how} by the peer in the middle of its reply ({event.size} bytes of it "
                    "received)"
                )
        if received:
            return f"connection {how} by the peer before it answered ({received} bytes that were not a reply)"
        if self._ssl is not None:
            hint = (
                "a TLS server that does not accept this client's certificate (or its lack of one) "
                "closes like this; so does a server at its connection limit"
            )
        else:
            hint = "a server that expects TLS, or one at its connection limit, closes like this"
        return f"connection {how} by the peer before it answered ({hint})"


async def mllp_request(host: str, port: int, message: bytes, **kwargs: Any) -> bytes:
    """Connect, send ``message``, return the reply, close. ``kwargs`` go to :class:`MllpClient`."""
    async with MllpClient(host, port, **kwargs) as client:
        return await client.request(message)
