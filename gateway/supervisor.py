"""The asyncio supervisor: starts the gateway's parts in order, stops them in reverse order.

A part is anything with a ``name`` and ``async run(ready)``: it sets ``ready`` once it is serving
and then runs until cancelled. The supervisor starts each part only after the one before it is
ready, so the event log is open before a poller writes to it. If a part fails, or ends without
being asked to, or does not become ready within its start timeout, the supervisor stops the
others and raises :class:`PartFailed` naming that part: it reports a failing part instead of
hanging. Cancellation is never swallowed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from .errors import PartFailed

log = logging.getLogger(__name__)

STOP_ATTEMPTS = 3


def raise_if_cancelling() -> None:
    """Raise CancelledError if this task has been asked to stop.

    Long-running loops call it after every await that goes through a library using Python 3.11's
    ``asyncio.wait_for``, which can swallow a cancellation that races with a result
    (fixed in 3.12, https://github.com/python/cpython/issues/86296).
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Part(Protocol):
    @property
    def name(self) -> str: ...

    async def run(self, ready: asyncio.Event) -> None: ...


class _Stopped(Exception):
    """A part returned although nobody asked it to stop."""


class Supervisor:
    def __init__(
        self, parts: Sequence[Part], *, start_timeout_s: float = 15.0, stop_grace_s: float = 10.0
    ) -> None:
        names = [p.name for p in parts]
        if len(set(names)) != len(names):
            raise ValueError(f"part names must be unique: {names}")
        self._parts = list(parts)
        self._start_timeout_s = start_timeout_s
        self._stop_grace_s = stop_grace_s
        self._tasks: list[tuple[Part, asyncio.Task[None]]] = []

    async def run(self, stop: asyncio.Event) -> None:
        """Run every part until ``stop`` is set. Raises PartFailed if a part fails."""
        stop_waiter = asyncio.create_task(stop.wait(), name="supervisor:stop")
        try:
            for part in self._parts:
                await self._start(part, stop_waiter)
                if stop_waiter.done():
                    return
            log.info("gateway running", extra={"parts": [p.name for p in self._parts]})
            running = {task for _, task in self._tasks}
            done, _ = await asyncio.wait(running | {stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
            for part, task in self._tasks:
                if task in done:
                    raise self._failure(part, task)
        finally:
            stop_waiter.cancel()
            await self._stop_all()

    async def _start(self, part: Part, stop_waiter: asyncio.Task[bool]) -> None:
        ready = asyncio.Event()
        task = asyncio.create_task(part.run(ready), name=part.name)
        self._tasks.append((part, task))
        ready_waiter = asyncio.create_task(ready.wait(), name=f"{part.name}:ready")
        try:
            done, _ = await asyncio.wait(
                {task, ready_waiter, stop_waiter},
                timeout=self._start_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            ready_waiter.cancel()
        if task in done:
            raise self._failure(part, task)
        if not done:
            raise PartFailed(part.name, TimeoutError(f"not ready within {self._start_timeout_s:g} s"))
        log.debug("part ready", extra={"part": part.name})

    @staticmethod
    def _failure(part: Part, task: asyncio.Task[None]) -> PartFailed:
        exc = task.exception() if not task.cancelled() else asyncio.CancelledError()
        cause = exc if exc is not None else _Stopped("ended without being asked to stop")
        return PartFailed(part.name, cause)

    async def _stop_all(self) -> None:
        """Cancel the parts in reverse start order, each finishing before the next is cancelled.

        A part gets ``stop_grace_s`` to finish; then it is cancelled again (Python 3.11's
        ``asyncio.wait_for``, used inside aiomqtt and pymodbus, can drop a cancellation that
        arrives together with a result), and after three tries it is left behind with an error in
        the log, so one stuck part never keeps the event log from closing.
        """
        while self._tasks:
            part, task = self._tasks.pop()
            for attempt in range(1, STOP_ATTEMPTS + 1):
                if task.done():
                    break
                task.cancel()
                # asyncio.wait never raises the part's exception and never swallows our own cancellation.
                await asyncio.wait({task}, timeout=self._stop_grace_s)
                if not task.done():
                    log.warning(
                        "part did not stop; cancelling it again",
                        extra={"part": part.name, "attempt": attempt, "grace_s": self._stop_grace_s},
                    )
            if not task.done():
                log.error("part did not stop; leaving it behind", extra={"part": part.name})
            elif not task.cancelled() and task.exception() is not None:
                log.warning(
                    "part ended with an error while stopping",
                    extra={"part": part.name, "error": repr(task.exception())},
                )
            log.debug("part stopped", extra={"part": part.name})
