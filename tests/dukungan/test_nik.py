import datetime as dt

import pytest
from hypothesis import given, settings, strategies as st

from dukungan.nik import NikError, birth_table, make_nik, parse_nik

VOTE = dt.date(2024, 11, 27)
TABLE = birth_table(VOTE)  # built once: the validator's lookup must agree with the parser
prefixes = st.from_regex(r"\A[1-9][0-9]{5}\Z", fullmatch=True)
# Voter-age births: the century rule must recover them exactly.
births = st.dates(min_value=dt.date(1915, 1, 1), max_value=dt.date(2007, 11, 27))
sexes = st.sampled_from(["L", "P"])
serials = st.integers(min_value=1, max_value=9999)


@given(prefixes, births, sexes, serials)
def test_round_trip(prefix, birth, sex, serial):
    nik = make_nik(prefix, birth, sex, serial)
    info = parse_nik(nik, VOTE)
    assert (info.prefix, info.birth_date, info.sex, int(info.serial)) == (prefix, birth, sex, serial)


@given(prefixes, births, serials)
def test_women_add_40_to_the_day(prefix, birth, serial):
    nik = make_nik(prefix, birth, "P", serial)
    assert int(nik[6:8]) == birth.day + 40
    assert 41 <= int(nik[6:8]) <= 71


@settings(deadline=None, max_examples=300)
@given(prefixes, st.integers(0, 99), st.integers(0, 99), st.integers(0, 99), serials)
def test_impossible_dates_rejected(prefix, day, month, yy, serial):
    nik = f"{prefix}{day:02d}{month:02d}{yy:02d}{serial:04d}"
    dd = day - 40 if day > 40 else day
    valid = False
    for century in (1900, 2000):
        try:
            valid |= dt.date(century + yy, month, dd) <= VOTE
        except ValueError:
            pass
    if valid:
        assert parse_nik(nik, VOTE).birth_date.day == dd
        assert nik[6:12] in TABLE.iso
    else:
        with pytest.raises(NikError) as e:
            parse_nik(nik, VOTE)
        assert e.value.code == "NIK_DATE_INVALID"
        assert nik[6:12] not in TABLE.iso


def test_century_by_plausible_age():
    assert parse_nik("3171011708450001", VOTE).birth_date == dt.date(1945, 8, 17)
    assert parse_nik("3171010101050001", VOTE).birth_date == dt.date(2005, 1, 1)  # 19, not 119
    assert parse_nik("3171010101100001", VOTE).birth_date == dt.date(2010, 1, 1)  # 14: a possible married minor
    assert parse_nik("3171012902000001", VOTE).birth_date == dt.date(2000, 2, 29)  # 1900 was no leap year
    assert parse_nik("3171010101300001", VOTE).birth_date == dt.date(1930, 1, 1)  # 2030 is in the future


@pytest.mark.parametrize("nik,code", [
    ("317101170845000", "NIK_FORMAT"), ("31710117084500011", "NIK_FORMAT"), ("3171O11708450001", "NIK_FORMAT"),
    ("", "NIK_FORMAT"), ("3.17101E+15", "NIK_AS_NUMBER"), ("3171011708450000.0", "NIK_AS_NUMBER"),
    ("3171013208450001", "NIK_DATE_INVALID"), ("3171017208450001", "NIK_DATE_INVALID"),
    ("3171010013450001", "NIK_DATE_INVALID"), ("3171013102450001", "NIK_DATE_INVALID"),
    ("3171010008450001", "NIK_DATE_INVALID"), ("3171012902010001", "NIK_DATE_INVALID"),
])
def test_invalid(nik, code):
    with pytest.raises(NikError) as e:
        parse_nik(nik, VOTE)
    assert e.value.code == code


def test_birth_table_agrees_with_parser():
    table = TABLE
    for seg in ("170845", "570845", "010105", "290200", "311299"):
        nik = "317101" + seg + "0001"
        info = parse_nik(nik, VOTE)
        assert table.iso[seg] == info.birth_date.isoformat()
        assert table.short[seg] == info.birth_date.isoformat()[2:] + info.sex
