"""Exact quantities for clinical values: a ``Decimal`` and a UCUM unit, checked at construction.

Doses, rates, volumes and concentrations are never binary floats (``0.1 + 0.2 != 0.3`` is not an
acceptable property of a morphine rate). A :class:`Quantity` refuses floats, NaN and infinities, and
refuses units it does not know, so a typo in a unit fails where it is made instead of in a dose
calculation later.

Units are UCUM case-sensitive codes (https://ucum.org/ucum): ``mL/h``, ``ug/kg/min``, ``[iU]/h``.
Each known unit has a dimension and an exact factor to the dimension's base unit; conversion
between units of one dimension multiplies exact decimals and never rounds. Conversion *across*
dimensions (a dose rate to mL/h through a concentration and a weight) is the drug library's job,
because it needs clinical factors that a unit table does not have.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, Inexact, InvalidOperation, localcontext
from functools import cache
from typing import Final

from .errors import QuantityError

# Amounts a drug is measured in, each with its units and their factor to the first (base) unit.
# Dose units are built from these: amount [/ kg | / m2] [/ h | / min] (``ug/kg/min``), and so are
# concentrations: amount / mL or L (``ug/mL``). Building them from one table keeps every factor exact
# and the set of units consistent (if ``mg/kg/h`` exists, so does ``mg/kg/min``).
_AMOUNTS: Final[dict[str, dict[str, Decimal]]] = {
    "mass": {"mg": Decimal(1), "g": Decimal(1000), "ug": Decimal("0.001"), "ng": Decimal("1E-6")},
    # [iU] is a metric unit in UCUM, so m[iU] (milli-units: oxytocin) is a valid code.
    "units": {"[iU]": Decimal(1), "m[iU]": Decimal("0.001"), "k[iU]": Decimal(1000)},
    "substance": {"mmol": Decimal(1), "umol": Decimal("0.001")},
    "equivalents": {"meq": Decimal(1)},
    "volume": {"mL": Decimal(1), "L": Decimal(1000), "uL": Decimal("0.001")},
}
# Per patient: nothing, per kg of body mass, per m2 of body surface area.
_BASES: Final[dict[str, tuple[str, Decimal]]] = {
    "": ("", Decimal(1)),
    "kg": ("/body mass", Decimal(1)),
    "m2": ("/area", Decimal(1)),
}
# Per time, relative to per hour. No per day: 1/24 has no exact decimal form.
_PER_TIME: Final[dict[str, Decimal]] = {"h": Decimal(1), "min": Decimal(60)}
_CONC_VOLUMES: Final[dict[str, Decimal]] = {"mL": Decimal(1), "L": Decimal("0.001")}


def _build_dimensions() -> dict[str, dict[str, Decimal]]:
    dims: dict[str, dict[str, Decimal]] = {
        "time": {"s": Decimal(1), "min": Decimal(60), "h": Decimal(3600)},
        "body mass": {"kg": Decimal(1), "g{body}": Decimal("0.001")},
        "length": {"m": Decimal(1), "cm": Decimal("0.01")},  # patient height (PIV OBX 68060)
        "area": {"m2": Decimal(1)},
        "pressure": {"mm[Hg]": Decimal(1)},
        "ratio": {"%": Decimal(1)},
    }
    for amount, units in _AMOUNTS.items():
        for basis, (basis_dim, basis_factor) in _BASES.items():
            suffix = f"/{basis}" if basis else ""
            if basis:  # amount per patient, no time: a bolus of 1 ug/kg
                dims.setdefault(f"{amount}{basis_dim}", {}).update(
                    {f"{u}{suffix}": f * basis_factor for u, f in units.items()}
                )
            else:
                dims.setdefault(amount, {}).update(units)
            for per, time_factor in _PER_TIME.items():
                dims.setdefault(f"{amount}{basis_dim}/time", {}).update(
                    {f"{u}{suffix}/{per}": f * basis_factor * time_factor for u, f in units.items()}
                )
        if amount != "volume":
            dims[f"{amount}/volume"] = {
                f"{u}/{v}": f * vf for u, f in units.items() for v, vf in _CONC_VOLUMES.items()
            }
    return dims


# dimension name -> {UCUM code: factor to the dimension's first (base) unit}
_DIMENSIONS: Final[dict[str, dict[str, Decimal]]] = _build_dimensions()

_UNIT_DIMENSION: Final[dict[str, str]] = {
    unit: dimension for dimension, units in _DIMENSIONS.items() for unit in units
}

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def known_units() -> frozenset[str]:
    """Every UCUM code a :class:`Quantity` accepts."""
    return frozenset(_UNIT_DIMENSION)


def dimension_of(unit: str) -> str:
    """The dimension of ``unit`` (``"volume/time"`` for ``mL/h``). Raises QuantityError if unknown."""
    try:
        return _UNIT_DIMENSION[unit]
    except KeyError:
        raise QuantityError("", unit, "unknown unit (not in the gateway's UCUM table)") from None


@dataclass(frozen=True, slots=True)
class UnitParts:
    """A dose-like unit taken apart: ``ug/kg/min`` is amount ``ug`` per ``kg`` per ``min``.

    ``amount_kind`` is ``mass``, ``units``, ``substance``, ``equivalents`` or ``volume``.
    """

    amount: str
    amount_kind: str
    basis: str | None  # "kg", "m2" or None
    per_time: str | None  # "h", "min" or None


def base_value(q: Quantity) -> Decimal:
    """``q``'s value in its dimension's base unit (exact), to compare quantities in different units."""
    return q.value * _DIMENSIONS[q.dimension][q.unit]


@cache  # a handful of unit codes, asked for on every dose check
def unit_parts(unit: str) -> UnitParts:
    """Take a dose, bolus or rate unit apart. Raises QuantityError if ``unit`` is not one of those."""
    dimension_of(unit)
    pieces = unit.split("/")
    amount = pieces[0]
    kind = next((k for k, units in _AMOUNTS.items() if amount in units), None)
    rest = pieces[1:]
    basis = rest.pop(0) if rest and rest[0] in _BASES and rest[0] else None
    per_time = rest.pop(0) if rest and rest[0] in _PER_TIME else None
    if kind is None or rest:
        raise QuantityError("", unit, "not a dose, bolus or rate unit (amount [/kg|/m2] [/h|/min])")
    return UnitParts(amount, kind, basis, per_time)


_AMOUNT_FACTORS: Final[dict[str, Decimal]] = {u: f for units in _AMOUNTS.values() for u, f in units.items()}


def amount_factor(unit: str) -> Decimal:
    """The exact factor of an amount unit to its kind's base unit (``ug`` -> 0.001, base ``mg``)."""
    try:
        return _AMOUNT_FACTORS[unit]
    except KeyError:
        raise QuantityError("", unit, "not an amount unit") from None


