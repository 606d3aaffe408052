"""One valid payload for every event type, for tests that need real events of any kind.

Each sample is what the code that emits the type writes (or, for the bedside-workflow types not
emitted yet, what docs/events.md says it will write). ``tests/test_event_schema.py`` checks that
there is one per type and that each validates against the published JSON Schema.
"""

from __future__ import annotations

from typing import Any

from pumpgw.gateway.events import EventType

_INFUSION: dict[str, Any] = {
    "state": "infusing",
    "rate_ml_h": "4.00",
    "vtbi_ml": "50",
    "volume_infused_ml": "0.0",
    "drug": "fentaNYL",
    "concentration": "50 ug/mL",
    "dose_rate": "200 ug/h",
}

SAMPLES: dict[EventType, dict[str, Any]] = {
    EventType.GATEWAY_STARTED: {"gateway": "gw-1", "software_version": "0.1.0"},
    EventType.GATEWAY_STOPPED: {},
    EventType.CLOCK_ADJUSTED: {
        "step_s": "-3600.000",
        "wall_before": "2026-11-22T04:00:00.000Z",
        "wall_after": "2026-11-22T03:00:00.000Z",
    },
    EventType.LOG_NEAR_CAPACITY: {
        "undelivered": 80,
        "max_events": 100,
        "percent": 80,
        "oldest_undelivered_time": "2026-11-22T03:00:00.000Z",
        "destinations": ["mqtt"],
    },
    EventType.LOG_PRUNED: {"count": 10, "through_seq": 10, "through_hash": "a" * 64},
    EventType.LOG_WRITE_RECOVERED: {
        "refused": 3,
        "first_failure": "2026-11-22T03:00:00.000Z",
        "last_failure": "2026-11-22T03:05:00.000Z",
        "error": "the disk is full",
    },
    EventType.PUMP_IDENTIFIED: {
        "protocol": "modbus-tcp",
        "manufacturer": "Rig",
        "model": "RIG-MC2",
        "serial": "SN-1",
        "firmware": "1.0",
        "library_version": "7",
        "channels": 2,
    },
    EventType.LINK_LOST: {"error": "no response after 3 polls"},
    EventType.LINK_RESTORED: {},
    EventType.CHANNEL_STATE: {
        "from": "idle",
        "to": "infusing",
        "rate_ml_h": "4.00",
        "volume_infused_ml": "0.0",
        "drug": "fentaNYL",
    },
    EventType.ALARM_RAISED: {"alarm": "occlusion-downstream"},
    EventType.ALARM_CLEARED: {"alarm": "occlusion-downstream"},
    EventType.INFUSION_STARTED: _INFUSION,
    EventType.INFUSION_RATE_CHANGED: {**_INFUSION, "previous_rate_ml_h": "2.00"},
    EventType.INFUSION_BOLUS: {**_INFUSION, "state": "bolus"},
    EventType.INFUSION_PAUSED: {**_INFUSION, "state": "paused"},
    EventType.INFUSION_RESUMED: _INFUSION,
    EventType.INFUSION_COMPLETED: {**_INFUSION, "state": "kvo", "volume_infused_ml": "50.0"},
    EventType.INFUSION_STOPPED: {**_INFUSION, "state": "idle", "volume_infused_ml": "12.5"},
    EventType.INFUSION_UNVERIFIED: {**_INFUSION, "reason": "no active order for this patient matches"},
    EventType.LIBRARY_LOADED: {
        "name": "Example library",
        "version": 7,
        "hash": "sha256:" + "b" * 64,
        "example": True,
        "author": "A. Pharmacist",
        "author_key_id": "ed25519:aaaa",
        "reviewer": "B. Pharmacist",
        "reviewer_key_id": "ed25519:bbbb",
        "pump_libraries": [{"model": "RIG-MC2", "version": "7"}],
    },
    EventType.LIBRARY_UNAVAILABLE: {"reason": "no drug library is installed", "required": True},
    EventType.PUMP_LIBRARY_OUTDATED: {
        "model": "RIG-MC2",
        "serial": "SN-1",
        "reported": "6",
        "expected": "7",
        "library_version": 7,
        "library_hash": "sha256:" + "b" * 64,
        "reason": "the pump's drug library is older",
    },
    EventType.PUMP_LIBRARY_CURRENT: {
        "model": "RIG-MC2",
        "serial": "SN-1",
        "reported": "7",
        "expected": "7",
        "library_version": 7,
        "library_hash": "sha256:" + "b" * 64,
        "reason": "the pump reports the expected library",
    },
    EventType.SCAN_ACCEPTED: {"kind": "medication", "data": {"01": "09521234543213"}, "scanner": "s1"},
    EventType.SCAN_REJECTED: {
        "raw": "]d201095212345432131727",
        "reason": "the group separator after lot 10 was dropped",
        "expected": "medication",
        "scanner": "s1",
    },
    EventType.ORDER_RECEIVED: {
        "source": "hl7",
        "order_id": "ORD-1",
        "status": "active",
        "drug": "fentanyl",
        "drug_code": "09521234543213",
        "dose": "200 ug/h",
        "rate": None,
        "concentration": "50 ug/mL",
        "vtbi": "50 mL",
        "duration": None,
        "route": "IV",
        "ordered_at": "2026-11-22T02:55:00.000Z",
    },
    EventType.ORDER_REJECTED: {"source": "hl7", "order_id": "ORD-2", "code": "9001", "reason": "stale"},
    EventType.RECONCILIATION: {
        "verdict": "mismatch",
        "checks": [
            {
                "check": "concentration",
                "outcome": "mismatch",
                "expected": "10 ug/mL",
                "found": "50 ug/mL",
                "reason": "the container is five times the ordered concentration",
            }
        ],
    },
    EventType.DERS_RESULT: {
        "library_hash": "sha256:" + "b" * 64,
        "library_version": 7,
        "care_area": "icu-adult",
        "drug": "fentanyl-50",
        "verdict": "pass",
        "rate_ml_h": "4.00",
        "checks": [
            {
                "parameter": "dose",
                "outcome": "within",
                "code": "PGW-100",
                "message": "within limits",
                "value": "200 ug/h",
                "limit": None,
                "limit_name": None,
                "source": "fentanyl-50/icu-adult",
                "override": None,
            }
        ],
        "overrides": [],
        "refused_overrides": [],
    },
    EventType.DERS_OVERRIDE: {
        "parameter": "dose",
        "clinician": "RN-1",
        "reason": "titration per protocol",
        "value": "300 ug/h",
        "limit": "250 ug/h",
        "limit_name": "soft_max",
    },
    EventType.PROGRAMMING_SENT: {
        "drug": "fentaNYL",
        "concentration": "50 ug/mL",
        "rate_ml_h": "4.00",
        "vtbi_ml": "50",
        "dose_rate": "200 ug/h",
        "bolus": None,
    },
    EventType.PROGRAMMING_READ_BACK: {
        "matches": False,
        "differences": [{"field": "rate_ml_h", "sent": "4.00", "read": "40.0"}],
    },
    EventType.WORKFLOW_ORDER_SELECTED: {
        "order_id": "ORD-1",
        "drug": "fentanyl (http://www.nlm.nih.gov/research/umls/rxnorm 4337)",
        "how": "only order",
    },
    EventType.WORKFLOW_BLOCKED: {
        "state": "order_matched",
        "reason": "order, container and pump do not match: concentration mismatch (code PGW-203)",
    },
    EventType.WORKFLOW_CANCELLED: {"state": "library_checked", "by": "795260646688514634"},
    EventType.WORKFLOW_TIMED_OUT: {"state": "clinician", "after_s": "300"},
    EventType.WORKFLOW_ABORTED: {
        "state": "pump_channel",
        "reason": "wristband of 123456789012345675 scanned",
    },
    EventType.WORKFLOW_CONFIRMED: {"what": "start", "by": "795260646688514634"},
    EventType.WORKFLOW_INFUSING: {"order_id": "ORD-1"},
    EventType.DELIVERY_FAILED: {"destination": "mqtt", "error": "connection refused", "backlog": 12},
    EventType.DELIVERY_RESTORED: {"destination": "mqtt", "failed_for_s": "42.5", "attempts": 7},
    EventType.DELIVERY_REJECTED: {
        "destination": "hl7-epr",
        "event_id": "0190f0a0-0000-7000-8000-000000000000",
        "code": "AE",
        "reason": "unknown patient",
    },
}


def sample(type: EventType) -> dict[str, Any]:
    """A fresh copy of the sample payload of ``type``."""
    import copy

    return copy.deepcopy(SAMPLES[type])
