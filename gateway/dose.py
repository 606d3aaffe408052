"""Exact conversions between doses, dose rates and volumes (pure, no I/O).

A dose unit is taken apart into an amount (``ug``), an optional patient basis (``/kg``, ``/m2``)
and an optional time (``/h``, ``/min``); see :func:`pumpgw.gateway.quantity.unit_parts`. To go from
one to another the conversion needs, and only uses, the factors the units call for:

- an amount of drug to a volume (or back): the concentration, kept as *amount in volume*
  (2500 ug in 50 mL) so that it is never itself a rounded number;
- per kg to absolute (or back): the patient's weight; per m2: the body surface area;
- per minute to per hour: 60, exactly.

A missing factor raises :class:`MissingFactor`; it is never assumed (no default weight, no
default concentration). Units of different amount kinds (mg and units, a rate and an amount) raise
:class:`QuantityError`.

Arithmetic is ``Decimal`` at 34 significant digits with no rounding in between; a result such as
100 mg in 30 mL keeps 34 digits. Rounding happens once, at the last step, in :func:`round_rate`
(the mL/h sent to a pump), with the rule stated there.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Final

from .errors import DersError, QuantityError
from .quantity import Quantity, amount_factor, base_value, dimension_of, time_factor_per_hour, unit_parts

#: The context every conversion computes in: 34 digits (IEEE 754 decimal128), half-even.
_CTX: Final = Context(prec=34, rounding=ROUND_HALF_EVEN)

#: Pumps are programmed in steps of this many mL/h unless the caller says otherwise.
DEFAULT_RATE_RESOLUTION: Final = Decimal("0.01")

# Far above any pump (the fastest run about 2,000 mL/h); beyond it a "rate" is an arithmetic accident.
_MAX_RATE_ML_H: Final = Decimal(1_000_000)

_DRUG_KINDS: Final = ("mass", "units", "substance", "equivalents")


class MissingFactor(DersError):
    """A conversion needs ``factor`` (patient weight, body surface area, concentration) and has none."""

    def __init__(self, factor: str, conversion: str) -> None:
        self.factor = factor
        super().__init__(conversion, f"needs the {factor}, which was not given")


@dataclass(frozen=True, slots=True)
class Concentration:
    """``amount`` of drug in ``volume`` of solution: 2500 ug in 50 mL. Compared exactly."""

    amount: Quantity
    volume: Quantity

    def __post_init__(self) -> None:
        if self.amount.dimension not in _DRUG_KINDS:
            raise QuantityError(
                self.amount.value, self.amount.unit, "a concentration's amount must be a drug amount"
            )
        if self.volume.dimension != "volume":
            raise QuantityError(
                self.volume.value, self.volume.unit, "a concentration's volume must be a volume"
            )
        if self.amount.value <= 0 or self.volume.value <= 0:
            raise QuantityError(f"{self.amount} in {self.volume}", "", "a concentration must be above zero")

    @classmethod
    def of(cls, q: Quantity) -> Concentration:
        """From a ratio such as ``50 ug/mL`` (amount per volume)."""
        if not q.dimension.endswith("/volume") or q.dimension == "volume/volume":
            raise QuantityError(q.value, q.unit, "not a concentration (amount per volume)")
        amount_unit, volume_unit = q.unit.split("/")
        return cls(Quantity(q.value, amount_unit), Quantity(Decimal(1), volume_unit))

    @property
    def kind(self) -> str:
        """``mass``, ``units``, ``substance`` or ``equivalents``."""
        return self.amount.dimension

    def per_ml(self) -> Decimal:
        """Base amount (mg, [iU], mmol, meq) per mL, to 34 digits (display and ordering only)."""
        return _CTX.divide(base_value(self.amount), base_value(self.volume))

    def compare(self, other: Concentration) -> int:
        """-1, 0 or 1 as this concentration is below, equal to or above ``other``, exactly.

        Raises QuantityError if the two are of different amount kinds (mg/mL and units/mL).
        """
        if self.kind != other.kind:
            raise QuantityError(str(other), "", f"is {other.kind} per volume, not {self.kind} per volume")
        left = _CTX.multiply(base_value(self.amount), base_value(other.volume))
        right = _CTX.multiply(base_value(other.amount), base_value(self.volume))
        return (left > right) - (left < right)

    def compare_ratio(self, limit: Quantity) -> int:
        """Compare with a concentration limit written as a ratio (``5 mg/mL``)."""
        return self.compare(Concentration.of(limit))

    def __str__(self) -> str:
        if self.volume.value == 1:
            return f"{self.amount.value} {self.amount.unit}/{self.volume.unit}"
        return f"{self.amount} in {self.volume}"


def _to_kg(weight: Quantity) -> Decimal:
    if weight.dimension != "body mass":
        raise QuantityError(weight.value, weight.unit, "a patient weight must be in kg (or g{body})")
    return base_value(weight)


def _to_m2(bsa: Quantity) -> Decimal:
    if bsa.dimension != "area":
        raise QuantityError(bsa.value, bsa.unit, "a body surface area must be in m2")
    return base_value(bsa)


def convert(
    q: Quantity,
    unit: str,
    *,
    concentration: Concentration | None = None,
    weight: Quantity | None = None,
    bsa: Quantity | None = None,
) -> Quantity:
    """``q`` in ``unit``, through concentration, weight or BSA where the units need them.

    ``5 ug/kg/min`` to ``mL/h`` with 70 kg and 1600 ug/mL is 13.125 mL/h. Not rounded (34 digits).
    Raises MissingFactor when a needed factor is None, QuantityError for units that cannot be
    converted (a rate to an amount, mg to units, a bad weight unit).
    """
    src, dst = unit_parts(q.unit), unit_parts(unit)
    what = f"{q} to {unit}"
    if (src.per_time is None) != (dst.per_time is None):
        raise QuantityError(q.value, q.unit, f"cannot convert to {unit}: one is a rate, the other an amount")
    value = _CTX.multiply(q.value, amount_factor(src.amount))
    if src.per_time is not None:
        value = _CTX.multiply(value, time_factor_per_hour(src.per_time))
    value = _apply_basis(value, src.basis, weight, bsa, what, multiply=True)
    if src.amount_kind != dst.amount_kind:
        if concentration is None:
            raise MissingFactor("concentration", what)
        kinds = {src.amount_kind, dst.amount_kind}
        if "volume" not in kinds or concentration.kind not in kinds:
            raise QuantityError(
                q.value, q.unit, f"cannot convert to {unit} with a {concentration.kind} concentration"
            )
        amount, volume = base_value(concentration.amount), base_value(concentration.volume)
        if dst.amount_kind == "volume":
            value = _CTX.divide(_CTX.multiply(value, volume), amount)
        else:
            value = _CTX.divide(_CTX.multiply(value, amount), volume)
    value = _apply_basis(value, dst.basis, weight, bsa, what, multiply=False)
    if dst.per_time is not None:
        value = _CTX.divide(value, time_factor_per_hour(dst.per_time))
    value = _CTX.divide(value, amount_factor(dst.amount))
    return Quantity(value, unit)


def _apply_basis(
    value: Decimal,
    basis: str | None,
    weight: Quantity | None,
    bsa: Quantity | None,
    what: str,
    *,
    multiply: bool,
) -> Decimal:
    if basis is None:
        return value
    if basis == "kg":
        if weight is None:
            raise MissingFactor("patient weight", what)
        factor = _to_kg(weight)
    else:
        if bsa is None:
            raise MissingFactor("body surface area", what)
        factor = _to_m2(bsa)
    if factor <= 0:
        raise QuantityError(factor, "kg" if basis == "kg" else "m2", "must be above zero")
    return _CTX.multiply(value, factor) if multiply else _CTX.divide(value, factor)


def round_rate(rate: Quantity, resolution: Decimal = DEFAULT_RATE_RESOLUTION) -> Quantity:
    """The rate a pump is programmed with: ``rate`` in mL/h rounded to ``resolution``, half-even.

    The rounding rule: to the nearest multiple of ``resolution`` (0.01 mL/h unless the pump's is
    coarser), ties to even, applied once to the final mL/h and never to an intermediate value. The
    dose the rounded rate delivers is checked again by DERS, so a rounding that crosses a hard
    limit is caught. Raises QuantityError for a rate that is not volume/time.
    """
    if dimension_of(rate.unit) != "volume/time":
        raise QuantityError(rate.value, rate.unit, "only a rate in volume per time is rounded for a pump")
    ml_h = rate.to("mL/h") if rate.unit != "mL/h" else rate
    if abs(ml_h.value) >= _MAX_RATE_ML_H:
        raise QuantityError(
            ml_h.value, "mL/h", f"is not a rate any pump can run (limit {_MAX_RATE_ML_H} mL/h)"
        )
    steps = _CTX.divide(ml_h.value, resolution).to_integral_value(rounding=ROUND_HALF_EVEN)
    return Quantity(_CTX.multiply(steps, resolution).normalize(_CTX).quantize(resolution), "mL/h")
