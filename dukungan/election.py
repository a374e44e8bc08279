"""Election configuration: one TOML file per election, parsed into msgspec Structs.

Example (see docs/dukungan.md for every key)::

    name = "Pilwalkot Pangkalpinang 2024"
    level = "walikota"            # gubernur | bupati | walikota
    region_code = "19.71"         # PP for gubernur, PP.KK otherwise
    vote_date = 2024-11-27
    timezone = "Asia/Jakarta"     # IANA name: Asia/Jakarta (WIB), Asia/Makassar (WITA), Asia/Jayapura (WIT)
    dpt_base = 161413
    dpt_source = "DPT Pemilu 2024"
    grace_seconds = 900
    correction_multiplier = 2

    [code_list]
    path = "wilayah-kepmendagri-2022.csv"   # relative to this file
    version = "Kepmendagri 050-145/2022"
    nik_prefix_paths = ["wilayah-2020.csv"] # older lists, only for NIK prefixes

    [scans]
    max_bytes = 2097152
    max_pages = 2

    [[windows]]
    name = "penyerahan"
    kind = "submission"           # submission | correction
    opens = 2024-05-08T00:00:00   # local time in `timezone`
    closes = 2024-05-12T23:59:59

    [[extensions]]
    tenant = "paslon-01"
    round = "penyerahan"
    closes = 2024-05-17T23:59:59
    authority = "Surat KPU 707/PL.02.2-SD/05/2024"
"""

from __future__ import annotations

import datetime as dt
import tomllib
import zoneinfo
from pathlib import Path
from typing import Literal

import msgspec

from .region import check_region_code

MiB = 1024 * 1024


class ElectionError(ValueError):
    """The election file is wrong; the message names the key."""


class CodeListConfig(msgspec.Struct, forbid_unknown_fields=True):
    path: str
    version: str
    # Older lists, used only to recognise NIK prefixes: a NIK keeps the
    # kecamatan where it was issued, even if that kecamatan was later renamed or split.
    nik_prefix_paths: list[str] = []


