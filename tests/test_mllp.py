"""MLLP framing (hl7/mllp.py) and the asyncio server and client over it (hl7/mllp_io.py).

Golden bytes: the MLLP block characters of HL7 v2.x Appendix C (start block 0x0b, end block 0x1c
0x0d), wrapped around the IHE PCD TF-2 Rev 9 E.2.3 ACK^O15 copied in
``shared/reference/hl7-examples/05_pcd03_ack_o15_ihe_tf2_rev9_E2-3_ex1_accept_CA.hl7``.

The decoder is then checked with hypothesis: any messages in any chunking come out identical;
arbitrary bytes never raise and never hold more than the limit plus 64 bytes; garbage between
frames never costs a frame after it.

The server and client run over real TCP on 127.0.0.1 (OS-assigned ports) and real TLS (a PKI made
by tests/tls_certs.py). Raw peers (``asyncio.open_connection``) play the misbehaving sender. Waits
are on events (problem reports, EOF), each bounded so a failure says what was missing.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tls_certs import Pki, make_pki

from pumpgw.gateway.errors import Hl7Error, MllpError
from pumpgw.hl7.mllp import END, START, Frame, Garbage, MllpDecoder, MllpEvent, Oversize, Truncated, frame
from pumpgw.hl7.mllp_io import CloseConnection, MllpClient, MllpServer, Peer, mllp_request

WAIT_S = 5.0

# shared/reference/hl7-examples/05_pcd03_ack_o15_ihe_tf2_rev9_E2-3_ex1_accept_CA.hl7, byte for byte.
ACK_O15 = (
    b"MSH|^~\\&|IOCVENDOR^6543210000000001^EUI-64|IOCVENDOR|IOPVENDOR^1234560000000001^EUI-64|IOPVENDOR|"
    b"20080101123456-0600||ACK^O15^ACK|1|P|2.5||||||ASCII|EN^English^ISO659||IHE_PCD_PIV_001\r"
    b"MSA|CA|1\r"
)


# --- decoder helpers --------------------------------------------------------------------------------


def chunks(stream: bytes, cuts: list[int]) -> list[bytes]:
    """``stream`` split at the positions ``cuts`` (taken modulo its length, in any order)."""
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    return [stream[a:b] for a, b in itertools.pairwise(points)]


def decode(stream: bytes | list[bytes], limit: int = 1_048_576) -> list[MllpEvent]:
    decoder = MllpDecoder(limit)
    events: list[MllpEvent] = []
    for chunk in [stream] if isinstance(stream, bytes) else stream:
        events += decoder.feed(chunk)
        assert decoder.buffered <= limit + 64
    return events + decoder.eof()


def frames(events: list[MllpEvent]) -> list[bytes]:
    return [e.message for e in events if isinstance(e, Frame)]


# --- framing: golden bytes and the rules ------------------------------------------------------------


def test_frame_wraps_the_message_in_the_appendix_c_block_characters() -> None:
    """HL7 v2 Appendix C: <SB>=0x0b, <EB>=0x1c, <CR>=0x0d; message is the ACK^O15 of file 05."""
    assert START == b"\x0b"
    assert END == b"\x1c\r"
    assert frame(ACK_O15) == b"\x0b" + ACK_O15 + b"\x1c\x0d"


def test_a_frame_split_at_every_byte_boundary_decodes_to_the_message() -> None:
    """The ACK^O15 of file 05, framed, cut once at every position, and fed one byte at a time."""
    wire = frame(ACK_O15)
    for cut in range(len(wire) + 1):
        assert decode([wire[:cut], wire[cut:]]) == [Frame(ACK_O15)], cut
    assert decode([bytes([b]) for b in wire * 2]) == [Frame(ACK_O15), Frame(ACK_O15)]


def test_many_frames_in_one_feed_come_out_in_order() -> None:
    messages = [f"MSH|^~\\&|{i}\r".encode() for i in range(100)]
    assert decode(b"".join(frame(m) for m in messages)) == [Frame(m) for m in messages]


def test_the_framer_leaves_content_alone() -> None:
    """\\n and \\r\\n segment separators, NUL, UTF-8: the parser's business, passed through as is."""
    message = "MSH|^~\\&|A\nPID|||Zoë\r\nOBX|\x00|\r".encode()
    assert decode(frame(message)) == [Frame(message)]


