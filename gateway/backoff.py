"""Capped exponential backoff with full jitter, for reconnecting to pumps and brokers.

Jitter matters at hospital scale: after a broker restart or a ward-wide network blip, hundreds of
gateways would otherwise reconnect in lock-step and knock the broker over again ("full jitter",
AWS Architecture Blog, "Exponential Backoff And Jitter", 2015).
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """``next()`` gives the next delay in seconds: uniform in [0, min(cap, base * 2**n)]."""

    def __init__(
        self, base_s: float = 0.5, cap_s: float = 30.0, rand: Callable[[], float] = random.random
    ) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError(f"backoff needs 0 < base ({base_s}) <= cap ({cap_s})")
        self._base = base_s
        self._cap = cap_s
        self._rand = rand
        self._attempt = 0

    def next(self) -> float:
        ceiling = min(self._cap, self._base * 2**self._attempt)
        self._attempt = min(self._attempt + 1, 32)
        return float(ceiling * self._rand())

    def reset(self) -> None:
        self._attempt = 0

    @property
    def attempts(self) -> int:
        return self._attempt
