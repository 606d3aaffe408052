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
from typing import Final

from .errors import QuantityError

# dimension name -> {UCUM code: factor to the dimension's first (base) unit}
_DIMENSIONS: Final[dict[str, dict[str, Decimal]]] = {
    "volume": {"mL": Decimal(1), "L": Decimal(1000), "uL": Decimal("0.001")},
    "volume/time": {
        "mL/h": Decimal(1),
        "mL/min": Decimal(60),
        "L/h": Decimal(1000),
        "uL/h": Decimal("0.001"),
        "uL/min": Decimal("0.06"),
    },
    "time": {"s": Decimal(1), "min": Decimal(60), "h": Decimal(3600)},
    "mass": {"mg": Decimal(1), "g": Decimal(1000), "ug": Decimal("0.001"), "ng": Decimal("1E-6")},
    "body mass": {"kg": Decimal(1), "g{body}": Decimal("0.001")},
    "area": {"m2": Decimal(1)},
    "mass/volume": {
        "mg/mL": Decimal(1),
        "ug/mL": Decimal("0.001"),
        "g/L": Decimal(1),
        "mg/L": Decimal("0.001"),
        "g/mL": Decimal(1000),
        "ng/mL": Decimal("1E-6"),
    },
    "units/volume": {"[iU]/mL": Decimal(1), "[iU]/L": Decimal("0.001")},
    "substance/volume": {"mmol/mL": Decimal(1), "mmol/L": Decimal("0.001")},
    "equivalents/volume": {"meq/mL": Decimal(1), "meq/L": Decimal("0.001")},
    "units": {"[iU]": Decimal(1)},
    "substance": {"mmol": Decimal(1)},
    "equivalents": {"meq": Decimal(1)},
    "mass/time": {
        "mg/h": Decimal(1),
        "mg/min": Decimal(60),
        "ug/h": Decimal("0.001"),
        "ug/min": Decimal("0.06"),
        "g/h": Decimal(1000),
    },
    "mass/body mass/time": {
        "mg/kg/h": Decimal(1),
        "mg/kg/min": Decimal(60),
        "ug/kg/h": Decimal("0.001"),
        "ug/kg/min": Decimal("0.06"),
    },
    "units/time": {"[iU]/h": Decimal(1), "[iU]/min": Decimal(60)},
    "units/body mass/time": {"[iU]/kg/h": Decimal(1), "[iU]/kg/min": Decimal(60)},
    "substance/time": {"mmol/h": Decimal(1), "mmol/min": Decimal(60)},
    "equivalents/time": {"meq/h": Decimal(1), "meq/min": Decimal(60)},
    "pressure": {"mm[Hg]": Decimal(1)},
    "ratio": {"%": Decimal(1)},
}

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
