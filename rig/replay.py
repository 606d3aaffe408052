"""Serve a :class:`~pumpgw.rig.recording.Replayer` on the transport its recording came from."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pumpgw.gateway.clock import Clock

from .bench_rig import REGISTER_MAP
from .pty_link import PtyDeviceServer
from .recording import Replayer
from .tcp_link import TcpDeviceServer


@asynccontextmanager
async def serve_replay(
    replayer: Replayer, clock: Clock, *, baudrate: int | None = None, pump_id: str = "replay"
) -> AsyncIterator[dict[str, Any]]:
    """Serve ``replayer`` (a PTY for serial recordings, TCP on loopback for Modbus TCP) and yield
    the endpoint as a gateway ``[[pumps]]`` entry; stop serving when the block ends."""
    recording = replayer.recording
    settings = dict(recording.settings)
    if recording.protocol == "modbus-tcp":
        tcp = TcpDeviceServer(lambda: replayer, clock)
        async with tcp:
            yield {"id": pump_id, "driver": "modbus-tcp", "host": "127.0.0.1", "port": tcp.port,
                   "register_map": REGISTER_MAP, **settings}  # fmt: skip
        return
    pty = PtyDeviceServer(replayer, clock, baudrate=baudrate)
    async with pty:
        endpoint: dict[str, Any] = {"id": pump_id, "driver": recording.protocol, "port": pty.path, **settings}
        if recording.protocol == "modbus-rtu":
            endpoint.setdefault("register_map", REGISTER_MAP)
        yield endpoint
