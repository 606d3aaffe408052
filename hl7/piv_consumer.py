"""The gateway as IHE PIV Infusion Order Consumer: RGV^O15 in over MLLP, ACK^O15 at once, RRG^O16 after.

The flow (IHE PCD TF-2, enhanced acknowledgement mode, ``../shared/reference/ihe-pcd.md``):

1. The order programmer (the eMAR or BCMA) sends RGV^O15. The gateway answers on the same
   connection, at once, with ACK^O15: ``CA`` when it has the message to process, ``CR`` when it
   cannot take it at all (not HL7, not an RGV^O15, a message it cannot read), never a silence.
2. Then, off the connection, it processes the order: reads it (``read_rgv_o15``, tolerant of the
   known defects of real messages but never guessing a clinical value), checks it
   (``check_order``: patient, stale ORC-9, pump and channel served here, something to program),
   records ``order.received`` and keeps it for the bedside workflow, or records ``order.rejected``.
3. It opens a new connection to the configured order programmer and sends RRG^O16: ``AA``, or
   ``AR`` with one ERR per problem (the PIV application error code in ERR-5), and expects ACK^O16.

Orders are decided one at a time in the order they arrived, and their RRG^O16s go out in that
order from a queue of their own: an order programmer that is down delays its answers, never the
next orders' decisions. An RRG^O16 that cannot be delivered is retried with backoff for
``reply_timeout_s`` × 4, then given up with a warning (``rrg_failed``): the order itself stays
decided and recorded. A message the programmer re-sends with the same sender and MSH-10 (it did not
see our ACK, or never got the RRG^O16) is acknowledged again and not decided twice; if it was
decided already, its RRG^O16 is sent again. The last 1,000 messages are remembered.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import uuid
from collections import OrderedDict
from collections.abc import Callable
from datetime import timedelta

from pumpgw.gateway.backoff import Backoff
from pumpgw.gateway.clock import Clock
from pumpgw.gateway.config import Hl7Section
from pumpgw.gateway.errors import EventLogError, Hl7Error, MllpError
from pumpgw.gateway.eventlog import EventLog
from pumpgw.gateway.events import EventType, Refs
from pumpgw.gateway.orders import (
    HL7_APPLICATION_ERROR,
    HL7_UNSUPPORTED_MESSAGE_TYPE,
    Order,
    OrderPolicy,
    OrderProblem,
    OrderRefused,
    OrderSource,
    PendingOrders,
    check_order,
    received_payload,
    rejected_payload,
)

from .ack import build_ack, build_rrg_o16, nak_for_unreadable, read_ack
from .build import Party
from .message import Hl7Message, parse_message
from .mllp_io import MllpClient, MllpServer, Peer
from .piv import read_rgv_o15

log = logging.getLogger(__name__)

_REMEMBERED = 1000  # control ids remembered for re-sent messages


def _rrg_control_id(order_control_id: str) -> str:
    """MSH-10 of the RRG^O16 answering ``order_control_id``: ``<its MSH-10>-RRG`` (easy to match in
    a log), or a random id when that would not fit MSH-10's 199 characters (HL7 2.6): a sender's
    long control id must not stop the answer from being built."""
    derived = f"{order_control_id}-RRG"
    return derived if len(derived) <= 199 else uuid.uuid4().hex[:20]


_MAX_WAITING = 1000  # orders acknowledged (CA) and not yet decided; more are answered CE


def _key(message: Hl7Message, data: bytes) -> tuple[str, str, str, str]:
    """Who sent it, its MSH-10 (unique per sending system, not across systems), and a digest of
    its content: a programmer that restarts its counter reuses MSH-10s for new orders, and a new
    order must never be taken for a re-send of an old one."""
    digest = hashlib.sha256(data.strip(b"\r\n\x0b\x1c ")).hexdigest()
    return (message.sender.application, message.sender.facility, message.control_id, digest)


def _wants_answer(app_ack: str, code: str) -> bool:
    """MSH-16 of the RGV^O15 (HL7 table 0155): AL always, ER only on an error, NE never. Empty:
    the PIV profile's enhanced mode asks for one (as AL)."""
    mode = app_ack.strip().upper()
    if mode == "NE":
        return False
    if mode == "ER":
        return code != "AA"
    return True


