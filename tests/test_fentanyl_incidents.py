"""The three fentanyl incidents behind this project, replayed through DERS: each is stopped.

The national investigation (HSIB, "Procurement, usability and adoption of 'smart' infusion pumps";
shared/reference/field-survey.md §6, DESIGN.md "Why it exists") found that in three critical-care
units the wrong concentration had been programmed and each time the whole syringe was given instead
of a 20-50 microgram bolus. The reports do not publish the keystrokes, so each test replays one way
that outcome arises with the example library's fentanyl 2500 microgram in 50 mL syringe, and shows
the check that stops it. Every test asserts the verdict *and* the specific check, so a test cannot
pass because something unrelated happened to block.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from pumpgw.gateway.ders import Code, Outcome, Programming, Verdict, evaluate
from pumpgw.gateway.library import Library, parse_library
from pumpgw.gateway.quantity import Quantity

EXAMPLE = Path(__file__).parents[1] / "gateway" / "examples" / "drug-library.example.toml"
SYRINGE = Quantity.parse("50 mL")  # the whole syringe: 2500 microgram of fentanyl


@cache
def library() -> Library:
    return parse_library(EXAMPLE.read_bytes(), str(EXAMPLE))


def q(text: str) -> Quantity:
    return Quantity.parse(text)


@pytest.mark.hazard("HAZ-001")
@pytest.mark.hazard("HAZ-002")
def test_incident_1_concentration_programmed_fifty_times_too_low() -> None:
    # The pump is told the syringe holds 1 microgram/mL; a 50 microgram bolus becomes 50 mL: the
    # whole 2500 microgram syringe.
    result = evaluate(
        Programming(
            "icu-adult",
            drug="fentanyl-50",
            concentration=q("1 ug/mL"),
            dose_rate=q("50 ug/h"),
            bolus_dose=q("50 ug"),
            container_volume=SYRINGE,
        ),
        library(),
    )
    assert result.verdict is Verdict.BLOCKED
    concentration = result.check("concentration")
    assert concentration is not None
    assert concentration.outcome is Outcome.HARD_LOW
    assert concentration.code is Code.DIFFERS_FROM_LIBRARY
    assert "1 microgram/mL" in concentration.message
    assert "2500 microgram in 50 mL" in concentration.message
    assert result.rate_ml_h is None


@pytest.mark.hazard("HAZ-002")
def test_incident_2_bolus_keyed_as_a_volume_is_the_whole_syringe() -> None:
    # The intended "50" (microgram) is entered as 50 mL: at the right concentration that is 2500
    # microgram. The bolus dose limit and the bolus volume limit both stop it.
    result = evaluate(
        Programming(
            "icu-adult",
            drug="fentanyl-50",
            concentration=q("50 ug/mL"),
            dose_rate=q("50 ug/h"),
            bolus_dose=q("50 mL"),
            container_volume=SYRINGE,
        ),
        library(),
    )
    assert result.verdict is Verdict.BLOCKED
    bolus = result.check("bolus_dose")
    volume = result.check("bolus_volume")
    assert bolus is not None
    assert volume is not None
    assert (bolus.outcome, bolus.code) == (Outcome.HARD_HIGH, Code.HARD_LIMIT)
    assert bolus.value == q("2500 ug")  # Decimal equality is numeric: 2500.000... == 2500
    assert (volume.outcome, volume.limit) == (Outcome.HARD_HIGH, q("2 mL"))
    assert volume.source == "fentanyl-50 / icu-adult: bolus_volume.hard_max"


@pytest.mark.hazard("HAZ-001")
@pytest.mark.hazard("HAZ-010")
def test_incident_3_library_bypassed_with_a_basic_infusion_bolus() -> None:
    # The drug library is bypassed ("basic infusion", no drug) and a 50 mL bolus is run from the
    # fentanyl syringe. Without a library entry a bolus cannot be checked: it is blocked.
    result = evaluate(
        Programming("icu-adult", rate=q("2 mL/h"), bolus_dose=q("50 mL"), container_volume=SYRINGE),
        library(),
    )
    assert result.verdict is Verdict.BLOCKED
    bolus = result.check("bolus_dose")
    assert bolus is not None
    assert (bolus.outcome, bolus.code) == (Outcome.NOT_CHECKABLE, Code.NOT_IN_LIBRARY)


@pytest.mark.hazard("HAZ-001")
def test_the_10_microgram_entry_chosen_for_a_50_microgram_syringe_is_stopped() -> None:
    # Picking the wrong library entry is the same error seen from the other side: the container
    # label says 50 microgram/mL, the entry is the 10 microgram/mL one.
    result = evaluate(
        Programming("icu-adult", drug="fentanyl-10", concentration=q("50 ug/mL"), dose_rate=q("50 ug/h")),
        library(),
    )
    concentration = result.check("concentration")
    assert result.verdict is Verdict.BLOCKED
    assert concentration is not None
    assert concentration.code is Code.DIFFERS_FROM_LIBRARY


@pytest.mark.hazard("HAZ-002")
def test_the_intended_bolus_passes() -> None:
    # The control must not stop the right thing: 50 microgram from the 50 microgram/mL syringe.
    result = evaluate(
        Programming(
            "icu-adult",
            drug="fentanyl-50",
            concentration=q("50 ug/mL"),
            dose_rate=q("50 ug/h"),
            bolus_dose=q("50 ug"),
            container_volume=SYRINGE,
        ),
        library(),
    )
    assert result.verdict is Verdict.PASS, [c.message for c in result.problems()]
    volume = result.check("bolus_volume")
    assert volume is not None
    assert volume.value == q("1 mL")
    assert result.rate_ml_h == q("1.00 mL/h")
