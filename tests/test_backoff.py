"""Reconnect backoff: capped, exponential, jittered."""

from __future__ import annotations

import pytest

from pumpgw.gateway.backoff import Backoff


def test_ceiling_doubles_up_to_the_cap() -> None:
    b = Backoff(base_s=0.5, cap_s=4.0, rand=lambda: 1.0)
    assert [b.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.next() == 0.5


def test_full_jitter_spreads_delays_from_zero() -> None:
    b = Backoff(base_s=1.0, cap_s=8.0, rand=lambda: 0.25)
    assert [b.next() for _ in range(3)] == [0.25, 0.5, 1.0]


def test_invalid_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(base_s=2.0, cap_s=1.0)