@pytest.mark.parametrize(("byte", "what"), [(b"\x0b", "start block 0x0b"), (b"\x1c", "0x1c")])
def test_frame_refuses_a_message_holding_a_block_character(byte: bytes, what: str) -> None:
    with pytest.raises(Hl7Error, match=f"{what} at byte 4"):
        frame(b"MSH|" + byte + b"|")


def test_end_as_0x1c_alone_is_tolerated_even_at_the_end_of_the_stream() -> None:
    """Decision: a frame ends at its 0x1c; the 0x0d after it is consumed if it comes."""
    decoder = MllpDecoder()
    assert decoder.feed(b"\x0bA\x1c\x0bB\x1c") == [Frame(b"A"), Frame(b"B")]
    assert not decoder.in_frame
    assert decoder.eof() == []


def test_the_0x0d_of_end_may_arrive_in_the_next_chunk() -> None:
    decoder = MllpDecoder()
    assert decoder.feed(b"\x0bA\x1c") == [Frame(b"A")]
    assert decoder.feed(b"\r") == []
    assert decoder.feed(b"\x0bB\x1c\r") == [Frame(b"B")]
    assert decoder.eof() == []


def test_a_byte_other_than_0x0d_after_0x1c_is_garbage_after_the_frame() -> None:
    assert decode(b"\x0bA\x1cX\x0bB\x1c\r") == [
        Frame(b"A"),
        Garbage(b"X", "bytes outside a frame (an MLLP frame starts with 0x0b)", 1),
        Frame(b"B"),
    ]


def test_line_ends_between_frames_are_dropped_without_a_report() -> None:
    """Decision: CR/LF-only runs between frames (0x1c 0x0d 0x0a senders) are not worth a report."""
    assert decode(b"\r\n\x0bA\x1c\r\n\x0bB\x1c\r\r\n\n") == [Frame(b"A"), Frame(b"B")]


def test_garbage_between_frames_is_reported_once_per_run_with_its_size() -> None:
    events = decode([b"\x0bA\x1c\rhello ", b"world\r\n", b"\x0bB\x1c\r"])
    assert events == [
        Frame(b"A"),
        Garbage(b"hello world\r\n", "bytes outside a frame (an MLLP frame starts with 0x0b)", 13),
        Frame(b"B"),
    ]


def test_a_stray_end_between_frames_is_garbage() -> None:
    events = decode(b"\x0bA\x1c\r\x1c\r\x0bB\x1c\r")
    assert frames(events) == [b"A", b"B"]
    assert [e.size for e in events if isinstance(e, Garbage)] == [2]


def test_a_new_start_inside_a_frame_abandons_the_partial_frame() -> None:
    events = decode(b"\x0bMSH|half\x0bMSH|whole\x1c\r")
    assert events == [
        Garbage(
            b"MSH|half", "frame abandoned: a new start block 0x0b arrived before its end block 0x1c 0x0d", 8
        ),
        Frame(b"MSH|whole"),
    ]


def test_garbage_kept_for_the_report_is_bounded() -> None:
    decoder = MllpDecoder()
    for _ in range(100):
        assert decoder.feed(b"x" * 1000) == []
        assert decoder.buffered == 64
    [garbage, good] = decoder.feed(b"\x0bA\x1c\r")
    assert garbage == Garbage(b"x" * 64, "bytes outside a frame (an MLLP frame starts with 0x0b)", 100_000)
    assert good == Frame(b"A")


def test_garbage_that_never_ends_is_reported_every_limit_bytes() -> None:
    decoder = MllpDecoder(100)
    events: list[MllpEvent] = []
    for _ in range(25):
        events += decoder.feed(b"0123456789")
    events += decoder.eof()
    assert [e.size for e in events if isinstance(e, Garbage)] == [100, 100, 50]


def test_an_oversize_frame_is_reported_dropped_and_the_next_frame_decoded() -> None:
    decoder = MllpDecoder(10)
    assert decoder.feed(b"\x0b" + b"a" * 10) == []  # exactly the limit: still fine
    assert decoder.feed(b"a") == [Oversize(11, 10)]
    for _ in range(100):
        assert decoder.feed(b"b" * 1000) == []  # dropped as it comes: memory stays bounded
        assert decoder.buffered == 0
        assert decoder.in_frame
    assert decoder.frame_bytes == 100_011
    assert decoder.feed(b"\x1c\r\x0bnext\x1c\r") == [Frame(b"next")]
    assert decoder.eof() == []


