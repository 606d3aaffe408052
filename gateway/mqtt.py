"""Streaming the event log and live status upstream over MQTT (aiomqtt).

Topics (stable, versioned by the ``topic_prefix``, ``pumpgw/v1`` by default; docs/mqtt.md):

- ``{prefix}/{gateway}/status``: retained; ``{"state": "online"}`` on connect, ``"offline"`` on a
  clean stop and, as the last-will message, when the connection dies; with the gateway-level
  fields the gateway sets (the drug library, the event log, the delivery backlog, whether
  auto-programming is available and why not), republished when they change.
- ``{prefix}/{gateway}/events``: every event of the log as a CloudEvents 1.0 JSON message, QoS 1,
  in order, at least once: one event per message (a JSON object) when live, and a JSON array of
  events in order (the CloudEvents JSON batch format) while a backlog drains. The event's ``id`` is
  the de-duplication key downstream.
- ``{prefix}/{gateway}/pumps/{pump}/status``: retained; the pump's link, identity, channels and
  drug-library fitness.

Delivery is an :class:`~.outbox.Outbox`: the log records the last event the broker acknowledged
(PUBACK), so events survive broker outages, network loss and restarts of the gateway. A broker that
is down or refuses us never stops the gateway or touches the pumps: the publisher reconnects with
capped, jittered backoff while everything else goes on, and says why in the log, in the status and
(once per outage) as a ``delivery.failed`` event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Sequence
from typing import Any

import aiomqtt

from .backoff import Backoff
from .clock import Clock
from .config import MqttSection
from .errors import ConfigError, EventLogError
from .eventlog import EventLog
from .events import SCHEMA_ID, Event
from .outbox import Outbox
from .supervisor import raise_if_cancelling

log = logging.getLogger(__name__)

DESTINATION = "mqtt"
STOP_FLUSH_S = 3.0  # on a clean stop, time allowed to deliver the backlog and say offline
CLOUDEVENTS_TYPE_PREFIX = "org.pumpgw."


def cloudevent(event: Event) -> dict[str, Any]:
    """The CloudEvents 1.0 structured-mode JSON of one event; ``data`` is the whole log record
    (seq, refs, payload, prev_hash, hash), so a consumer can check the chain."""
    ce: dict[str, Any] = {
        "specversion": "1.0",
        "id": event.id,
        "source": f"urn:pumpgw:gateway:{event.gateway}",
        "type": CLOUDEVENTS_TYPE_PREFIX + event.type,
        "time": event.time,
        "datacontenttype": "application/json",
        "dataschema": SCHEMA_ID,
        "sequence": str(event.seq),  # the CloudEvents "sequence" extension (a string)
    }
    if event.pump is not None:
        ce["subject"] = event.pump if event.channel is None else f"{event.pump}/{event.channel}"
    ce["data"] = event.as_dict()
    return ce


def encode_batches(events: Sequence[Event], max_bytes: int) -> list[tuple[bytes, int]]:
    """Split ``events`` into MQTT payloads of at most ``max_bytes`` (one event may exceed it alone):
    a single event as a JSON object, several as a JSON array. Returns (payload, last seq) pairs."""
    out: list[tuple[bytes, int]] = []
    group: list[bytes] = []
    size = 2
    last = 0
    for event in events:
        one = json.dumps(cloudevent(event), ensure_ascii=False, separators=(",", ":")).encode()
        if group and size + len(one) + 1 > max_bytes:
            out.append((_join(group), last))
            group, size = [], 2
        group.append(one)
        size += len(one) + 1
        last = event.seq
    if group:
        out.append((_join(group), last))
    return out


def _join(group: list[bytes]) -> bytes:
    return group[0] if len(group) == 1 else b"[" + b",".join(group) + b"]"


def explain(
    exc: BaseException, config: MqttSection, *, connecting: bool = False, username: str | None = None
) -> str:
    """An MQTT failure in the words an engineer needs: what failed and which setting to check.

    ``connecting``: the failure came before the broker accepted the connection; ``username``: the
    user name that was sent (from ``username`` or ``username_file``).
    """
    text = str(exc)
    where = f"{config.host}:{config.port}"
    rc = getattr(exc, "rc", None)
    code = getattr(rc, "value", rc)
    # 4/5 (MQTT 3.1.1) and 134/135 (MQTT 5) are refused credentials only in a CONNACK; after the
    # connection, paho's own code 4 means "not connected" (the broker went away mid-publish).
    if connecting and isinstance(code, int) and code in (4, 5, 134, 135):
        who = f"user {username!r}" if username else "an anonymous client (no user name is configured)"
        user_key = "mqtt.username_file" if config.username_file is not None else "mqtt.username"
        return (
            f"the broker {where} refused the credentials of {who} ({text}): check {user_key} and "
            "mqtt.password_file, and the broker's access list"
        )
    lowered = text.lower()
    if "mismatch" in lowered and "certificate" in lowered:
        return (
            f"TLS: the broker's certificate is not issued for mqtt.host = {config.host!r} ({text}): "
            "connect by the name (or address) in its certificate"
        )
    if "certificate verify failed" in lowered or "certificate_verify_failed" in lowered:
        return (
            f"TLS: the broker {where} presented a certificate that mqtt.tls.ca_file does not trust ({text})"
        )
    tls_words = ("ssl", "tls", "wrong version number", "reset by peer", "eof occurred", "unexpected eof")
    if config.tls is not None and any(w in lowered for w in tls_words):
        return (
            f"TLS handshake with the broker {where} failed ({text}): does the port speak TLS, as configured?"
        )
    if "refused" in lowered:
        return f"the broker {where} refused the connection ({text}): is it running, on that port?"
    if connecting and "timed out" in lowered:
        if config.tls is None:
            hint = "if the port speaks TLS (often 8883), configure [mqtt.tls]"
        elif config.tls.cert_file is None:
            hint = "if the broker requires a client certificate, set mqtt.tls.cert_file and mqtt.tls.key_file"
        else:
            hint = "is the broker overloaded, or does it expect another protocol on this port?"
        return f"the broker {where} did not accept the MQTT connection in time ({text}): {hint}"
    return f"the broker {where}: {text}"


class MqttPublisher:
    """A supervised part: drains the event log to the broker and publishes retained status."""

    name = "mqtt"

    def __init__(
        self,
        config: MqttSection,
        gateway_id: str,
        events: EventLog,
        clock: Clock,
        *,
        backoff: Backoff | None = None,
    ) -> None:
        self._config = config
        self._backoff = backoff or Backoff(base_s=0.5, cap_s=30.0)
        self._gateway = gateway_id
        self._events = events
        self._clock = clock
        self.outbox = Outbox(events, DESTINATION, clock)
        self._wake = self.outbox.wake
        self._pump_status: dict[str, dict[str, Any]] = {}
        self._dirty: set[str] = set()
        self._gateway_fields: dict[str, Any] = {}
        self._gateway_dirty = False
        self.connected = False

    @property
    def delivered_seq(self) -> int:
        """The newest event the broker has acknowledged."""
        return self.outbox.delivered_seq

    # -- topics ---------------------------------------------------------------------------------
    @property
    def status_topic(self) -> str:
        return f"{self._config.topic_prefix}/{self._gateway}/status"

    @property
    def events_topic(self) -> str:
        return f"{self._config.topic_prefix}/{self._gateway}/events"

    def pump_topic(self, pump: str) -> str:
        return f"{self._config.topic_prefix}/{self._gateway}/pumps/{pump}/status"

    def _gateway_status(self, state: str) -> bytes:
        return json.dumps(
            {
                **self._gateway_fields,
                "gateway": self._gateway,
                "state": state,
                "time": self._clock.wall().isoformat(),
            }
        ).encode()

    # -- inputs from the rest of the gateway ----------------------------------------------------
    def set_pump_status(self, pump: str, status: dict[str, Any]) -> None:
        """Remember the pump's latest status; it is published (retained) as soon as connected."""
        self._pump_status[pump] = status
        self._dirty.add(pump)
        self._wake.set()

    def set_gateway_fields(self, fields: dict[str, Any]) -> None:
        """Add ``fields`` to the retained gateway status; republished at once when they changed."""
        merged = {**self._gateway_fields, **fields}
        if merged != self._gateway_fields:
            self._gateway_fields = merged
            self._gateway_dirty = True
            self._wake.set()

    # -- the loop -------------------------------------------------------------------------------
    def _credentials(self) -> tuple[str | None, str | None]:
        cfg = self._config
        username, password = cfg.username, None
        for key, path in (
            ("mqtt.username_file", cfg.username_file),
            ("mqtt.password_file", cfg.password_file),
        ):
            if path is None:
                continue
            try:
                value = path.read_text().strip()
            except OSError as exc:
                raise ConfigError("config", key, str(path), f"a readable file ({exc.strerror})") from None
            if not value:
                raise ConfigError("config", key, str(path), "a file holding the value (it is empty)")
            if key == "mqtt.username_file":
                username = value
            else:
                password = value
        return username, password

    def _tls(self) -> ssl.SSLContext | None:
        cfg = self._config
        if cfg.tls is None:
            return None
        try:
            context = ssl.create_default_context(cafile=str(cfg.tls.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("config", "mqtt.tls.ca_file", str(cfg.tls.ca_file),
                              f"a readable PEM CA bundle ({exc})") from None  # fmt: skip
        if cfg.tls.cert_file is not None and cfg.tls.key_file is not None:
            try:
                context.load_cert_chain(str(cfg.tls.cert_file), str(cfg.tls.key_file))
            except (OSError, ssl.SSLError) as exc:
                expected = f"a readable PEM certificate matching key_file ({exc})"
                raise ConfigError("config", "mqtt.tls.cert_file", str(cfg.tls.cert_file), expected) from None
        return context

    def _client(self, username: str | None, password: str | None) -> aiomqtt.Client:
        cfg = self._config
        return aiomqtt.Client(
            cfg.host,
            cfg.port,
            identifier=f"pumpgw-{self._gateway}",
            username=username,
            password=password,
            keepalive=cfg.keepalive_s,
            tls_context=self._tls(),
            will=aiomqtt.Will(self.status_topic, self._gateway_status("offline"), qos=1, retain=True),
        )

    async def run(self, ready: asyncio.Event) -> None:
        """Publish until cancelled. Becomes ready at once: a broker being down is not a failure."""
        ready.set()
        backoff = self._backoff
        while True:
            problem: str | None = None
            connecting = True
            username: str | None = None
            try:
                username, password = self._credentials()
                async with self._client(username, password) as client:
                    connecting = False
                    self.connected = True
                    if await self.outbox.succeeded():
                        log.info("MQTT broker reachable again", extra={"broker": self._where()})
                    backoff.reset()
                    try:
                        self._gateway_dirty = False
                        await client.publish(
                            self.status_topic, self._gateway_status("online"), qos=1, retain=True
                        )
                        self._dirty |= set(self._pump_status)
                        while True:
                            self._wake.clear()
                            await self._drain(client)
                            raise_if_cancelling()
                            await self._wake.wait()
                    finally:
                        self.connected = False
                        await self._say_offline(client)
            except aiomqtt.MqttError as exc:
                problem = explain(exc, self._config, connecting=connecting, username=username)
            except ConfigError as exc:
                # A credential or certificate file that cannot be read: said, retried (it may be
                # fixed without a restart), never a reason to stop monitoring pumps.
                problem = str(exc)
            except EventLogError as exc:
                # The log cannot be read (disk error, a damaged row): delivery waits, the pumps
                # are still polled, and it is said once until delivery works again.
                problem = f"cannot read the event log for delivery: {exc}"
            self.connected = False
            if problem is not None and await self.outbox.failed(problem):
                log.warning(
                    "MQTT delivery failing; events stay in the local log until it works",
                    extra={"broker": self._where(), "error": problem},
                )
            await asyncio.sleep(backoff.next())

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        """On a clean stop: deliver what is already in the log, then say offline (the will is only
        sent for unclean ends). Best effort and bounded: what is not delivered stays in the outbox.
        """
        task = asyncio.current_task()
        if task is None or not task.cancelling():
            return

        async def goodbye() -> None:
            await self._drain(client)
            await client.publish(self.status_topic, self._gateway_status("offline"), qos=1, retain=True)

        try:
            await asyncio.shield(asyncio.wait_for(goodbye(), STOP_FLUSH_S))
        except (aiomqtt.MqttError, EventLogError, TimeoutError):
            log.debug("could not flush and say offline on stop")

    def _where(self) -> str:
        return f"{self._config.host}:{self._config.port}"

    async def _drain(self, client: aiomqtt.Client) -> None:
        if self._gateway_dirty:
            self._gateway_dirty = False
            await client.publish(self.status_topic, self._gateway_status("online"), qos=1, retain=True)
        while self._dirty:
            pump = self._dirty.pop()
            await client.publish(
                self.pump_topic(pump), json.dumps(self._pump_status[pump]).encode(), qos=1, retain=True
            )

        async def send(events: Sequence[Event]) -> None:
            for payload, last in encode_batches(events, self._config.batch_max_bytes):
                # publish() at QoS 1 returns once the broker has acknowledged (PUBACK).
                await client.publish(self.events_topic, payload, qos=1)
                self.outbox.delivered_seq = last
                log.debug("events published", extra={"seq": last})

        await self.outbox.drain(send, batch=self._config.batch_max_events)