class Window(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    kind: Literal["submission", "correction"]
    opens: dt.datetime  # local, naive: interpreted in Election.timezone
    closes: dt.datetime  # inclusive: 23:59:59 means the whole last minute counts


class Extension(msgspec.Struct, forbid_unknown_fields=True):
    tenant: str
    round: str
    closes: dt.datetime
    authority: str  # the letter or decision granting it, e.g. "Surat KPU 707/PL.02.2-SD/05/2024"
    # Set when the extension is a separate re-opening after the round closed
    # (e.g. a 3x24 h re-upload starting a week later); default: contiguous.
    opens: dt.datetime | None = None


class ScanLimits(msgspec.Struct, forbid_unknown_fields=True):
    max_bytes: int = 5 * MiB
    max_pages: int = 2


class Election(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    level: Literal["gubernur", "bupati", "walikota"]
    region_code: str
    vote_date: dt.date
    timezone: str
    dpt_base: int
    code_list: CodeListConfig
    windows: list[Window]
    dpt_source: str = ""
    extensions: list[Extension] = []
    grace_seconds: int = 0
    scans: ScanLimits = msgspec.field(default_factory=ScanLimits)
    correction_multiplier: int = 2
    # A spread unit counts when it has at least this many MS supporters.
    # The law says "tersebar di lebih dari 50%"; a per-unit minimum is UNVERIFIED, so 1.
    min_ms_per_unit: int = 1

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)


def _check(e: Election, source: str) -> None:
    def fail(key: str, msg: str) -> None:
        raise ElectionError(f"{source}: key `{key}`: {msg}")

    problem = check_region_code(e.level, e.region_code)
    if problem:
        fail("region_code", problem)
    try:
        zoneinfo.ZoneInfo(e.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        fail("timezone", f"{e.timezone!r} is not an IANA time zone; use Asia/Jakarta (WIB), "
                         "Asia/Makassar (WITA) or Asia/Jayapura (WIT)")
    if e.dpt_base <= 0:
        fail("dpt_base", f"must be a positive number of voters, got {e.dpt_base}")
    if e.grace_seconds < 0:
        fail("grace_seconds", "must be 0 or more")
    if e.correction_multiplier < 1:
        fail("correction_multiplier", "must be 1 or more (1 disables the doubling)")
    if e.min_ms_per_unit < 1:
        fail("min_ms_per_unit", "must be 1 or more")
    if e.scans.max_bytes <= 0 or e.scans.max_pages <= 0:
        fail("scans", "max_bytes and max_pages must be positive")
    if not e.windows:
        fail("windows", "at least one [[windows]] round is needed")
    names = set()
    for i, w in enumerate(e.windows):
        for attr in ("opens", "closes"):
            if getattr(w, attr).tzinfo is not None:
                fail(f"windows[{i}].{attr}", "write a local time without offset; the zone comes from `timezone`")
        if w.closes <= w.opens:
            fail(f"windows[{i}].closes", f"round {w.name!r} closes ({w.closes}) before it opens ({w.opens})")
        if w.name in names:
            fail(f"windows[{i}].name", f"round name {w.name!r} is used twice")
        names.add(w.name)
    for i, x in enumerate(e.extensions):
        if x.round not in names:
            fail(f"extensions[{i}].round", f"no round named {x.round!r}; rounds are {sorted(names)}")
        if not x.authority.strip():
            fail(f"extensions[{i}].authority", "name the letter or decision that grants the extension")
        if x.closes.tzinfo is not None or (x.opens is not None and x.opens.tzinfo is not None):
            fail(f"extensions[{i}]", "write local times without offset")
        if x.opens is not None and x.opens >= x.closes:
            fail(f"extensions[{i}].closes", "closes before it opens")


def parse_election(text: str, base_dir: str | Path | None = None, source: str = "election") -> Election:
    """Parse election TOML. Relative code-list paths are resolved against `base_dir`."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ElectionError(f"{source}: not valid TOML: {err}") from None
    try:
        e = msgspec.convert(raw, Election)
    except msgspec.ValidationError as err:
        # msgspec names the path as `$.windows[0].closes`; say it as a key.
        msg = str(err).replace("`$.", "`").replace("`$`", "the top level")
        raise ElectionError(f"{source}: {msg}") from None
    _check(e, source)
    if base_dir is not None:
        base = Path(base_dir)

        def resolve(p: str) -> str:
            return str(p if Path(p).is_absolute() else base / p)

        e.code_list.path = resolve(e.code_list.path)
        e.code_list.nik_prefix_paths = [resolve(p) for p in e.code_list.nik_prefix_paths]
    return e


def load_election(path: str | Path) -> Election:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ElectionError(f"election file not found: {p}") from None
    return parse_election(text, base_dir=p.parent, source=p.name)


# ---- an election's text, written from values: one fixture for tests, demos and benchmarks

EXAMPLE: dict = {
    "name": "Pilwalkot Contoh 2024",
    "level": "walikota",
    "region_code": "19.71",
    "vote_date": dt.date(2024, 11, 27),
    "timezone": "Asia/Jakarta",
    "dpt_base": 400,
    "grace_seconds": 600,
    "code_list": {"path": "codes.csv", "version": "synthetic"},
    "scans": {"max_bytes": 200_000, "max_pages": 2},
    "windows": [{"name": "penyerahan", "kind": "submission",
                 "opens": dt.datetime(2020, 1, 1), "closes": dt.datetime(2099, 12, 31, 23, 59, 59)}],
}


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, dt.datetime):  # local time in the election's zone: no offset in the file
        return v.replace(tzinfo=None).isoformat(timespec="seconds")
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {type(v).__name__}")


def example_toml(**overrides: object) -> str:
    """A valid election file's text: `EXAMPLE` with `overrides` (any key of the file; a table
    such as `code_list` or `scans` is merged, `windows` and `extensions` replace the lists; a
    value of None leaves a key out). Tests, demos and benchmarks write their elections with it,
    so the file's shape lives here beside its parser.

    Its one window is open from 2020 to 2099 and its code list is `codes.csv` beside the file.
    """
    values = {**EXAMPLE}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            value = {**values[key], **value}
        values[key] = value
    lines, tables = [], []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, dict):
            tables.append(f"\n[{key}]")
            tables += [f"{k} = {_toml_value(v)}" for k, v in value.items() if v is not None]
        elif isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
            for item in value:
                tables.append(f"\n[[{key}]]")
                tables += [f"{k} = {_toml_value(v)}" for k, v in item.items() if v is not None]
        elif isinstance(value, list) and not value:
            continue  # no windows / no extensions
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines + tables) + "\n"