def time_factor_per_hour(unit: str) -> Decimal:
    """How many of ``unit`` per hour are one per ``unit`` (``min`` -> 60)."""
    try:
        return _PER_TIME[unit]
    except KeyError:
        raise QuantityError("", unit, "not a per-time unit (h or min)") from None


@dataclass(frozen=True, slots=True)
class Quantity:
    """An exact value with its UCUM unit. Frozen; validated when built.

    Raises :class:`QuantityError` for a float, a NaN or infinite value, or an unknown unit.
    """

    value: Decimal
    unit: str

    def __post_init__(self) -> None:
        if not isinstance(self.value, Decimal):
            raise QuantityError(
                self.value,
                self.unit,
                f"value must be a Decimal, not {type(self.value).__name__} (floats are not exact)",
            )
        if not self.value.is_finite():
            raise QuantityError(self.value, self.unit, "value must be finite")
        dimension_of(self.unit)

    @classmethod
    def of(cls, value: str | int | Decimal, unit: str) -> Quantity:
        """Build from text, an int or a Decimal. Text must be a plain decimal number."""
        if isinstance(value, Decimal):
            return cls(value, unit)
        if isinstance(value, str):
            if not _NUMBER.match(value.strip()):
                raise QuantityError(value, unit, "not a decimal number")
            try:
                return cls(Decimal(value.strip()), unit)
            except InvalidOperation:  # pragma: no cover - the regex admits only valid literals
                raise QuantityError(value, unit, "not a decimal number") from None
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(Decimal(value), unit)
        raise QuantityError(value, unit, f"expected text, int or Decimal, not {type(value).__name__}")

    @classmethod
    def parse(cls, text: str) -> Quantity:
        """Parse ``"5.5 mL/h"`` (number, one space or more, UCUM unit)."""
        parts = text.split()
        if len(parts) != 2:
            raise QuantityError(text, "", "expected '<number> <UCUM unit>', e.g. '5.5 mL/h'")
        return cls.of(parts[0], parts[1])

    @property
    def dimension(self) -> str:
        return _UNIT_DIMENSION[self.unit]

    def to(self, unit: str) -> Quantity:
        """The same amount in ``unit`` of the same dimension, exactly (no rounding).

        Raises QuantityError for another dimension, or when the result has no exact decimal form.
        """
        if dimension_of(unit) != self.dimension:
            raise QuantityError(
                self.value,
                self.unit,
                f"cannot convert {self.dimension} to {unit} ({dimension_of(unit)})",
            )
        factor = _DIMENSIONS[self.dimension]
        # Trap Inexact: 1 mL/h is 16.666... uL/min, which no decimal holds. Refuse rather than
        # round silently; rounding is a clinical decision made once, at the last step, elsewhere.
        with localcontext() as ctx:
            ctx.prec = 34
            ctx.traps[Inexact] = True
            try:
                value = self.value * factor[self.unit] / factor[unit]
            except Inexact:
                raise QuantityError(self.value, self.unit, f"has no exact decimal value in {unit}") from None
        return Quantity(value, unit)

    def __str__(self) -> str:
        return f"{self.value} {self.unit}"


def is_flow(q: Quantity | None) -> bool:
    """A volume per time (mL/h): what a pump is programmed in, as opposed to a dose rate."""
    return q is not None and q.dimension == "volume/time"
