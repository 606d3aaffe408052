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

Orders are processed one at a time in the order they arrived, so RRG^O16s go out in that order.
A message the programmer re-sends with the same MSH-10 (it did not see our ACK) is acknowledged
again and not processed twice. An RRG^O16 that cannot be delivered is retried with backoff for
``reply_timeout_s`` × 4, then given up with a warning: the order itself stays decided and recorded.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
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
        self._queue: asyncio.Queue[Hl7Message] = asyncio.Queue()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._server: MllpServer | None = None
        self.processed = 0  # orders decided (accepted or refused), for status and tests
        self.rrg_sent = 0
        self.rrg_failed = 0

    @property
    def port(self) -> int:
        """The bound listening port (after start)."""
        if self._server is None:
            raise RuntimeError("the PIV listener is not running")
        return self._server.port

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
        try:
            while True:
                message = await self._queue.get()
                await self._process(message)
        finally:
            await server.close()

    def _on_problem(self, peer: Peer, problem: str) -> None:
        log.warning("PIV link problem", extra={"peer": f"{peer.host}:{peer.port}", "problem": problem})

    async def _handle(self, data: bytes, peer: Peer) -> bytes | None:
        """Answer ACK^O15 at once; queue the order for processing."""
        now = self._clock.wall()
        try:
            message = parse_message(data)
        except Hl7Error as exc:
            log.warning("unreadable HL7 message refused", extra={"peer": peer.host, "error": str(exc)})
            return nak_for_unreadable(data, str(exc), at=now, sender=self._me)
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
        if message.control_id in self._seen:
            log.info("re-sent RGV^O15 acknowledged again", extra={"control_id": message.control_id})
            return build_ack(message, "CA", at=now, sender=self._me, trigger="O15")
        self._seen[message.control_id] = None
        while len(self._seen) > _REMEMBERED:
            self._seen.popitem(last=False)
        self._queue.put_nowait(message)
        return build_ack(message, "CA", at=now, sender=self._me, trigger="O15")

    async def _process(self, message: Hl7Message) -> None:
        order: Order | None = None
        problems: list[OrderProblem]
        try:
            order = read_rgv_o15(message, require_profile_oid=self._config.require_profile_oid)
        except OrderRefused as refused:
            problems = list(refused.problems)
            order_id = refused.order_id
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
        await self._send_rrg(message, order, code, problems)

    async def _send_rrg(
        self, message: Hl7Message, order: Order | None, code: str, problems: list[OrderProblem]
    ) -> None:
        host, port = self._config.order_programmer_host, self._config.order_programmer_port
        if host is None or port is None:
            return
        rrg = build_rrg_o16(
            message,
            order,
            code,
            control_id=f"{message.control_id}-RRG",
            at=self._clock.wall(),
            sender=self._me,
            receiver=message.sender,
            errors=problems,
        )
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
                        extra={"order_message": message.control_id, "error": str(exc)},
                    )
                    return
                log.info("RRG^O16 not delivered yet; retrying", extra={"error": str(exc)})
                await asyncio.sleep(backoff.next())
                continue
            self.rrg_sent += 1
            if ack.code not in ("AA", "CA"):
                log.warning(
                    "the order programmer did not accept our RRG^O16",
                    extra={"order_message": message.control_id, "ack": ack.code, "text": ack.text},
                )
            return
