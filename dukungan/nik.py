"""NIK (Nomor Induk Kependudukan) structure: PPKKCC DDMMYY SSSS.

Digits 1-6 are the kecamatan where the NIK was first issued (never the
current domicile), 7-12 the birth date DDMMYY with 40 added to the day for
women, 13-16 a serial. Only the two-digit year is encoded, so the century is
chosen by what gives a plausible voter age on the vote date.

`birth_table` precomputes the decoding of every possible DDMMYY segment once
per vote date so that the columnar validator decodes a NIK with one dict
lookup instead of parsing it.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Literal

import msgspec

Sex = Literal["L", "P"]

MIN_VOTER_AGE = 17
# Above this age a reading is considered implausible when the other century
# gives a plausible one; both readings are rarely valid together anyway.
MAX_PLAUSIBLE_AGE = 110

_NUMBERISH = re.compile(r"^\s*\d+(?:[.,]\d*)?(?:[eE][+]?\d+)?\s*$")


class NikInfo(msgspec.Struct, frozen=True):
    nik: str
    prefix: str  # PPKKCC, where the NIK was first issued
    birth_date: dt.date
    sex: Sex
    serial: str


class NikError(ValueError):
    """The NIK cannot be decoded. `code` is the reason code to attach."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def age_on(birth: dt.date, day: dt.date) -> int:
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def _choose_century(dd: int, mm: int, yy: int, vote_date: dt.date) -> dt.date | None:
    readings = []
    for century in (1900, 2000):
        try:
            d = dt.date(century + yy, mm, dd)
        except ValueError:
            continue
        if d <= vote_date:
            readings.append(d)
    if not readings:
        return None
    # Prefer a voter-age reading; otherwise the youngest non-negative age (a
    # married minor may still support); otherwise the only valid reading.
    for d in readings:
        if MIN_VOTER_AGE <= age_on(d, vote_date) <= MAX_PLAUSIBLE_AGE:
            return d
    for d in readings:
        if age_on(d, vote_date) < MIN_VOTER_AGE:
            return d
    return readings[0]


def looks_like_number(text: str) -> bool:
    """True for what a spreadsheet makes of a NIK typed as a number: `3.17101E+15`, `3171014505900000.0`."""
    return bool(_NUMBERISH.match(text)) and not (len(text.strip()) == 16 and text.strip().isdigit())


def parse_nik(nik: str, vote_date: dt.date) -> NikInfo:
    """Decode one NIK. Raises NikError(code) with NIK_AS_NUMBER, NIK_FORMAT or NIK_DATE_INVALID."""
    s = nik.strip()
    if not (len(s) == 16 and s.isascii() and s.isdigit()):
        if looks_like_number(s) and ("e" in s.lower() or "." in s or "," in s):
            raise NikError("NIK_AS_NUMBER", f"NIK {nik!r} was stored as a number; the 16th digit is lost")
        raise NikError("NIK_FORMAT", f"NIK {nik!r} is not exactly 16 digits")
    day, mm, yy = int(s[6:8]), int(s[8:10]), int(s[10:12])
    sex: Sex = "P" if day > 40 else "L"
    dd = day - 40 if day > 40 else day
    if not (1 <= dd <= 31 and 1 <= mm <= 12):
        raise NikError("NIK_DATE_INVALID", f"NIK {s}: digits 7-12 {s[6:12]} are not DDMMYY (day 01-31, +40 for women)")
    birth = _choose_century(dd, mm, yy, vote_date)
    if birth is None:
        raise NikError("NIK_DATE_INVALID", f"NIK {s}: {dd:02d}-{mm:02d}-yy{yy:02d} is not a real calendar date")
    return NikInfo(nik=s, prefix=s[:6], birth_date=birth, sex=sex, serial=s[12:])


def make_nik(prefix: str, birth: dt.date, sex: Sex, serial: int | str) -> str:
    """Build a NIK; the inverse of parse_nik (given a plausible century)."""
    if len(prefix) != 6 or not prefix.isdigit():
        raise ValueError(f"prefix must be 6 digits (PPKKCC), got {prefix!r}")
    day = birth.day + (40 if sex == "P" else 0)
    return f"{prefix}{day:02d}{birth.month:02d}{birth.year % 100:02d}{int(serial):04d}"


class BirthTable(msgspec.Struct, frozen=True):
    """Decoding of every DDMMYY segment for one vote date.

    iso: segment -> chosen birth date as ISO text (ISO text compares like the date)
    short: segment -> "YY-MM-DD" + sex, the part of the NIK a row's birth date and
    JK must agree with (century-free, so a row is never blamed for our guess of it).
    """

    vote_date: dt.date
    iso: dict[str, str]
    short: dict[str, str]


def birth_table(vote_date: dt.date) -> BirthTable:
    iso: dict[str, str] = {}
    short: dict[str, str] = {}
    for yy in range(100):
        for mm in range(1, 13):
            for dd in range(1, 32):
                d = _choose_century(dd, mm, yy, vote_date)
                if d is None:
                    continue
                text = d.isoformat()
                for sex, day in (("L", dd), ("P", dd + 40)):
                    seg = f"{day:02d}{mm:02d}{yy:02d}"
                    iso[seg] = text
                    short[seg] = text[2:] + sex
    return BirthTable(vote_date=vote_date, iso=iso, short=short)
