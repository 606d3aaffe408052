"""The rig's hospital side: an emulated eMAR and an emulated EPR, run together, with their controls.

``async with Hospital(clock) as hospital:`` starts an :class:`~pumpgw.rig.emar.EmulatedEmar` and an
:class:`~pumpgw.rig.epr.EmulatedEpr` on loopback ports the system picks. :meth:`Hospital.endpoints`
says where they are, in the shape a gateway configuration needs (see its docstring for each key);
:meth:`Hospital.handle` answers control requests, the JSON objects ``pumpgw rig emar ...`` and
``pumpgw rig epr ...`` send over the rig's control socket (:mod:`pumpgw.rig.control`)::

    {"op": "hospital"}                                   endpoints, EPR mode, counts
    {"op": "emar.load", "path": ABSOLUTE-PATH}           replace the eMAR's patients and orders
    {"op": "emar.load", "example": true}                 back to the built-in example data
    {"op": "emar.orders"}                                the orders, and what became of each one sent
    {"op": "emar.send", "order": ID, "to": "HOST:PORT"?, "wait": SECONDS?}
    {"op": "epr.received", "type": TYPE?}                what the EPR received (TYPE: a FHIR
                                                         resource type, or "hl7"), with verdicts
    {"op": "epr.mode", "mode": "ok|fail|delay|reject", "delay": S?, "count": N?, "on": "fhir|hl7|both"?}
    {"op": "epr.clear"}                                  forget what the EPR received

Answers: ``{"ok": true, "detail": TEXT, ...}`` or ``{"ok": false, "error": TEXT}``; a request that
cannot be carried out is answered with the reason and never stops the rig.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from pumpgw.fhir.client import dumps_json
from pumpgw.gateway.clock import Clock
from pumpgw.gateway.errors import ConfigError, PumpGwError

from .emar import EmulatedEmar
from .emar_data import MRN_SYSTEM, EmarData, example_data
from .epr import EmulatedEpr

log = logging.getLogger(__name__)

OPS: Final = frozenset(
    {"hospital", "emar.load", "emar.orders", "emar.send", "epr.received", "epr.mode", "epr.clear"}
)
#: The longest ``emar.send`` may wait for the RRG^O16 (the control client waits a little longer).
MAX_WAIT_S: Final = 300.0


class Hospital:
    """An eMAR and an EPR on loopback. Use ``async with``.

    ``gateway_piv`` is where ``emar.send`` sends orders when the request names no ``to``: the
    gateway's PIV listener (``[hl7] listen_host``/``listen_port``), when the rig knows it.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        emar_data: EmarData | None = None,
        host: str = "127.0.0.1",
        gateway_piv: tuple[str, int] | None = None,
    ) -> None:
        self.clock = clock
        self.emar = EmulatedEmar(clock, emar_data, host=host)
        self.epr = EmulatedEpr(clock, host=host)
        self.gateway_piv = gateway_piv

    async def __aenter__(self) -> Hospital:
        await self.emar.start()
        try:
            await self.epr.start()
        except BaseException:
            await self.emar.close()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.epr.close()
        await self.emar.close()

    def endpoints(self) -> dict[str, Any]:
        """Where the hospital listens, for printing and for a gateway configuration:

        - ``emar.fhir_base``: the eMAR's FHIR base URL (``[fhir] base_url``);
        - ``emar.mrn_system``: the identifier system of its wristband numbers (Patient.identifier);
        - ``emar.rrg_host`` / ``emar.rrg_port``: where the eMAR takes RRG^O16 (``[hl7]
          order_programmer_host`` / ``order_programmer_port``);
        - ``emar.gateway_piv``: where ``emar send`` sends orders by default (``HOST:PORT``), or None;
        - ``epr.fhir_base``: the EPR's FHIR base URL (an ``[[epr.fhir]]`` receiver's ``base_url``);
        - ``epr.mllp_host`` / ``epr.mllp_port``: the EPR's MLLP receiver (an ``[[epr.hl7]]``
          receiver's ``host`` / ``port``).
        """
        piv = self.gateway_piv
        return {
            "emar": {
                "fhir_base": self.emar.fhir_base,
                "mrn_system": MRN_SYSTEM,
                "rrg_host": self.emar.host,
                "rrg_port": self.emar.rrg_port,
                "gateway_piv": None if piv is None else f"{piv[0]}:{piv[1]}",
            },
            "epr": {
                "fhir_base": self.epr.fhir_base,
                "mllp_host": self.epr.host,
                "mllp_port": self.epr.mllp_port,
            },
        }

    def describe_lines(self) -> list[str]:
        """The endpoints as lines for a person (``pumpgw rig up``)."""
        e = self.endpoints()
        return [
            f"{'emar':<18} {'fhir':<11} {e['emar']['fhir_base']}",
            f"{'emar':<18} {'mllp-rrg':<11} {e['emar']['rrg_host']}:{e['emar']['rrg_port']}  (takes RRG^O16)",
            f"{'epr':<18} {'fhir':<11} {e['epr']['fhir_base']}",
            f"{'epr':<18} {'mllp':<11} {e['epr']['mllp_host']}:{e['epr']['mllp_port']}",
        ]

    # -- control requests --------------------------------------------------------------------------
    @staticmethod
    def handles(op: object) -> bool:
        return op in OPS

    async def handle(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """Answer a control request whose op is one of :data:`OPS`; None for any other op (the
        pumps' control server answers those). Never raises."""
        op = request.get("op")
        if not self.handles(op):
            return None
        try:
            return await self._handle(str(op), request)
        except (PumpGwError, ValueError) as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:
            log.exception("hospital control request %r failed", op)
            return {"ok": False, "error": f"{op}: internal error: {type(exc).__name__}: {exc}"}

    async def _handle(self, op: str, request: dict[str, Any]) -> dict[str, Any]:
        if op == "hospital":
            return {
                "ok": True,
                "detail": self.epr.describe_mode(),
                "endpoints": self.endpoints(),
                "epr_mode": self.epr.mode(),
                "counts": self.epr.counts(),
            }
        if op == "emar.load":
            if request.get("example") is True:
                return {"ok": True, "detail": self.emar.load(example_data(), "the built-in example")}
            path = Path(_text(request, "path"))
            if not path.is_absolute():
                raise ConfigError("emar.load", "path", str(path), "an absolute path (the rig runs elsewhere)")
            return {"ok": True, "detail": self.emar.load_file(path)}
        if op == "emar.orders":
            orders = self.emar.describe_orders()
            return {"ok": True, "detail": f"{len(orders)} order(s) from {self.emar.source}", "orders": orders}
        if op == "emar.send":
            return await self._send(request)
        if op == "epr.received":
            return self._received(request)
        if op == "epr.mode":
            detail = self.epr.set_mode(
                _text(request, "mode"),
                delay_s=_number(request, "delay"),
                count=_whole(request, "count"),
                on=request.get("on") or "both",
            )
            return {"ok": True, "detail": detail, "epr_mode": self.epr.mode()}
        self.epr.clear()
        return {"ok": True, "detail": "epr: everything received forgotten"}

    async def _send(self, request: dict[str, Any]) -> dict[str, Any]:
        order_id = _text(request, "order")
        to = request.get("to")
        if to is None:
            if self.gateway_piv is None:
                raise ConfigError(
                    "emar.send",
                    "to",
                    None,
                    "the gateway's PIV listener as HOST:PORT (--to): the rig does not know it "
                    "(the gateway's [hl7] listen_host and listen_port)",
                )
            host, port = self.gateway_piv
        else:
            host, port = _host_port(to)
        wait = _number(request, "wait")
        if wait is not None and not 0 < wait <= MAX_WAIT_S:
            raise ConfigError("emar.send", "wait", wait, f"seconds, above 0 and at most {MAX_WAIT_S:g}")
        self.emar.order_data(order_id)  # an unknown order is refused before anything is sent
        try:
            sent = await self.emar.send_order(order_id, host, port)
        except PumpGwError as exc:
            # "failed": the request was fine; the gateway could not be reached or answered wrongly.
            return {
                "ok": False,
                "failed": True,
                "error": f"emar send {order_id}: {exc}",
                "sent": _sent(self.emar, order_id),
            }
        assert sent.ack is not None
        detail = f"{order_id} sent to {host}:{port} as {sent.control_id}: ACK^O15 {sent.ack.code}"
        answer: dict[str, Any] = {"ok": True, "detail": detail}
        if wait is not None:
            try:
                await self.emar.wait_for_result(order_id, wait)
            except TimeoutError:
                answer["timed_out"] = True
                answer["detail"] = f"{detail}; no RRG^O16 within {wait:g} s"
        answer["sent"] = sent.describe()
        return answer

    def _received(self, request: dict[str, Any]) -> dict[str, Any]:
        kind = request.get("type")
        if kind is not None and not isinstance(kind, str):
            raise ConfigError("epr.received", "type", kind, "a FHIR resource type or hl7")
        answer: dict[str, Any] = {"ok": True, "counts": self.epr.counts(), "epr_mode": self.epr.mode()}
        if kind in (None, "hl7"):
            answer["hl7"] = [m.describe() for m in self.epr.hl7_messages()]
        if kind != "hl7":
            # As FHIR JSON text: the resources' numbers are exact decimals, which the control
            # socket's JSON (floats) would not keep digit for digit.
            answer["resources"] = [dumps_json(r).decode() for r in self.epr.resources(kind)]
            answer["requests"] = [
                r.describe() for r in self.epr.fhir_requests() if kind is None or r.resource_type == kind
            ]
        counts = self.epr.counts()
        answer["detail"] = (
            f"epr: {sum(counts['stored'].values())} resource(s) stored, "
            f"{len(self.epr.hl7_messages())} HL7 message(s) received; {self.epr.describe_mode()}"
        )
        return answer


def _sent(emar: EmulatedEmar, order_id: str) -> dict[str, Any] | None:
    sent = emar.sent(order_id)
    return None if sent is None else sent.describe()


def _text(request: dict[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(str(request.get("op")), key, value, "text")
    return value


def _number(request: dict[str, Any], key: str) -> float | None:
    value = request.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ConfigError(str(request.get("op")), key, value, "a number of seconds")
    return None if value is None else float(value)


def _whole(request: dict[str, Any], key: str) -> int | None:
    value = request.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(str(request.get("op")), key, value, "a whole number")
    return value


def _host_port(text: object) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6). Raises ConfigError naming what is wrong."""
    if not isinstance(text, str) or ":" not in text:
        raise ConfigError("emar.send", "to", text, "HOST:PORT, e.g. 127.0.0.1:2575")
    host, _, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("emar.send", "to", text, "HOST:PORT with a port from 1 to 65535")
    return host, int(port)