class PivConsumer:
    """A supervised part: the PIV listener and the RRG^O16 sender."""

    name = "hl7-piv"

    def __init__(
        self,
        config: Hl7Section,
        events: EventLog,
        orders: PendingOrders,
        clock: Clock,
        pumps: Callable[[], dict[str, frozenset[str]]],
        *,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        backoff: Backoff | None = None,
        sender: Party | None = None,
    ) -> None:
        self._config = config
        self._events = events
        self._orders = orders
        self._clock = clock
        self._pumps = pumps
        self._server_ssl = server_ssl
        self._client_ssl = client_ssl
        self._backoff = backoff or Backoff(base_s=0.5, cap_s=10.0)
        self._policy = OrderPolicy(stale_after=timedelta(minutes=config.stale_after_min))
        self._me = sender or Party(config.application, config.facility or "")
        self._queue: asyncio.Queue[tuple[Hl7Message, tuple[str, str, str, str]]] = asyncio.Queue()
        # RRG^O16s to send, in the order the orders were decided: a programmer that is down delays
        # its answers, never the next orders' decisions.
        self._rrg_queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        # Each message seen (sender, facility, MSH-10) and, once decided, its RRG^O16: a re-sent
        # order is not decided twice, and its answer is sent again (the first may have been lost).
        self._seen: OrderedDict[tuple[str, str, str, str], bytes | None] = OrderedDict()
        self._accepted_oids = frozenset(config.accepted_profile_oids)
        self._server: MllpServer | None = None
        self.processed = 0  # orders decided (accepted or refused), for status and tests
        self.rrg_sent = 0  # answered by the programmer with AA/CA
        self.rrg_refused = 0  # answered with anything else
        self.rrg_failed = 0  # given up after retries

    @property
    def port(self) -> int:
        """The bound listening port (after start)."""
        if self._server is None:
            raise RuntimeError("the PIV listener is not running")
        return self._server.port

    async def drained(self) -> None:
        """Return once every order received so far is decided and its RRG^O16 delivered or given up."""
        await self._queue.join()
        await self._rrg_queue.join()

    async def run(self, ready: asyncio.Event) -> None:
        server = MllpServer(
            self._handle,
            host=self._config.listen_host,
            port=self._config.listen_port,
            ssl=self._server_ssl,
            max_message_bytes=self._config.max_message_bytes,
            read_timeout_s=self._config.read_timeout_s,
            idle_timeout_s=self._config.idle_timeout_s,
            max_connections=self._config.max_connections,
            on_problem=self._on_problem,
        )
        await server.start()
        self._server = server
        log.info(
            "PIV order consumer listening",
            extra={
                "host": self._config.listen_host,
                "port": server.port,
                "tls": self._server_ssl is not None,
            },
        )
        ready.set()
        sender = asyncio.create_task(self._send_answers(), name="hl7-piv-rrg")
        try:
            while True:
                message, key = await self._queue.get()
                try:
                    await self._process(message, key)
                except Exception:
                    # A bug met on one message must cost that message, never the listener: every
                    # later order would otherwise go unanswered. (CancelledError is not caught.)
                    log.exception(
                        "processing an RGV^O15 failed unexpectedly; it is dropped",
                        extra={"control_id": message.control_id},
                    )
                finally:
                    self._queue.task_done()
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            await server.close()

    async def _send_answers(self) -> None:
        while True:
            control_id, rrg = await self._rrg_queue.get()
            try:
                await self._send_rrg(control_id, rrg)
            except Exception:
                log.exception("sending an RRG^O16 failed unexpectedly", extra={"order_message": control_id})
            finally:
                self._rrg_queue.task_done()

    def _on_problem(self, peer: Peer, problem: str) -> None:
        log.warning("PIV link problem", extra={"peer": f"{peer.host}:{peer.port}", "problem": problem})

    async def _handle(self, data: bytes, peer: Peer) -> bytes | None:
        """Answer ACK^O15 at once; queue the order for processing."""
        now = self._clock.wall()
        try:
            message = parse_message(data)
        except Hl7Error as exc:
            log.warning("unreadable HL7 message refused", extra={"peer": peer.host, "error": str(exc)})
            # PIV is always enhanced mode: the accept acknowledgement is CR, whatever the bytes say.
            return nak_for_unreadable(data, str(exc), at=now, sender=self._me, enhanced=True)
        code, trigger, _structure = message.message_type
        if (code, trigger) != ("RGV", "O15"):
            problem = OrderProblem(
                HL7_UNSUPPORTED_MESSAGE_TYPE,
                "MSH-9",
                f"this gateway takes RGV^O15 orders here, not {code}^{trigger}",
            )
            return build_ack(
                message, "CR", at=now, sender=self._me, trigger=trigger or None, errors=[problem]
            )
        key = _key(message, data)
        if key in self._seen:
            answer = self._seen[key]
            log.info(
                "re-sent RGV^O15 acknowledged again, not decided twice",
                extra={"control_id": message.control_id, "answer_sent_again": answer is not None},
            )
            if answer is not None:  # decided already: its RRG^O16 may not have arrived; send it again
                self._rrg_queue.put_nowait((message.control_id, answer))
            return build_ack(message, "CA", at=now, sender=self._me, trigger="O15")
        if self._queue.qsize() >= _MAX_WAITING:
            # Bounded: a flood of orders (or a stalled event log) must not grow memory without
            # end. CE: the programmer may send it again later.
            busy = OrderProblem(
                HL7_APPLICATION_ERROR,
                "",
                f"{_MAX_WAITING} orders are waiting to be decided; send it again later",
            )
            return build_ack(message, "CE", at=now, sender=self._me, trigger="O15", errors=[busy])
        self._seen[key] = None
        while len(self._seen) > _REMEMBERED:
            self._seen.popitem(last=False)
        self._queue.put_nowait((message, key))
        return build_ack(message, "CA", at=now, sender=self._me, trigger="O15")

    async def _process(self, message: Hl7Message, key: tuple[str, str, str, str]) -> None:
        order: Order | None = None
        problems: list[OrderProblem]
        try:
            order = read_rgv_o15(
                message,
                require_profile_oid=self._config.require_profile_oid,
                accepted_oids=self._accepted_oids,
            )
        except OrderRefused as refused:
            problems = list(refused.problems)
            order_id = refused.order_id
        except Exception as exc:
            # A bug in the reader must still give a decision: refused, recorded, answered.
            log.exception("reading an RGV^O15 failed unexpectedly; the order is refused")
            problems = [
                OrderProblem(
                    HL7_APPLICATION_ERROR, "", f"the gateway could not read this order ({type(exc).__name__})"
                )
            ]
            order_id = None
        else:
            problems = check_order(order, now=self._clock.wall(), policy=self._policy, pumps=self._pumps())
            order_id = order.order_id
        try:
            if problems:
                await self._events.append(
                    EventType.ORDER_REJECTED,
                    rejected_payload(OrderSource.HL7, order_id, problems),
                    refs=Refs(patient=order.patient_id if order else None, order=order_id),
                )
            else:
                assert order is not None
                await self._events.append(
                    EventType.ORDER_RECEIVED,
                    received_payload(order),
                    pump=order.pump_id,
                    refs=Refs(patient=order.patient_id, order=order.order_id, clinician=order.ordered_by),
                )
        except EventLogError as exc:
            # An order that cannot be recorded is not accepted: the record comes first.
            log.error(  # noqa: TRY400 - the reason is in the message; no traceback wanted
                "order not recorded; refused", extra={"order": order_id, "error": str(exc)}
            )
            problems = [
                OrderProblem(
                    HL7_APPLICATION_ERROR, "gateway", f"the gateway cannot record the order: {exc.detail}"
                )
            ]
        else:
            if not problems and order is not None:
                self._orders.put(order)
        self.processed += 1
        code = "AR" if problems else "AA"
        log.info(
            "PIV order decided",
            extra={"order": order_id, "result": code, "problems": [str(p) for p in problems]},
        )
        rrg = build_rrg_o16(
            message,
            order,
            code,
            control_id=_rrg_control_id(message.control_id),
            at=self._clock.wall(),
            sender=self._me,
            receiver=message.sender,
            errors=problems,
        )
        if key in self._seen:
            self._seen[key] = rrg
        if _wants_answer(message.app_ack, code):
            self._rrg_queue.put_nowait((message.control_id, rrg))

    async def _send_rrg(self, control_id: str, rrg: bytes) -> None:
        host, port = self._config.order_programmer_host, self._config.order_programmer_port
        if host is None or port is None:
            return
        deadline = self._clock.monotonic() + self._config.reply_timeout_s * 4
        backoff = self._backoff
        backoff.reset()
        while True:
            try:
                async with MllpClient(
                    host,
                    port,
                    ssl=self._client_ssl,
                    connect_timeout_s=self._config.reply_timeout_s,
                    reply_timeout_s=self._config.reply_timeout_s,
                ) as client:
                    reply = await client.request(rrg)
                ack = read_ack(reply)
            except (MllpError, Hl7Error) as exc:
                if self._clock.monotonic() >= deadline:
                    self.rrg_failed += 1
                    log.warning(
                        "RRG^O16 not delivered to the order programmer; given up",
                        extra={"order_message": control_id, "error": str(exc)},
                    )
                    return
                log.info("RRG^O16 not delivered yet; retrying", extra={"error": str(exc)})
                await asyncio.sleep(backoff.next())
                continue
            if ack.code in ("AA", "CA"):
                self.rrg_sent += 1
            else:
                self.rrg_refused += 1
                log.warning(
                    "the order programmer did not accept our RRG^O16",
                    extra={"order_message": control_id, "ack": ack.code, "text": ack.text},
                )
            return
