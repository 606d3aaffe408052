"""The event vocabulary is defined once (gateway/events.py) and published as a JSON Schema.

``docs/schema/events-1.schema.json`` is what a hospital's analytics or integration engine validates
the exported log and the MQTT stream against, with a validator that is not ours (``jsonschema``,
Draft 2020-12). So the file must be exactly what the code produces, every type must have a payload
model, and what the schema refuses the log refuses too (and the other way round): an event that
would not validate is never written (tests/test_demo.py validates every event of a real run).
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from typing import Any

import pytest
from event_samples import SAMPLES, sample
from jsonschema import Draft202012Validator

from pumpgw.gateway.events import PAYLOADS, SCHEMA_VERSION, EventType, json_schema, payload_problem

pytestmark = pytest.mark.hazard("HAZ-013")

ROOT = Path(__file__).parents[1]
PUBLISHED = ROOT / "docs" / "schema" / "events-1.schema.json"


def validator() -> Draft202012Validator:
    schema = json.loads(PUBLISHED.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def record(type_: EventType, payload: dict[str, Any], **over: Any) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "seq": 1,
        "id": "01934e7f-8a2b-7c3d-8e4f-0123456789ab",
        "time": "2026-11-22T03:19:16.123Z",
        "gateway": "gw-1",
        "type": str(type_),
        "pump": "p1",
        "channel": 1,
        "patient": "MRN-1",
        "order": "ORD-1",
        "clinician": "RN-1",
        "payload": payload,
        "prev_hash": "0" * 64,
        "hash": "1" * 64,
        **over,
    }


def test_the_published_schema_is_what_the_code_produces() -> None:
    gen = runpy.run_path(str(ROOT / "scripts" / "gen_schemas.py"))
    assert PUBLISHED.read_text(encoding="utf-8") == gen["render"](json_schema()), (
        "docs/schema/events-1.schema.json is out of date: run scripts/gen-schemas"
    )


def test_every_type_has_a_payload_model_and_a_sample() -> None:
    assert set(PAYLOADS) == set(EventType)
    assert set(SAMPLES) == set(EventType)


@pytest.mark.parametrize("type_", list(EventType))
def test_every_sample_validates_in_both(type_: EventType) -> None:
    assert payload_problem(type_, sample(type_)) is None
    validator().validate(record(type_, sample(type_)))


@pytest.mark.parametrize("type_", list(EventType))
def test_an_unknown_key_is_refused_by_both(type_: EventType) -> None:
    payload = {**sample(type_), "surprise": "x"}
    problem = payload_problem(type_, payload)
    assert problem is not None
    assert "surprise" in problem
    assert not validator().is_valid(record(type_, payload))


@pytest.mark.parametrize("type_", [t for t in EventType if SAMPLES[t]])
def test_a_missing_key_is_refused_by_both(type_: EventType) -> None:
    payload = sample(type_)
    key = sorted(payload)[0]
    del payload[key]
    problem = payload_problem(type_, payload)
    assert problem is not None
    assert key in problem
    assert not validator().is_valid(record(type_, payload))


def test_a_float_where_an_exact_decimal_belongs_is_refused_by_both() -> None:
    payload = {**sample(EventType.INFUSION_STARTED), "rate_ml_h": 4.0}
    assert payload_problem(EventType.INFUSION_STARTED, payload) is not None
    assert not validator().is_valid(record(EventType.INFUSION_STARTED, payload))
    payload = {**sample(EventType.INFUSION_STARTED), "rate_ml_h": "4.0e1"}
    assert payload_problem(EventType.INFUSION_STARTED, payload) is not None
    assert not validator().is_valid(record(EventType.INFUSION_STARTED, payload))


def test_the_envelope_is_checked_too() -> None:
    v = validator()
    good = record(EventType.ALARM_RAISED, {"alarm": "occlusion"})
    assert v.is_valid(good)
    assert not v.is_valid({**good, "type": "alarm.made_up"})
    assert not v.is_valid({**good, "schema": "0.1"})
    assert not v.is_valid({**good, "id": "not-a-uuid"})
    assert not v.is_valid({**good, "id": "01934e7f-8a2b-4c3d-8e4f-0123456789ab"})  # v4, not time-ordered
    assert not v.is_valid({**good, "hash": "xyz"})
    assert not v.is_valid({**good, "time": "22/11/2026 03:19"})
    missing = dict(good)
    del missing["patient"]
    assert not v.is_valid(missing)  # never omitted: null when unknown


def test_the_schema_version_is_the_one_events_carry() -> None:
    schema = json.loads(PUBLISHED.read_text(encoding="utf-8"))
    assert schema["$id"] == "urn:pumpgw:schema:events:1"
    assert SCHEMA_VERSION.split(".")[0] == "1"  # the file name's major version
    assert validator().is_valid(record(EventType.GATEWAY_STOPPED, {}, schema=SCHEMA_VERSION))
