"""The clinical reading of channel changes: which ``infusion.*`` event each transition writes."""

from __future__ import annotations

from decimal import Decimal

import pytest
from event_samples import SAMPLES

from pumpgw.drivers.base import ChannelState, ChannelStatus
from pumpgw.gateway.clock import FakeClock
from pumpgw.gateway.eventlog import EventLog
from pumpgw.gateway.events import EventType, payload_problem
from pumpgw.gateway.monitor import BedsideMonitor, infusion_events, infusion_json
from pumpgw.gateway.quantity import Quantity

S = ChannelState


def ch(state: ChannelState, rate: str = "4.00") -> ChannelStatus:
    return ChannelStatus(
        1, state, rate=Quantity(Decimal(rate), "mL/h"), vtbi=Quantity.of("50", "mL"),
        volume_infused=Quantity.of("1.5", "mL"), drug="fentaNYL",
        concentration=Quantity.of("50", "ug/mL"), dose_rate=Quantity.of("200", "ug/h"),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (S.IDLE, S.INFUSING, [EventType.INFUSION_STARTED]),
        (S.STANDBY, S.INFUSING, [EventType.INFUSION_STARTED]),
        (S.INFUSING, S.PAUSED, [EventType.INFUSION_PAUSED]),
        (S.PAUSED, S.INFUSING, [EventType.INFUSION_RESUMED]),
        (S.INFUSING, S.BOLUS, [EventType.INFUSION_BOLUS]),
        (S.BOLUS, S.INFUSING, []),  # the bolus ended; the infusion goes on
        (S.INFUSING, S.KVO, [EventType.INFUSION_COMPLETED]),
        (S.INFUSING, S.COMPLETE, [EventType.INFUSION_COMPLETED]),
        (S.COMPLETE, S.IDLE, []),  # completed was said already
        (S.KVO, S.IDLE, [EventType.INFUSION_STOPPED]),
        (S.INFUSING, S.IDLE, [EventType.INFUSION_STOPPED]),
        (S.PAUSED, S.OFF, [EventType.INFUSION_STOPPED]),
        (S.ALARM, S.IDLE, [EventType.INFUSION_STOPPED]),
        (S.INFUSING, S.ALARM, []),  # the alarm events say it
        (S.IDLE, S.PRIMING, []),
        (S.IDLE, S.STANDBY, []),
    ],
)
def test_each_transition_writes_the_infusion_event_it_means(
    before: ChannelState, after: ChannelState, expected: list[EventType]
) -> None:
    assert [t for t, _ in infusion_events(ch(before), ch(after))] == expected


def test_a_rate_change_while_infusing_says_the_old_rate() -> None:
    events = infusion_events(ch(S.INFUSING, "4.00"), ch(S.INFUSING, "8.00"))
    assert events == [(EventType.INFUSION_RATE_CHANGED, {"previous_rate_ml_h": "4.00"})]
    assert infusion_events(ch(S.INFUSING), ch(S.INFUSING)) == []
    assert infusion_events(ch(S.PAUSED, "4.00"), ch(S.PAUSED, "8.00")) == []


def test_the_first_status_of_a_channel_is_not_a_start() -> None:
    assert infusion_events(None, ch(S.INFUSING)) == []


@pytest.mark.parametrize("type_", [t for t in EventType if t.value.startswith("infusion.")])
def test_infusion_payloads_fit_the_schema(type_: EventType) -> None:
    extra = {k: v for k, v in SAMPLES[type_].items() if k not in infusion_json(ch(S.INFUSING))}
    assert payload_problem(type_, {**infusion_json(ch(S.INFUSING)), **extra}) is None


async def test_the_monitor_writes_them_with_exact_numbers(eventlog: EventLog) -> None:
    monitor = BedsideMonitor(eventlog, {"p1": "x"}, FakeClock())
    for status in (ch(S.IDLE), ch(S.INFUSING), ch(S.INFUSING, "6.25"), ch(S.IDLE)):
        await monitor.on_status("p1", (status,), 0.0)
    events = [e for e in await eventlog.read_after(0) if e.type.startswith("infusion.")]
    assert [e.type for e in events] == ["infusion.started", "infusion.rate_changed", "infusion.stopped"]
    assert events[1].payload["rate_ml_h"] == "6.25"
    assert events[1].payload["previous_rate_ml_h"] == "4.00"
    assert events[0].payload["concentration"] == "50 ug/mL"
    assert events[2].pump == "p1"
    assert events[2].channel == 1
