"""Whether a pump may be auto-programmed as far as the drug library goes: every rule of
pump_fitness, and the gateway-level library state (pure: no I/O, no clock)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pumpgw.drivers.base import PumpIdentity
from pumpgw.gateway.library import Library, parse_library
from pumpgw.gateway.library_fitness import (
    CURRENT,
    NO_LIBRARY,
    NOT_IDENTIFIED,
    NOT_LOADED,
    NOT_REPORTED,
    OUTDATED,
    UNKNOWN_MODEL,
    Fitness,
    LibraryState,
    pump_fitness,
)
from pumpgw.gateway.library_signing import VerifiedLibrary

EXAMPLE = Path(__file__).resolve().parents[1] / "gateway" / "examples" / "drug-library.example.toml"


@pytest.fixture(scope="module")
def library() -> Library:
    return parse_library(EXAMPLE.read_bytes(), str(EXAMPLE))


def rig_pump(library_version: str | None = "7", model: str = "RIG-MC2") -> PumpIdentity:
    return PumpIdentity("modbus-tcp", "pumpgw bench rig", model, "RIG-MB-0001", "1.0.0", library_version, 2)


def test_the_example_library_names_version_7_for_the_rigs_modbus_pumps(library: Library) -> None:
    assert library.pump_library_version("RIG-MC2") == "7"


@pytest.mark.hazard("HAZ-004")
def test_without_a_verified_library_no_pump_is_fit(library: Library) -> None:
    for identity in (None, rig_pump("7"), rig_pump(None)):
        fitness = pump_fitness(identity, None)
        assert fitness == Fitness(False, NO_LIBRARY, "no verified drug library is installed on this gateway")


@pytest.mark.hazard("HAZ-003")
def test_a_pump_not_identified_yet_is_not_fit(library: Library) -> None:
    fitness = pump_fitness(None, library)
    assert not fitness.fit
    assert fitness.code == NOT_IDENTIFIED
    assert "not been identified" in fitness.reason
    assert (fitness.reported, fitness.expected) == (None, None)


@pytest.mark.hazard("HAZ-003")
def test_a_pump_with_the_expected_version_is_fit(library: Library) -> None:
    fitness = pump_fitness(rig_pump("7"), library)
    assert fitness.fit
    assert fitness.code == CURRENT
    assert (fitness.reported, fitness.expected) == ("7", "7")
    assert "Example library v7" in fitness.reason


@pytest.mark.hazard("HAZ-003")
def test_an_older_pump_library_is_outdated_and_not_fit(library: Library) -> None:
    fitness = pump_fitness(rig_pump("6"), library)
    assert not fitness.fit
    assert fitness.code == OUTDATED
    assert (fitness.reported, fitness.expected) == ("6", "7")
    assert fitness.reason.startswith(
        "pump reports drug library version 6; this gateway's library (Example library v7) expects 7 "
        "for RIG-MC2"
    )
    assert "update the pump's library" in fitness.reason


@pytest.mark.hazard("HAZ-003")
@pytest.mark.parametrize(
    ("reported", "advice"),
    [("8", "install the matching library release on the gateway"), ("7a", "the versions differ")],
)
def test_any_other_version_is_not_fit_either(library: Library, reported: str, advice: str) -> None:
    fitness = pump_fitness(rig_pump(reported), library)
    assert (fitness.fit, fitness.code, fitness.reported, fitness.expected) == (False, OUTDATED, reported, "7")
    assert advice in fitness.reason


@pytest.mark.hazard("HAZ-003")
def test_a_version_for_a_model_the_library_does_not_name_cannot_be_checked(library: Library) -> None:
    fitness = pump_fitness(rig_pump("7", model="OTHER-9"), library)
    assert not fitness.fit  # fail safe: an unverifiable pump library is not a current one
    assert fitness.code == UNKNOWN_MODEL
    assert (fitness.reported, fitness.expected) == ("7", None)
    assert "names no pump library version for OTHER-9" in fitness.reason
    assert "cannot be checked" in fitness.reason


@pytest.mark.hazard("HAZ-003")
def test_a_pump_that_reports_no_library_version_relies_on_the_gateways_checks(library: Library) -> None:
    newera = PumpIdentity("newera", "New Era", "NE-1000", None, "V3.928", None, 1)
    fitness = pump_fitness(newera, library)
    assert fitness.fit
    assert fitness.code == NOT_REPORTED
    assert fitness.reported is None
    assert "does not report a drug library version" in fitness.reason
    assert "only drug library check" in fitness.reason


def test_fitness_as_json_is_plain_json(library: Library) -> None:
    data = pump_fitness(rig_pump("6"), library).as_json()
    assert set(data) == {"fit", "code", "reason", "reported", "expected"}
    assert json.loads(json.dumps(data)) == data


def test_library_state_payloads_and_summary(library: Library) -> None:
    verified = VerifiedLibrary(
        library, "Ann Author", "Rob Reviewer", "ed25519:" + "a" * 16, "ed25519:" + "b" * 16
    )
    state = LibraryState(verified)
    payload = state.loaded_payload()
    assert payload == {
        "name": "Example library",
        "version": 7,
        "hash": library.hash,
        "example": True,
        "author": "Ann Author",
        "author_key_id": "ed25519:" + "a" * 16,
        "reviewer": "Rob Reviewer",
        "reviewer_key_id": "ed25519:" + "b" * 16,
        "pump_libraries": [{"model": "RIG-MC2", "version": "7"}],
    }
    status = state.as_json()
    assert status["available"] is True
    assert status["label"] == library.label
    assert "EXAMPLE" in state.summary()
    assert library.label in state.summary()
    assert json.loads(json.dumps(status)) == status

    missing = LibraryState(None, "no library installed", required=True)
    assert missing.unavailable_payload() == {"reason": "no library installed", "required": True}
    assert missing.as_json() == {"available": False, "required": True, "reason": "no library installed"}
    assert "NONE - auto-programming unavailable (no library installed)" in missing.summary()
    assert "monitoring only" in LibraryState(None, "x", required=False).summary()
    with pytest.raises(ValueError, match="no library"):
        missing.loaded_payload()
    assert NOT_LOADED.library is None