def test_an_oversize_frame_cut_short_by_a_new_start_resynchronises() -> None:
    assert decode(b"\x0b" + b"a" * 50 + b"\x0bgood\x1c\r", limit=10) == [Oversize(50, 10), Frame(b"good")]


def test_a_frame_of_exactly_the_limit_is_accepted() -> None:
    assert decode(frame(b"m" * 10), limit=10) == [Frame(b"m" * 10)]
    assert decode(frame(b"m" * 11), limit=10) == [Oversize(11, 10)]


def test_eof_inside_a_frame_reports_it_truncated_and_the_decoder_starts_afresh() -> None:
    decoder = MllpDecoder()
    assert decoder.feed(b"\x0bMSH|half") == []
    assert decoder.in_frame
    assert decoder.frame_bytes == 8
    assert decoder.eof() == [Truncated(8, b"MSH|half")]
    assert decoder.feed(b"\x0bnext\x1c\r") == [Frame(b"next")]


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        MllpDecoder(0)


# --- properties -----------------------------------------------------------------------------------

message_bytes = st.binary(max_size=300).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b""))
hl7_like = st.lists(
    st.sampled_from([b"MSH|^~\\&|", b"PID|||", b"\r", b"\n", b"^", b"|", b"\x00", b"\xff", b"OBX|1|NM|"]),
    max_size=40,
).map(b"".join)
messages_strategy = st.lists(message_bytes | hl7_like, max_size=12)
cuts_strategy = st.lists(st.integers(0, 5000), max_size=30)
noise = st.binary(max_size=600) | st.lists(
    st.sampled_from([b"\x0b", b"\x1c", b"\r", b"\n", b"\x1c\r", b"MSH|", b"x" * 40, b"\x00"]), max_size=60
).map(b"".join)


@given(messages_strategy, cuts_strategy)
def test_any_messages_in_any_chunking_come_out_identical(messages: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(frame(m) for m in messages)
    assert decode(chunks(wire, cuts)) == [Frame(m) for m in messages]


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(noise, cuts_strategy, st.integers(1, 64))
def test_arbitrary_bytes_never_raise_and_memory_stays_bounded(
    data: bytes, cuts: list[int], limit: int
) -> None:
    events = decode(chunks(data, cuts), limit)  # decode() asserts buffered <= limit + 64 after every chunk
    for event in events:
        if isinstance(event, Frame):
            assert len(event.message) <= limit
            assert b"\x0b" not in event.message
            assert b"\x1c" not in event.message
        elif isinstance(event, Garbage):
            assert len(event.data) <= 64
            assert event.size >= len(event.data)
        elif isinstance(event, Oversize):
            assert event.size > limit


@given(messages_strategy, st.lists(noise, min_size=13, max_size=13), cuts_strategy)
def test_garbage_between_frames_never_loses_a_frame_after_it(
    messages: list[bytes], garbage: list[bytes], cuts: list[int]
) -> None:
    wire = b"".join(g + frame(m) for g, m in zip(garbage, messages, strict=False)) + garbage[-1]
    limit = max((len(m) for m in messages), default=1) or 1
    decoded = iter(frames(decode(chunks(wire, cuts), limit)))
    # Garbage may itself hold frames (it contains 0x0b ... 0x1c): every real message still comes out,
    # in order, among them.
    assert all(any(m == d for d in decoded) for m in messages)


@given(
    messages_strategy,
    st.lists(
        st.binary(min_size=1, max_size=200).filter(lambda g: b"\x0b" not in g), min_size=13, max_size=13
    ),
    cuts_strategy,
)
def test_garbage_without_a_start_block_is_all_counted_and_costs_nothing(
    messages: list[bytes], garbage: list[bytes], cuts: list[int]
) -> None:
    garbage = [b"!" + g for g in garbage]  # not a run of line ends, and not the 0x0d of the END before
    wire = b"".join(g + frame(m) for g, m in zip(garbage, messages, strict=False))
    events = decode(chunks(wire, cuts))
    assert frames(events) == messages
    dropped = sum(len(g) for g in garbage[: len(messages)])
    assert sum(e.size for e in events if isinstance(e, Garbage)) == dropped


# --- server and client helpers --------------------------------------------------------------------


class Problems:
    """The ``on_problem`` callback of a server under test: records reports, wakes waiters."""

    def __init__(self) -> None:
        self.seen: list[tuple[Peer, str]] = []
        self._changed = asyncio.Event()

    def __call__(self, peer: Peer, text: str) -> None:
        self.seen.append((peer, text))
        self._changed.set()

    def kinds(self) -> list[str]:
        return [text.split(":", 1)[0] for _, text in self.seen]

    async def wait_for(self, kind: str) -> str:
        """The first report of ``kind`` (waiting for it, bounded)."""
        try:
            async with asyncio.timeout(WAIT_S):
                while True:
                    for _, text in self.seen:
                        if text.startswith(kind + ":"):
                            return text
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"no {kind!r} problem reported; reported: {self.seen}") from None


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (bounded). Only for a state change no event signals: the server noticing
    that a TCP connection closed, or the client noticing the server's FIN."""
    async with asyncio.timeout(WAIT_S):
        while not condition():  # noqa: ASYNC110 - nothing to wait on (see above)
            await asyncio.sleep(0.005)


