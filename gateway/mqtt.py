"""Streaming the event log and live status upstream over MQTT (aiomqtt).

Topics (stable, versioned by the ``topic_prefix``, ``pumpgw/v1`` by default; docs/mqtt.md):

- ``{prefix}/{gateway}/status``: retained; ``{"state": "online"}`` on connect, ``"offline"`` on a
  clean stop and, as the last-will message, when the connection dies; with the gateway-level
  fields the gateway sets (``"library"``: the drug library in use, or why there is none),
  republished when they change.
- ``{prefix}/{gateway}/events``: every event of the log, QoS 1, in order, at least once. The
  event's ``id`` is the de-duplication key downstream.
- ``{prefix}/{gateway}/pumps/{pump}/status``: retained; the pump's link, identity, channels and
  drug-library fitness.

Delivery is an outbox: the log records per destination the last event delivered (acknowledged by
the broker with PUBACK), so events survive broker outages, network loss and restarts of the
gateway. A broker that is down never stops the gateway or touches the pumps: the publisher
reconnects with capped, jittered backoff while everything else goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from typing import Any

import aiomqtt

from .backoff import Backoff
from .clock import Clock
from .config import MqttSection
from .errors import ConfigError, EventLogError
from .eventlog import EventLog
from .supervisor import raise_if_cancelling

log = logging.getLogger(__name__)

DESTINATION = "mqtt"
STOP_FLUSH_S = 3.0  # on a clean stop, time allowed to deliver the backlog and say offline


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
        self._wake = asyncio.Event()
        self._pump_status: dict[str, dict[str, Any]] = {}
        self._dirty: set[str] = set()
        self._gateway_fields: dict[str, Any] = {}
        self._gateway_dirty = False
        self.connected = False
        self.delivered_seq = 0  # acknowledged by the broker
        self._marked_seq = 0  # recorded in the outbox
        events.subscribe(self._wake)

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
        """Add ``fields`` to the retained gateway status; republished at once when connected."""
        self._gateway_fields.update(fields)
        self._gateway_dirty = True
        self._wake.set()

    # -- the loop -------------------------------------------------------------------------------
    def _client(self) -> aiomqtt.Client:
        cfg = self._config
        password = None
        if cfg.password_file is not None:
            try:
                password = cfg.password_file.read_text().strip()
            except OSError as exc:
                raise ConfigError("config", "mqtt.password_file", str(cfg.password_file),
                                  f"a readable file ({exc.strerror})") from None  # fmt: skip
        tls_context = None
        if cfg.tls is not None:
            try:
                tls_context = ssl.create_default_context(cafile=str(cfg.tls.ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError("config", "mqtt.tls.ca_file", str(cfg.tls.ca_file),
                                  f"a readable PEM CA bundle ({exc})") from None  # fmt: skip
            if cfg.tls.cert_file is not None and cfg.tls.key_file is not None:
                try:
                    tls_context.load_cert_chain(str(cfg.tls.cert_file), str(cfg.tls.key_file))
                except (OSError, ssl.SSLError) as exc:
                    expected = f"a readable PEM certificate matching key_file ({exc})"
                    raise ConfigError(
                        "config", "mqtt.tls.cert_file", str(cfg.tls.cert_file), expected
                    ) from None
        return aiomqtt.Client(
            cfg.host,
            cfg.port,
            identifier=f"pumpgw-{self._gateway}",
            username=cfg.username,
            password=password,
            keepalive=cfg.keepalive_s,
            tls_context=tls_context,
            will=aiomqtt.Will(self.status_topic, self._gateway_status("offline"), qos=1, retain=True),
        )

    async def run(self, ready: asyncio.Event) -> None:
        """Publish until cancelled. Becomes ready at once: a broker being down is not a failure."""
        ready.set()
        backoff = self._backoff
        failing = False
        self.delivered_seq = await self._events.delivered_seq(DESTINATION)
        self._marked_seq = self.delivered_seq
        while True:
            try:
                async with self._client() as client:
                    self.connected = True
                    if failing:
                        log.info("MQTT broker reachable again", extra={"broker": self._where()})
                    failing = False
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
                        if not failing:
                            await self._say_offline(client)
            except aiomqtt.MqttError as exc:
                self.connected = False
                if not failing:
                    log.warning(
                        "MQTT broker unreachable; events stay in the local log until it is back",
                        extra={"broker": self._where(), "error": str(exc)},
                    )
                failing = True
                await asyncio.sleep(backoff.next())
            except EventLogError as exc:
                # The log cannot be read (disk error, a damaged row): delivery waits, the pumps
                # are still polled, and it is said once until delivery works again.
                self.connected = False
                if not failing:
                    log.exception("cannot read the event log for delivery", extra={"error": str(exc)})
                failing = True
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
        except (aiomqtt.MqttError, TimeoutError):
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
        while True:
            # Record first what earlier acknowledgements left unrecorded (a stop can land between a
            # PUBACK and the write below), so the outbox never lags behind what the broker has.
            if self._marked_seq < self.delivered_seq:
                await self._events.mark_delivered(DESTINATION, self.delivered_seq)
                self._marked_seq = self.delivered_seq
            batch = await self._events.read_after(self.delivered_seq, limit=100)
            if not batch:
                return
            for event in batch:
                # publish() at QoS 1 returns once the broker has acknowledged (PUBACK).
                await client.publish(self.events_topic, json.dumps(event.as_dict()).encode(), qos=1)
                log.debug("event published", extra={"seq": event.seq})
                self.delivered_seq = event.seq
