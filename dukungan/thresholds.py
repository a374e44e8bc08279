"""Minimum support and spread (UU 10/2016 Pasal 41), computed exactly.

Percentages are Fractions: 161,413 x 10% must be 16,142 (ceil of 16,141.3),
and binary floats get such products wrong at the edges.
"""

from __future__ import annotations

from fractions import Fraction

import msgspec

# (upper bound of DPT inclusive, percentage); the last band is open-ended.
TIERS: dict[str, tuple[tuple[int | None, Fraction], ...]] = {
    "gubernur": ((2_000_000, Fraction(10, 100)), (6_000_000, Fraction(85, 1000)),
                 (12_000_000, Fraction(75, 1000)), (None, Fraction(65, 1000))),
    "bupati": ((250_000, Fraction(10, 100)), (500_000, Fraction(85, 1000)),
               (1_000_000, Fraction(75, 1000)), (None, Fraction(65, 1000))),
}
TIERS["walikota"] = TIERS["bupati"]


class Thresholds(msgspec.Struct, frozen=True):
    level: str
    dpt_base: int
    percent: str  # e.g. "8.5%", for display
    min_support: int
    units: int  # kab/kota or kecamatan in the region
    min_spread: int
    correction_multiplier: int


def tier_percent(level: str, dpt: int) -> Fraction:
    if level not in TIERS:
        raise ValueError(f"level must be gubernur, bupati or walikota, got {level!r}")
    if dpt <= 0:
        raise ValueError(f"DPT must be positive, got {dpt}")
    for bound, pct in TIERS[level]:
        if bound is None or dpt <= bound:
            return pct
    raise AssertionError("unreachable: last tier is open-ended")


def min_support(level: str, dpt: int) -> int:
    """ceil(DPT x percentage), exactly."""
    product = dpt * tier_percent(level, dpt)
    return -(-product.numerator // product.denominator)


def min_spread(units: int) -> int:
    """More than half of the units: floor(units / 2) + 1."""
    if units <= 0:
        raise ValueError("a region has at least one spread unit; check the code list and region_code")
    return units // 2 + 1


def correction_requirement(multiplier: int, minimum: int, ms_count: int) -> int:
    """Supporters to bring in a correction round: multiplier x shortfall (0 when met)."""
    return multiplier * max(0, minimum - ms_count)


def _fmt_pct(p: Fraction) -> str:
    s = f"{float(p * 100):.2f}".rstrip("0").rstrip(".")
    return s + "%"


def thresholds(level: str, dpt: int, units: int, multiplier: int = 2) -> Thresholds:
    return Thresholds(level=level, dpt_base=dpt, percent=_fmt_pct(tier_percent(level, dpt)),
                      min_support=min_support(level, dpt), units=units, min_spread=min_spread(units),
                      correction_multiplier=multiplier)
