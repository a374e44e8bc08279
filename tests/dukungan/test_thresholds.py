from fractions import Fraction

import pytest

from dukungan.region import load_code_list, spread_units
from dukungan.thresholds import correction_requirement, min_spread, min_support, thresholds, tier_percent


def test_pangkalpinang_2024():
    assert min_support("walikota", 161_413) == 16_142  # 16,141.3 rounds up
    assert min_spread(7) == 4


def test_sulawesi_selatan_2024():
    assert tier_percent("gubernur", 6_670_582) == Fraction(75, 1000)
    assert min_support("gubernur", 6_670_582) == 500_294  # 500,293.65 rounds up
    assert min_spread(24) == 13


def test_unit_counts_from_the_2022_list(list_2022):
    if list_2022 is None:
        pytest.skip("shared code lists absent; the formula is tested with given counts above")
    codes = load_code_list(list_2022)
    assert len(spread_units(codes, "walikota", "19.71")) == 7  # Pangkalpinang kecamatan
    assert len(spread_units(codes, "gubernur", "73")) == 24  # Sulsel kab/kota
    t = thresholds("gubernur", 6_670_582, len(spread_units(codes, "gubernur", "73")))
    assert (t.min_support, t.min_spread) == (500_294, 13)


@pytest.mark.parametrize("level,dpt,pct", [
    ("gubernur", 2_000_000, "10"), ("gubernur", 2_000_001, "8.5"), ("gubernur", 6_000_000, "8.5"),
    ("gubernur", 12_000_000, "7.5"), ("gubernur", 12_000_001, "6.5"),
    ("bupati", 250_000, "10"), ("bupati", 250_001, "8.5"), ("walikota", 500_000, "8.5"),
    ("walikota", 1_000_000, "7.5"), ("bupati", 1_000_001, "6.5"),
])
def test_tier_bounds_are_inclusive_above(level, dpt, pct):
    assert tier_percent(level, dpt) == Fraction(pct) / 100


def test_exact_arithmetic_no_float_drift():
    # 8.5% of 2,000,020 is exactly 170,001.7 -> 170,002; exact multiples stay exact.
    assert min_support("gubernur", 2_000_020) == 170_002
    assert min_support("bupati", 200_000) == 20_000
    assert min_support("bupati", 200_001) == 20_001


def test_correction_requirement():
    assert correction_requirement(2, 16_142, 15_000) == 2_284
    assert correction_requirement(2, 16_142, 17_000) == 0
    assert correction_requirement(1, 100, 90) == 10


def test_bad_inputs():
    with pytest.raises(ValueError):
        tier_percent("presiden", 10)
    with pytest.raises(ValueError):
        min_spread(0)