async def echo(message: bytes, peer: Peer) -> bytes:
    return b"ACK|" + message


@asynccontextmanager
async def raw_peer(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A plain TCP connection that can send anything, for playing a misbehaving sender."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with suppress(OSError):
            await writer.wait_closed()


async def read_frames(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    decoder = MllpDecoder()
    found: list[bytes] = []
    async with asyncio.timeout(WAIT_S):
        while len(found) < count:
            data = await reader.read(65536)
            assert data, f"connection closed after {found}"
            found += frames(decoder.feed(data))
    return found


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server closes the connection (a reset counts as closed)."""
    received = b""
    async with asyncio.timeout(WAIT_S):
        try:
            while data := await reader.read(65536):
                received += data
        except ConnectionResetError:
            pass
    return received


# --- server: round trips --------------------------------------------------------------------------


async def test_echo_round_trip_and_the_peer_the_handler_sees() -> None:
    peers: list[Peer] = []

    async def handler(message: bytes, peer: Peer) -> bytes:
        peers.append(peer)
        return b"ACK|" + message

    async with MllpServer(handler) as srv:
        assert srv.port > 0
        async with MllpClient("127.0.0.1", srv.port) as client:
            assert await client.request(ACK_O15) == b"ACK|" + ACK_O15
            assert await client.request(b"second") == b"ACK|second"
        assert await mllp_request("127.0.0.1", srv.port, b"third") == b"ACK|third"
    assert [p.host for p in peers] == ["127.0.0.1"] * 3
    assert peers[0].port == peers[1].port != peers[2].port
    assert peers[0].tls_subject is None
    assert str(peers[0]) == f"127.0.0.1:{peers[0].port}"


async def test_a_handler_returning_none_sends_nothing_and_the_connection_goes_on() -> None:
    async def handler(message: bytes, peer: Peer) -> bytes | None:
        return None if message == b"quiet" else b"ACK|" + message

    async with MllpServer(handler) as srv, MllpClient("127.0.0.1", srv.port) as client:
        await client.send(b"quiet")
        assert await client.request(b"loud") == b"ACK|loud"  # the next frame is the answer to this one


async def test_fifty_clients_twenty_messages_each_get_their_own_replies_in_order() -> None:
    async def handler(message: bytes, peer: Peer) -> bytes:
        await asyncio.sleep(0)  # let the connections interleave
        return b"ACK|" + message

    async def one_client(port: int, number: int) -> list[bytes]:
        async with MllpClient("127.0.0.1", port) as client:
            return [await client.request(f"c{number}-m{j}".encode()) for j in range(20)]

    async with MllpServer(handler, max_connections=64) as srv:
        results = await asyncio.gather(*(one_client(srv.port, i) for i in range(50)))
        assert srv.accepted == 50
        assert srv.frames == 1000
    for number, replies in enumerate(results):
        assert replies == [f"ACK|c{number}-m{j}".encode() for j in range(20)]


async def test_pipelined_frames_are_answered_one_at_a_time_in_order() -> None:
    running = 0
    most = 0

    async def handler(message: bytes, peer: Peer) -> bytes:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0)
        running -= 1
        return b"ACK|" + message

    async with MllpServer(handler) as srv, raw_peer(srv.port) as (reader, writer):
        writer.write(b"".join(frame(f"m{i}".encode()) for i in range(10)))
        assert await read_frames(reader, 10) == [f"ACK|m{i}".encode() for i in range(10)]
    assert most == 1


# --- server: bad input ----------------------------------------------------------------------------


async def test_garbage_between_frames_is_reported_and_the_next_frame_answered() -> None:
    problems = Problems()
    async with MllpServer(echo, on_problem=problems) as srv, raw_peer(srv.port) as (reader, writer):
        writer.write(b"hello there\r\n" + frame(b"one"))
        assert await read_frames(reader, 1) == [b"ACK|one"]
        report = await problems.wait_for("garbage")
        assert "13 bytes dropped" in report
        assert "b'hello there\\r\\n'" in report
        writer.write(frame(b"two"))  # the connection was kept
        assert await read_frames(reader, 1) == [b"ACK|two"]
    assert problems.seen[0][0].host == "127.0.0.1"


async def test_an_oversize_frame_closes_its_connection_and_the_server_serves_others() -> None:
    problems = Problems()
    async with MllpServer(echo, max_message_bytes=100, on_problem=problems) as srv:
        async with raw_peer(srv.port) as (reader, writer):
            writer.write(frame(b"fine"))
            assert await read_frames(reader, 1) == [b"ACK|fine"]
            writer.write(START + b"x" * 500)
            assert await read_to_eof(reader) == b""
        report = await problems.wait_for("oversize")
        assert "max_message_bytes=100" in report
        assert await mllp_request("127.0.0.1", srv.port, b"next") == b"ACK|next"


async def test_a_frame_not_finished_in_read_timeout_closes_the_connection() -> None:
    problems = Problems()
    async with (
        MllpServer(echo, read_timeout_s=0.05, idle_timeout_s=30, on_problem=problems) as srv,
        raw_peer(srv.port) as (reader, writer),
    ):
        writer.write(START + b"MSH|partial")
        assert await read_to_eof(reader) == b""
        report = await problems.wait_for("read timeout")
        assert "11 bytes of it received" in report
    assert "idle timeout" not in problems.kinds()


async def test_a_silent_connection_is_closed_after_the_idle_timeout() -> None:
    problems = Problems()
    async with MllpServer(echo, read_timeout_s=30, idle_timeout_s=0.05, on_problem=problems) as srv:
        async with raw_peer(srv.port) as (reader, writer):
            writer.write(frame(b"one"))
            assert await read_frames(reader, 1) == [b"ACK|one"]
            assert await read_to_eof(reader) == b""
        assert "nothing received for 0.05 s" in await problems.wait_for("idle timeout")
        assert "read timeout" not in problems.kinds()


async def test_a_peer_that_half_closes_still_gets_every_reply() -> None:
    async with MllpServer(echo) as srv, raw_peer(srv.port) as (reader, writer):
        writer.write(b"".join(frame(f"m{i}".encode()) for i in range(3)))
        writer.write_eof()
        received = await read_to_eof(reader)
    assert frames(decode(received)) == [b"ACK|m0", b"ACK|m1", b"ACK|m2"]


async def test_a_peer_that_drops_mid_frame_is_reported_truncated() -> None:
    problems = Problems()
    async with MllpServer(echo, on_problem=problems) as srv:
        async with raw_peer(srv.port) as (_, writer):
            writer.write(frame(b"whole") + START + b"MSH|half")
            await writer.drain()
        report = await problems.wait_for("truncated")
        assert "after 8 bytes" in report
        assert "b'MSH|half'" in report
        assert srv.frames == 1


async def test_a_tls_client_on_a_plain_port_is_named_in_the_report(pki: Pki) -> None:
    problems = Problems()
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    async with MllpServer(echo, on_problem=problems) as srv:
        with pytest.raises(MllpError, match="is the server speaking TLS on this port"):
            await mllp_request("127.0.0.1", srv.port, b"x", ssl=context, connect_timeout_s=0.2)
        report = await problems.wait_for("garbage")
        assert "the client speaks TLS to a plain MLLP port" in report


async def test_a_peer_that_never_reads_its_replies_is_closed() -> None:
    """Replies pile up in the socket buffers; once they are full the server waits read_timeout_s."""
    problems = Problems()

    async def handler(message: bytes, peer: Peer) -> bytes:
        return b"x" * 1_000_000

    async with (
        MllpServer(handler, read_timeout_s=0.2, on_problem=problems) as srv,
        raw_peer(srv.port) as (_, writer),
    ):
        writer.write(b"".join(frame(b"m") for _ in range(40)))
        report = await problems.wait_for("reply not sent")
        assert "did not read its replies within 0.2 s" in report
        assert srv.frames < 40


# --- server: the handler's failures ---------------------------------------------------------------


async def test_a_handler_that_raises_costs_its_connection_not_the_server() -> None:
    problems = Problems()

    async def handler(message: bytes, peer: Peer) -> bytes:
        if message == b"boom":
            raise RuntimeError("handler bug")
        return b"ACK|" + message

    async with MllpServer(handler, on_problem=problems) as srv:
        async with MllpClient("127.0.0.1", srv.port) as client:
            assert await client.request(b"fine") == b"ACK|fine"
            with pytest.raises(MllpError, match="connection closed by the peer before it answered") as caught:
                await client.request(b"boom")
            assert caught.value.peer == f"127.0.0.1:{srv.port}"
            assert await client.request(b"again") == b"ACK|again"  # reconnects
        report = await problems.wait_for("handler error")
        assert "RuntimeError: handler bug" in report
        assert srv.accepted == 2


async def test_a_handler_may_close_the_connection_on_purpose_without_a_bug_report(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """CloseConnection: the receiver looks gone (the rig's EPR in fail mode), reported at INFO."""
    problems = Problems()

    async def handler(message: bytes, peer: Peer) -> bytes:
        if message == b"drop":
            raise CloseConnection("told to drop it")
        return b"ACK|" + message

    async with MllpServer(handler, on_problem=problems) as srv:
        async with MllpClient("127.0.0.1", srv.port) as client:
            with pytest.raises(MllpError, match="before it answered"):
                await client.request(b"drop")
            assert await client.request(b"next") == b"ACK|next"
        report = await problems.wait_for("closed by the handler")
        assert "told to drop it" in report
    assert not [r for r in caplog.records if r.exc_info], "a deliberate close is not a bug: no traceback"
    assert not [r for r in caplog.records if "handler error" in r.getMessage()]


async def test_a_reply_that_cannot_be_framed_is_a_handler_error() -> None:
    problems = Problems()

    async def handler(message: bytes, peer: Peer) -> bytes:
        return b"MSA|AA|\x0b"

    async with MllpServer(handler, on_problem=problems) as srv:
        with pytest.raises(MllpError, match="before it answered"):
            await mllp_request("127.0.0.1", srv.port, b"x")
        assert "Hl7Error" in await problems.wait_for("handler error")


async def test_an_on_problem_callback_that_raises_does_not_stop_the_server() -> None:
    calls = 0

    def on_problem(peer: Peer, text: str) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("callback bug")

    async with MllpServer(echo, on_problem=on_problem) as srv, raw_peer(srv.port) as (reader, writer):
        writer.write(b"junk" + frame(b"one"))
        assert await read_frames(reader, 1) == [b"ACK|one"]
    assert calls == 1


# --- server: limits and shutdown ------------------------------------------------------------------


async def test_connections_beyond_max_connections_are_refused_and_reported() -> None:
    problems = Problems()
    async with MllpServer(echo, max_connections=2, on_problem=problems) as srv:
        first = MllpClient("127.0.0.1", srv.port)
        async with MllpClient("127.0.0.1", srv.port) as second:
            assert await first.request(b"1") == b"ACK|1"
            assert await second.request(b"2") == b"ACK|2"
            assert srv.connections == 2
            async with raw_peer(srv.port) as (reader, _):
                assert await read_to_eof(reader) == b""
            assert "2 are open; refused" in await problems.wait_for("too many connections")
            await first.close()
            await until(lambda: srv.connections == 1)
            assert await mllp_request("127.0.0.1", srv.port, b"3") == b"ACK|3"
        assert srv.accepted == 3


async def test_close_lets_a_running_handler_answer_and_closes_idle_connections() -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def handler(message: bytes, peer: Peer) -> bytes:
        started.set()
        await release.wait()
        return b"ACK|" + message

    srv = MllpServer(handler)
    await srv.start()
    async with MllpClient("127.0.0.1", srv.port) as busy, raw_peer(srv.port) as (idle_reader, _):
        request = asyncio.create_task(busy.request(b"late"))
        await started.wait()
        closing = asyncio.create_task(srv.close())
        assert await read_to_eof(idle_reader) == b""  # the idle connection goes at once
        assert not closing.done()  # the busy one is waited for
        release.set()
        assert await request == b"ACK|late"
        await asyncio.wait_for(closing, WAIT_S)
    with pytest.raises(MllpError, match="connection refused"):
        await mllp_request("127.0.0.1", srv.port, b"x")


async def test_close_cancels_a_handler_that_outlives_the_grace_period() -> None:
    cancelled = asyncio.Event()
    started = asyncio.Event()

    async def handler(message: bytes, peer: Peer) -> bytes:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return b""

    srv = MllpServer(handler)
    await srv.start()
    async with MllpClient("127.0.0.1", srv.port) as client:
        request = asyncio.create_task(client.request(b"x"))
        await started.wait()
        await srv.close(grace_s=0.01)
        assert cancelled.is_set()
        with pytest.raises(MllpError, match="before it answered"):
            await request


# --- TLS ------------------------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


def server_context(pki: Pki, *, require_client_cert: bool = False, misnamed: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if misnamed:
        context.load_cert_chain(str(pki.misnamed_server_cert), str(pki.misnamed_server_key))
    else:
        context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(str(pki.ca_cert))
    return context


def client_context(pki: Pki, *, ca: Path | None = None, with_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca or pki.ca_cert))
    if with_cert:
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return context


async def test_tls_round_trip_with_a_client_certificate_names_the_client(pki: Pki) -> None:
    peers: list[Peer] = []

    async def handler(message: bytes, peer: Peer) -> bytes:
        peers.append(peer)
        return b"ACK|" + message

    async with (
        MllpServer(handler, ssl=server_context(pki, require_client_cert=True)) as srv,
        MllpClient("127.0.0.1", srv.port, ssl=client_context(pki, with_cert=True)) as client,
    ):
        assert await client.request(ACK_O15) == b"ACK|" + ACK_O15
        assert await client.request(b"two") == b"ACK|two"
    assert [p.tls_subject for p in peers] == ["CN=gw-test,O=pumpgw tests"] * 2


async def test_tls_by_host_name_and_without_a_client_certificate(pki: Pki) -> None:
    async with MllpServer(echo, ssl=server_context(pki)) as srv:
        reply = await mllp_request("localhost", srv.port, b"x", ssl=client_context(pki))
        assert reply == b"ACK|x"
    async with MllpServer(echo, ssl=server_context(pki, misnamed=True)) as srv:
        with pytest.raises(MllpError, match=r"Hostname mismatch.*not for this host name"):
            await mllp_request(
                "127.0.0.1", srv.port, b"x", ssl=client_context(pki), server_hostname="localhost"
            )


async def test_a_client_that_does_not_trust_the_ca_gets_a_tls_error_and_the_server_stays_up(pki: Pki) -> None:
    problems = Problems()
    async with MllpServer(echo, ssl=server_context(pki), on_problem=problems) as srv:
        with pytest.raises(MllpError) as caught:
            await mllp_request("127.0.0.1", srv.port, b"x", ssl=client_context(pki, ca=pki.other_ca_cert))
        detail = caught.value.detail
        assert detail.startswith("TLS: certificate verify failed: unable to get local issuer certificate")
        assert "not signed by a CA this client trusts" in detail
        await problems.wait_for("tls handshake")
        assert await mllp_request("127.0.0.1", srv.port, b"y", ssl=client_context(pki)) == b"ACK|y"


async def test_a_certificate_for_another_name_is_refused_with_a_hint(pki: Pki) -> None:
    async with MllpServer(echo, ssl=server_context(pki, misnamed=True)) as srv:
        with pytest.raises(
            MllpError, match=r"TLS: certificate verify failed: IP address mismatch.*not for this IP address"
        ):
            await mllp_request("127.0.0.1", srv.port, b"x", ssl=client_context(pki))
        # server_hostname says which name to check, whatever address is dialled
        reply = await mllp_request(
            "127.0.0.1", srv.port, b"y", ssl=client_context(pki), server_hostname="broker.invalid"
        )
        assert reply == b"ACK|y"


async def test_a_client_without_the_required_certificate_gets_a_tls_error(pki: Pki) -> None:
    problems = Problems()
    async with MllpServer(
        echo, ssl=server_context(pki, require_client_cert=True), on_problem=problems
    ) as srv:
        # TLS 1.3: the client's handshake ends before the server checks its certificate; asyncio's
        # server then drops the connection without sending the alert, so the client sees a close.
        with pytest.raises(MllpError, match="TLS server that does not accept this client's certificate"):
            await mllp_request("127.0.0.1", srv.port, b"x", ssl=client_context(pki))
        assert "certificate" in await problems.wait_for("tls handshake")


async def test_a_plain_client_to_a_tls_server_gets_an_error_and_the_server_stays_up(pki: Pki) -> None:
    problems = Problems()
    async with MllpServer(echo, ssl=server_context(pki), on_problem=problems) as srv:
        with pytest.raises(MllpError, match=r"by the peer before it answered.*expects TLS"):
            await mllp_request("127.0.0.1", srv.port, ACK_O15)  # 5+ bytes: a whole TLS record header
        assert "wrong version number" in await problems.wait_for("tls handshake")
        assert await mllp_request("127.0.0.1", srv.port, b"y", ssl=client_context(pki)) == b"ACK|y"


# --- client errors --------------------------------------------------------------------------------


async def test_connection_refused_says_nothing_listens() -> None:
    srv = MllpServer(echo)
    await srv.start()
    port = srv.port
    await srv.close()
    with pytest.raises(MllpError) as caught:
        await mllp_request("127.0.0.1", port, b"x")
    assert caught.value.peer == f"127.0.0.1:{port}"
    assert caught.value.detail.startswith("connection refused: nothing listens on that port")


async def test_a_name_that_does_not_resolve_is_named() -> None:
    with pytest.raises(MllpError, match=r"cannot resolve host name 'mllp\.invalid'") as caught:
        await mllp_request("mllp.invalid", 2575, b"x", connect_timeout_s=5)
    assert caught.value.peer == "mllp.invalid:2575"


async def test_no_reply_within_the_reply_timeout() -> None:
    release = asyncio.Event()

    async def handler(message: bytes, peer: Peer) -> bytes:
        await release.wait()
        return b"late"

    async with MllpServer(handler) as srv, MllpClient("127.0.0.1", srv.port, reply_timeout_s=0.05) as client:
        with pytest.raises(MllpError, match=r"no reply within 0\.05 s"):
            await client.request(b"x")
        assert not client.connected  # a late reply can never answer the next request
        release.set()


async def test_a_reply_over_the_client_limit_is_refused() -> None:
    async def handler(message: bytes, peer: Peer) -> bytes:
        return b"x" * 500

    async with MllpServer(handler) as srv:
        with pytest.raises(MllpError, match="larger than max_message_bytes=100"):
            await mllp_request("127.0.0.1", srv.port, b"x", max_message_bytes=100)


@asynccontextmanager
async def scripted_peer(answer: bytes, *, then_close: bool) -> AsyncIterator[int]:
    """A raw server that answers the first frame with the bytes ``answer``, then maybe closes."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await read_frames(reader, 1)
        writer.write(answer)
        await writer.drain()
        if then_close:
            writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield int(srv.sockets[0].getsockname()[1])
    finally:
        srv.close()
        for writer in writers:
            writer.close()
        await srv.wait_closed()


async def test_bytes_before_the_reply_frame_are_skipped() -> None:
    async with scripted_peer(b"\r\nnoise" + frame(b"MSA|AA|1"), then_close=False) as port:
        assert await mllp_request("127.0.0.1", port, b"x") == b"MSA|AA|1"


async def test_a_peer_closing_in_the_middle_of_its_reply() -> None:
    async with scripted_peer(START + b"MSA|A", then_close=True) as port:
        with pytest.raises(MllpError, match=r"in the middle of its reply \(5 bytes of it received\)"):
            await mllp_request("127.0.0.1", port, b"x")


async def test_a_peer_closing_after_sending_garbage_only() -> None:
    async with scripted_peer(b"HTTP/1.1 400 Bad Request\r\n\r\n", then_close=True) as port:
        with pytest.raises(MllpError, match=r"before it answered \(28 bytes that were not a reply\)"):
            await mllp_request("127.0.0.1", port, b"x")


async def test_the_client_reconnects_when_the_server_closed_the_idle_connection() -> None:
    problems = Problems()
    async with (
        MllpServer(echo, idle_timeout_s=0.05, on_problem=problems) as srv,
        MllpClient("127.0.0.1", srv.port) as client,
    ):
        assert await client.request(b"1") == b"ACK|1"
        await problems.wait_for("idle timeout")
        await until(lambda: srv.connections == 0)
        assert await client.request(b"2") == b"ACK|2"
        assert srv.accepted == 2


async def test_a_message_that_cannot_be_framed_is_refused_before_sending() -> None:
    async with MllpServer(echo) as srv, MllpClient("127.0.0.1", srv.port) as client:
        with pytest.raises(Hl7Error, match="0x1c"):
            await client.request(b"bad\x1c")
        assert await client.request(b"good") == b"ACK|good"
        assert srv.frames == 1
