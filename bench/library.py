"""Benchmarks of the safety core: DERS evaluations per second, and loading a 2,000-entry library.

Run from the repository root after scripts/bootstrap:   .venv/bin/python bench/library.py

1. DERS evaluations per second on one core (goal: at least 20,000/s, so the check is never the
   slow step of a programming). A mix of realistic programmings against the example library:
   weight-based and absolute doses, a bolus, a soft limit with an override, a hard stop, a basic
   infusion. Baseline, same run: the dose-to-mL/h conversion alone for the same programmings
   (``dose.convert``), the least arithmetic any check must do; the ratio shows what the checks,
   messages and result objects cost on top.
2. Loading and verifying a 2,000-entry library (goal: under 0.5 s): parse TOML, check every
   entry, compute the canonical hash, verify the author's and reviewer's Ed25519 signatures.
   Baseline, same run: ``tomllib.loads`` of the same text (reading it and nothing else).

These are measurements, not tests: every figure is repeated and shown as median (min-max); nothing
fails on a number.
"""

from __future__ import annotations

import statistics
import time
import tomllib
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from pumpgw.gateway.ders import Override, Programming, evaluate
from pumpgw.gateway.dose import Concentration, convert
from pumpgw.gateway.library import Library, parse_library
from pumpgw.gateway.library_signing import TrustStore, generate_key, make_trusted_key, sign, verify
from pumpgw.gateway.quantity import Quantity

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "gateway" / "examples" / "drug-library.example.toml"
REPEATS = 7


def q(text: str) -> Quantity:
    return Quantity.parse(text)


def programmings() -> list[tuple[Programming, list[Override]]]:
    reason = "Dose confirmed with the prescriber"
    return [
        (
            Programming(
                "icu-adult",
                drug="noradrenaline-80",
                concentration=q("80 ug/mL"),
                dose_rate=q("0.1 ug/kg/min"),
                weight=q("73.4 kg"),
            ),
            [],
        ),
        (
            Programming(
                "icu-adult",
                drug="fentanyl-50",
                concentration=q("50 ug/mL"),
                dose_rate=q("100 ug/h"),
                bolus_dose=q("50 ug"),
                container_volume=q("50 mL"),
            ),
            [],
        ),
        (
            Programming(
                "icu-adult", drug="fentanyl-50", concentration=q("50 ug/mL"), dose_rate=q("250 ug/h")
            ),
            [Override("dose", "RN A", reason)],
        ),
        (
            Programming(
                "icu-adult",
                drug="heparin-50",
                concentration=q("50 [iU]/mL"),
                dose_rate=q("18 [iU]/kg/h"),
                weight=q("80 kg"),
                vtbi=q("500 mL"),
            ),
            [],
        ),
        (
            Programming("icu-adult", drug="fentanyl-50", concentration=q("1 ug/mL"), dose_rate=q("50 ug/h")),
            [],
        ),
        (Programming("ward-adult", rate=q("100 mL/h"), vtbi=q("1000 mL")), []),
        (
            Programming(
                "maternity",
                drug="oxytocin-30-in-500",
                concentration=q("60 m[iU]/mL"),
                dose_rate=q("2 m[iU]/min"),
            ),
            [],
        ),
        (
            Programming(
                "icu-adult",
                drug="propofol-10",
                concentration=q("10 mg/mL"),
                dose_rate=q("2 mg/kg/h"),
                weight=q("80 kg"),
            ),
            [],
        ),
    ]


def rate(n: int, fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - start)


def summary(values: list[float], fmt: str = "{:,.0f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def bench_ders(library: Library) -> tuple[float, float]:
    cases = programmings()
    conversions = []
    for p, _ in cases:
        drug = library.drugs.get(p.drug or "")
        dose = p.dose_rate or p.rate
        assert dose is not None
        conc = p.concentration if isinstance(p.concentration, Concentration) else None
        if (
            drug is not None
            and drug.concentration
            and drug.concentration.amount
            and drug.concentration.volume
        ):
            conc = Concentration(drug.concentration.amount, drug.concentration.volume)
        conversions.append((dose, conc, p.weight))

    def all_evaluations() -> None:
        for p, overrides in cases:
            evaluate(p, library, overrides=overrides)

    def all_conversions() -> None:
        for dose, conc, weight in conversions:
            convert(dose, "mL/h", concentration=conc, weight=weight)

    loops = 400
    evals, bases = [], []
    for _ in range(REPEATS):
        evals.append(rate(loops, all_evaluations) * len(cases))
        bases.append(rate(loops, all_conversions) * len(cases))
    print("DERS evaluations per second (one core, mixed programmings; goal >= 20,000/s)")
    print(f"  evaluate()              {summary(evals)} /s")
    print(f"  baseline: convert()     {summary(bases)} /s")
    print(f"  ratio evaluate/convert  {statistics.median(evals) / statistics.median(bases):.2f}")
    return statistics.median(evals), statistics.median(bases)


def big_library(entries: int) -> str:
    """The example's header and care areas, and ``entries`` drug entries made from its own."""
    text = EXAMPLE.read_text(encoding="utf-8")
    head, _, _ = text.partition("[[drugs]]")
    blocks = ["[[drugs]]" + b for b in text.split("[[drugs]]")[1:]]
    out = [head]
    for i in range(entries):
        block = blocks[i % len(blocks)]
        # Unique ids and names; no GTINs (each must be unique and check-digit valid).
        block = block.replace('id = "', f'id = "n{i}-', 1).replace('name = "', f'name = "n{i} ', 1)
        block = "\n".join(line for line in block.splitlines() if not line.startswith("codes ="))
        out.append(block + "\n")
    return "".join(out)


def bench_load(entries: int = 2000) -> float:
    text = big_library(entries)
    raw = text.encode("utf-8")
    library = parse_library(raw, "big")
    author_pem, author_pub = generate_key()
    reviewer_pem, reviewer_pub = generate_key()
    trust = TrustStore(())
    trust = trust.with_key(make_trusted_key("Bench Author", ["author"], author_pub, "bench"))
    trust = trust.with_key(make_trusted_key("Bench Reviewer", ["reviewer"], reviewer_pub, "bench"))
    approvals = sign(library, author_pem, "author", "Bench Author", "2026-11-22T10:00:00Z")
    approvals = sign(library, reviewer_pem, "reviewer", "Bench Reviewer", "2026-11-22T10:05:00Z", approvals)

    def load_and_verify() -> None:
        verify(parse_library(raw, "big"), approvals, trust, "big")

    loads, parses = [], []
    for _ in range(REPEATS):
        start = time.perf_counter()
        load_and_verify()
        loads.append(time.perf_counter() - start)
        start = time.perf_counter()
        tomllib.loads(text, parse_float=Decimal)
        parses.append(time.perf_counter() - start)
    size = f"{len(library.drugs):,}-entry library ({len(raw) / 1e6:.2f} MB; goal < 0.5 s)"
    print(f"\nLoading and verifying a {size}")
    print(f"  parse+check+hash+verify {summary(loads, '{:.3f}')} s")
    print(f"  baseline: tomllib.loads {summary(parses, '{:.3f}')} s")
    print(f"  ratio                   {statistics.median(loads) / statistics.median(parses):.1f}")
    return statistics.median(loads)


def main() -> None:
    library = parse_library(EXAMPLE.read_bytes(), str(EXAMPLE))
    evals, _ = bench_ders(library)
    load = bench_load()
    print("\nSummary")
    print(f"  DERS: {evals:,.0f} evaluations/s ({'meets' if evals >= 20000 else 'BELOW'} the 20,000/s goal)")
    print(f"  2,000-entry library: {load:.3f} s ({'meets' if load < 0.5 else 'ABOVE'} the 0.5 s goal)")


if __name__ == "__main__":
    main()
