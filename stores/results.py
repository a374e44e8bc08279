"""The validation results: every file's outcome, every row's verdict, scans, history links, progress.

One writer (the validator, `unggah validate`) and any number of readers (the
gateway). The validator sees the store through `ResultsWriter`, the gateway
through `ResultsReader`; both are Protocols so a PostgreSQL implementation can
replace the embedded SQLite one without touching either side.

Append-only by design: a file's rows are inserted once, keyed by upload id, and
never deleted. What changes afterwards is recorded, not overwritten silently:

* a correction/resubmission sets `superseded_by` on the earlier row (its
  verdict stays) and adds a `links` row (earlier, later, action);
* a late scan or another pair's claim changes a row's reasons; the old and new
  verdict go to `row_changes` with the cause.

SQLite layout (WAL, so readers never block the writer and vice versa):

    files(upload_id PK, tenant, kind, filename, sha256, length, status, message, problems,
          rows, round, stored_at, validated_at, seq)
    rows(id PK, upload_id, idx, row_no, tenant, nik, nama, kode_desa, status, reasons,
         fingerprint, round, superseded_by)          -- UNIQUE(upload_id, idx)
    scans(upload_id PK, tenant, nik, kind, filename, ok, content_type, size, pages, problems)
    links(earlier, later, action)                    -- row ids; PK(earlier, later)
    row_changes(id PK, row_id, at, cause, old_status, old_reasons, new_status, new_reasons, why)
    progress(tenant PK, snapshot JSON, updated_at)
    meta(key PK, value)
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from itertools import repeat
from operator import itemgetter
from typing import ContextManager, Iterable, Iterator, Mapping, NamedTuple, Protocol, Sequence

import msgspec

from dukungan.progress import Tally
from unggah.config import Settings

SCHEMA_VERSION = "1"

# File status: accepted (rows or scan recorded), rejected (TEMPLATE_INVALID, a bad scan, an
# unlinkable scan), skipped (nothing to validate against: no election configured, or not a
# supporter file), error (validation kept failing; see message).
ACCEPTED, REJECTED, SKIPPED, ERROR = "accepted", "rejected", "skipped", "error"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files(
    upload_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, kind TEXT NOT NULL, filename TEXT NOT NULL,
    sha256 TEXT NOT NULL, length INTEGER NOT NULL, status TEXT NOT NULL, message TEXT NOT NULL,
    problems TEXT NOT NULL, rows INTEGER NOT NULL, round TEXT NOT NULL, stored_at INTEGER NOT NULL,
    validated_at INTEGER NOT NULL, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS files_tenant ON files(tenant, seq);
CREATE TABLE IF NOT EXISTS rows(
    id INTEGER PRIMARY KEY, upload_id TEXT NOT NULL, idx INTEGER NOT NULL, row_no INTEGER NOT NULL,
    tenant TEXT NOT NULL, nik TEXT NOT NULL, nama TEXT NOT NULL, kode_desa TEXT NOT NULL,
    status TEXT NOT NULL, reasons TEXT NOT NULL, fingerprint TEXT NOT NULL, round TEXT NOT NULL,
    superseded_by INTEGER, UNIQUE(upload_id, idx));
DROP INDEX IF EXISTS rows_tenant_nik;
CREATE INDEX IF NOT EXISTS rows_nik ON rows(nik, status);
CREATE TABLE IF NOT EXISTS scans(
    upload_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, nik TEXT NOT NULL, kind TEXT NOT NULL,
    filename TEXT NOT NULL, ok INTEGER NOT NULL, content_type TEXT NOT NULL, size INTEGER NOT NULL,
    pages INTEGER, problems TEXT NOT NULL);
DROP INDEX IF EXISTS scans_tenant;
-- Covers scan_niks: a pair's 2.4 million scans are read from the index alone.
CREATE INDEX IF NOT EXISTS scans_kind ON scans(tenant, kind, ok, nik);
CREATE TABLE IF NOT EXISTS links(
    earlier INTEGER NOT NULL, later INTEGER NOT NULL, action TEXT NOT NULL, PRIMARY KEY(earlier, later));
CREATE INDEX IF NOT EXISTS links_later ON links(later);
CREATE TABLE IF NOT EXISTS row_changes(
    id INTEGER PRIMARY KEY, row_id INTEGER NOT NULL, at INTEGER NOT NULL, cause TEXT NOT NULL,
    old_status TEXT NOT NULL, old_reasons TEXT NOT NULL, new_status TEXT NOT NULL, new_reasons TEXT NOT NULL,
    why TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS row_changes_row ON row_changes(row_id);
CREATE TABLE IF NOT EXISTS progress(tenant TEXT PRIMARY KEY, snapshot TEXT NOT NULL, updated_at INTEGER NOT NULL);
"""


def now_ms() -> int:
    return int(time.time() * 1000)


def join_reasons(codes: Iterable[str]) -> str:
    return ";".join(codes)


def split_reasons(text: str) -> tuple[str, ...]:
    return tuple(text.split(";")) if text else ()


class FileRecord(msgspec.Struct, kw_only=True):
    upload_id: str
    tenant: str
    kind: str  # list | ktp | statement | scan | other
    filename: str
    sha256: str = ""
    length: int = 0
    status: str  # accepted | rejected | skipped | error
    message: str = ""
    problems: list[str] = []
    rows: int = 0
    round: str = ""
    stored_at: int = 0
    validated_at: int = 0


class RowColumns(NamedTuple):
    """A file's row verdicts column by column, in file order (a row's idx is its position): what
    the validator has in hand, stored without building an object per row."""

    row_no: Sequence[int]
    nik: Sequence[str]
    nama: Sequence[str]
    kode_desa: Sequence[str]
    status: Sequence[str]
    reasons: Sequence[tuple[str, ...]]
    fingerprint: Sequence[str]


class StoredRow(NamedTuple):
    """A row read back: the fields dukungan.progress and dukungan.export read (RowVerdict-like)."""

    id: int
    upload_id: str
    row_no: int
    nik: str
    nama: str
    kode_desa: str
    status: str
    reasons: tuple[str, ...]
    fingerprint: str
    round: str
    superseded_by: int | None


class ScanRecord(msgspec.Struct, kw_only=True):
    nik: str
    kind: str  # ktp | statement ("" when the scan could not be linked)
    ok: bool
    content_type: str = ""
    size: int = 0
    pages: int | None = None
    problems: list[str] = []


class ResultsWriter(Protocol):
    """What the validator needs, inside one transaction (`ResultsStore.write()`)."""

    def has_file(self, upload_id: str) -> bool: ...
    def history(self, tenant: str, niks: set[str] | None = None) -> list[StoredRow]: ...
    def scan_niks(self, tenant: str) -> tuple[set[str], set[str]]: ...
    def counted_elsewhere(self, tenant: str) -> set[str]: ...
    def add_file(self, f: FileRecord) -> None: ...
    def add_rows(self, upload_id: str, tenant: str, round_name: str, rows: RowColumns) -> Mapping[int, int]: ...
    def link(self, links: list[tuple[int, int, str, bool]]) -> None: ...
    def add_scan(self, upload_id: str, tenant: str, filename: str, scan: ScanRecord) -> None: ...
    def rows_of(self, tenant: str | None, niks: Iterable[str]) -> list[tuple[StoredRow, str]]: ...
    def change_row(self, row: StoredRow, status: str, reasons: tuple[str, ...], cause: str, why: str) -> None: ...
    def current_rows(self, tenant: str) -> Iterator[StoredRow]: ...
    def tally(self, tenant: str, cut: int) -> Tally: ...
    def save_progress(self, tenant: str, snapshot: dict) -> None: ...
    def set_meta(self, key: str, value: str) -> None: ...


class ResultsStore(Protocol):
    """The validator's handle: one transaction at a time."""

    def write(self) -> ContextManager[ResultsWriter]: ...
    def close(self) -> None: ...


class ResultsReader(Protocol):
    """What the gateway reads. Every method may block: the gateway calls them in a thread."""

    def available(self) -> bool: ...
    def scan(self, upload_id: str) -> ScanRecord | None: ...

    def file(self, upload_id: str) -> FileRecord | None: ...
    def file_counts(self, upload_id: str) -> dict: ...
    def progress(self, tenant: str) -> dict | None: ...
    def all_progress(self) -> dict[str, dict]: ...
    def upload_counts(self, tenant: str) -> dict[str, int]: ...
    def lists_not_counted(self, tenant: str, limit: int = 50) -> list[FileRecord]: ...
    def verdict_batches(self, tenant: str, upload_id: str | None = None,
                        batch: int = 5000) -> Iterator[list[tuple[StoredRow, str]]]: ...
    def meta(self, key: str) -> str | None: ...


_ROW_COLS = "id, upload_id, row_no, nik, nama, kode_desa, status, reasons, fingerprint, round, superseded_by"
_R_COLS = ", ".join("r." + c.strip() for c in _ROW_COLS.split(","))
# A tenant's rows, file by file in arrival order: files by (tenant, seq), then each file's rows by
# (upload_id, idx), so neither a sort nor an index on rows(tenant, ...) is needed. (That index
# was a second one per row keyed in random order, the dearest part of inserting a large list.)
# CROSS JOIN keeps SQLite from reordering the loop.
_TENANT_ROWS = "FROM files f CROSS JOIN rows r ON r.upload_id = f.upload_id WHERE f.tenant=?"


def _file(t: tuple) -> FileRecord:
    return FileRecord(upload_id=t[0], tenant=t[1], kind=t[2], filename=t[3], sha256=t[4], length=t[5],
                      status=t[6], message=t[7], problems=json.loads(t[8]), rows=t[9], round=t[10],
                      stored_at=t[11], validated_at=t[12])


def _row(t: tuple) -> StoredRow:
    return StoredRow(t[0], t[1], t[2], t[3], t[4], t[5], t[6], split_reasons(t[7]), t[8], t[9], t[10])


class SQLiteResults:
    """The embedded default: one SQLite file (WAL). Open with `readonly=True` from the gateway."""

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.Lock()
        self._con: sqlite3.Connection | None = None
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = self._connect()
            con.executescript(_SCHEMA)
            con.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            con.commit()

    def _connect(self) -> sqlite3.Connection:
        if self._con is None:
            if self.readonly:
                con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False,
                                      timeout=10, isolation_level=None)
            else:
                con = sqlite3.connect(self.path, check_same_thread=False, timeout=30, isolation_level=None)
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA synchronous=FULL")  # commit = durable: the stream entry is acked after it
                # A million-row list goes in, and is counted, in one transaction: with SQLite's 2 MB
                # default cache its index pages would be read and evicted again and again.
                con.execute("PRAGMA cache_size=-262144")  # KiB: 256 MiB at the most, used as needed
                con.execute("PRAGMA temp_store=MEMORY")
            con.execute("PRAGMA busy_timeout=10000")
            self._con = con
        return self._con

    def available(self) -> bool:
        """Readers: does the database exist yet (the validator creates it)?"""
        return self.path.exists()

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    # ---- writing: one transaction at a time, BEGIN IMMEDIATE (the single writer holds the lock)

    @contextmanager
    def write(self) -> Iterator["SQLiteResults"]:
        assert not self.readonly, "read-only results store"
        with self._lock:
            con = self._connect()
            con.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    @property
    def con(self) -> sqlite3.Connection:
        return self._connect()

    def has_file(self, upload_id: str) -> bool:
        return self.con.execute("SELECT 1 FROM files WHERE upload_id=?", (upload_id,)).fetchone() is not None

    def history(self, tenant: str, niks: set[str] | None = None) -> list[StoredRow]:
        """The tenant's rows in arrival order (optionally only those NIKs)."""
        cur = self.con.execute(f"SELECT {_R_COLS} {_TENANT_ROWS} ORDER BY f.seq, r.idx", (tenant,))
        out = []
        for t in cur:
            if niks is None or t[3] in niks:
                out.append(_row(t))
        return out

    def scan_niks(self, tenant: str) -> tuple[set[str], set[str]]:
        q = "SELECT nik FROM scans WHERE tenant=? AND kind=? AND ok=1"
        return tuple(set(map(itemgetter(0), self.con.execute(q, (tenant, kind)))) for kind in ("ktp", "statement"))

    def counted_elsewhere(self, tenant: str) -> set[str]:
        """NIKs counted (MS, current) for any other tenant: the DUP_EXTERNAL input."""
        return {n for (n,) in self.con.execute(
            "SELECT DISTINCT nik FROM rows WHERE status='MS' AND superseded_by IS NULL AND tenant<>?", (tenant,))}

    def add_file(self, f: FileRecord) -> None:
        seq = self.con.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM files").fetchone()[0]
        self.con.execute(
            "INSERT INTO files VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (f.upload_id, f.tenant, f.kind, f.filename, f.sha256, f.length, f.status, f.message,
             json.dumps(f.problems, ensure_ascii=False), f.rows, f.round, f.stored_at, f.validated_at or now_ms(),
             seq))

    def add_rows(self, upload_id: str, tenant: str, round_name: str, rows: RowColumns) -> Mapping[int, int]:
        """Insert a file's rows; returns idx -> row id.

        One executemany over the columns zipped: a 1.2 million-row list is inserted without a
        Python object per row. The rows get consecutive ids (one writer, one statement, each id
        one above the largest), so the mapping is a range; that is checked, and looked up if not."""
        n = len(rows.nik)
        self.con.executemany(
            "INSERT INTO rows(upload_id, idx, row_no, tenant, nik, nama, kode_desa, status, reasons, fingerprint,"
            " round) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            zip(repeat(upload_id), range(n), rows.row_no, repeat(tenant), rows.nik, rows.nama, rows.kode_desa,
                rows.status, map(join_reasons, rows.reasons), rows.fingerprint, repeat(round_name)))
        if n == 0:
            return {}
        first, last = self.con.execute("SELECT MIN(id), MAX(id) FROM rows WHERE upload_id=? AND idx IN (0, ?)",
                                       (upload_id, n - 1)).fetchone()
        if last - first == n - 1:
            return range(first, first + n)
        return dict(self.con.execute("SELECT idx, id FROM rows WHERE upload_id=?", (upload_id,)))

    def link(self, links: list[tuple[int, int, str, bool]]) -> None:
        """(earlier row id, later row id, action, supersede): record the history rule's decisions."""
        self.con.executemany("INSERT OR IGNORE INTO links VALUES (?,?,?)", ((e, l, a) for e, l, a, _ in links))
        self.con.executemany("UPDATE rows SET superseded_by=? WHERE id=? AND superseded_by IS NULL",
                             ((l, e) for e, l, _, s in links if s))

    def add_scan(self, upload_id: str, tenant: str, filename: str, scan: ScanRecord) -> None:
        self.con.execute("INSERT INTO scans VALUES (?,?,?,?,?,?,?,?,?,?)",
                         (upload_id, tenant, scan.nik, scan.kind, filename, int(scan.ok), scan.content_type,
                          scan.size, scan.pages, json.dumps(scan.problems, ensure_ascii=False)))

    def rows_of(self, tenant: str | None, niks: Iterable[str]) -> list[tuple[StoredRow, str]]:
        """(row, tenant) of the current (not superseded) rows with these NIKs; tenant None: every tenant's."""
        out: list[tuple[StoredRow, str]] = []
        for nik in set(niks):
            if tenant is None:
                cur = self.con.execute(f"SELECT {_ROW_COLS}, tenant FROM rows WHERE nik=? AND superseded_by IS NULL"
                                       " ORDER BY id", (nik,))
            else:
                cur = self.con.execute(f"SELECT {_ROW_COLS}, tenant FROM rows WHERE tenant=? AND nik=? AND "
                                       "superseded_by IS NULL ORDER BY id", (tenant, nik))
            out.extend((_row(t), t[11]) for t in cur)
        return out

    def change_row(self, row: StoredRow, status: str, reasons: tuple[str, ...], cause: str, why: str) -> None:
        self.con.execute("UPDATE rows SET status=?, reasons=? WHERE id=?", (status, join_reasons(reasons), row.id))
        self.con.execute("INSERT INTO row_changes(row_id, at, cause, old_status, old_reasons, new_status, "
                         "new_reasons, why) VALUES (?,?,?,?,?,?,?,?)",
                         (row.id, now_ms(), cause, row.status, join_reasons(row.reasons), status,
                          join_reasons(reasons), why))

    def current_rows(self, tenant: str) -> Iterator[StoredRow]:
        cur = self.con.execute(f"SELECT {_R_COLS} {_TENANT_ROWS} AND r.superseded_by IS NULL ORDER BY f.seq, r.idx",
                               (tenant,))
        return map(_row, cur)

    def tally(self, tenant: str, cut: int) -> Tally:
        """dukungan.progress.tally of the tenant's current rows, counted by SQLite where they are:
        three grouped scans instead of reading every row into Python."""
        cur = f"{_TENANT_ROWS} AND r.superseded_by IS NULL"
        by = {(status, split_reasons(reasons)): n for status, reasons, n in self.con.execute(
            f"SELECT r.status, r.reasons, COUNT(*) {cur} GROUP BY r.status, r.reasons", (tenant,))}
        counted: dict[str, int] = {}
        pending = 0
        if any(status == "MS" for status, _ in by):
            # A NIK counts once, in the unit of its first counted row (the bare column beside MIN(id)).
            counted = dict(self.con.execute(
                f"SELECT substr(kode_desa, 1, ?), COUNT(*) FROM (SELECT r.kode_desa, MIN(r.id) {cur}"
                " AND r.status='MS' GROUP BY r.nik) GROUP BY 1", (cut, tenant)))
        if any(status == "MS" and "DUP_EXTERNAL" in reasons for status, reasons in by):
            pending = self.con.execute(f"SELECT COUNT(DISTINCT r.nik) {cur} AND r.status='MS'"
                                       " AND ';' || r.reasons || ';' LIKE '%;DUP_EXTERNAL;%'", (tenant,)).fetchone()[0]
        return Tally(rows=by, counted=counted, pending=pending)

    def save_progress(self, tenant: str, snapshot: dict) -> None:
        self.con.execute("INSERT OR REPLACE INTO progress VALUES (?,?,?)",
                         (tenant, json.dumps(snapshot, ensure_ascii=False), now_ms()))

    def set_meta(self, key: str, value: str) -> None:
        self.con.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (key, value))

    # ---- reading (the gateway; also tests)

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self.con.execute(sql, args).fetchall()

    def meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key=?", (key,))
        return rows[0][0] if rows else None

    def lists_not_counted(self, tenant: str, limit: int = 50) -> list[FileRecord]:
        """The tenant's supporter lists whose rows count for nothing: rejected, not validated
        (no election) or failed validation; latest first."""
        rows = self._read("SELECT upload_id, tenant, kind, filename, sha256, length, status, message, problems, rows,"
                          " round, stored_at, validated_at FROM files WHERE tenant=? AND kind='list' AND status<>?"
                          " ORDER BY seq DESC LIMIT ?", (tenant, ACCEPTED, limit))
        return [_file(t) for t in rows]

    def file(self, upload_id: str) -> FileRecord | None:
        rows = self._read("SELECT upload_id, tenant, kind, filename, sha256, length, status, message, problems, rows,"
                          " round, stored_at, validated_at FROM files WHERE upload_id=?", (upload_id,))
        return _file(rows[0]) if rows else None

    def file_counts(self, upload_id: str) -> dict:
        """Row counts of one file as validated now (statuses include late-scan changes)."""
        by_status = dict(self._read("SELECT status, COUNT(*) FROM rows WHERE upload_id=? GROUP BY status",
                                    (upload_id,)))
        reasons: dict[str, int] = {}
        for (text,) in self._read("SELECT reasons FROM rows WHERE upload_id=? AND reasons<>''", (upload_id,)):
            for code in split_reasons(text):
                reasons[code] = reasons.get(code, 0) + 1
        superseded = self._read("SELECT COUNT(*) FROM rows WHERE upload_id=? AND superseded_by IS NOT NULL",
                                (upload_id,))[0][0]
        return {"counts": {k: by_status.get(k, 0) for k in ("MS", "BMS", "TMS")}, "reasons": reasons,
                "superseded": superseded}

    def scan(self, upload_id: str) -> ScanRecord | None:
        rows = self._read("SELECT nik, kind, ok, content_type, size, pages, problems FROM scans WHERE upload_id=?",
                          (upload_id,))
        if not rows:
            return None
        t = rows[0]
        return ScanRecord(nik=t[0], kind=t[1], ok=bool(t[2]), content_type=t[3], size=t[4], pages=t[5],
                          problems=json.loads(t[6]))

    def progress(self, tenant: str) -> dict | None:
        rows = self._read("SELECT snapshot FROM progress WHERE tenant=?", (tenant,))
        return json.loads(rows[0][0]) if rows else None

    def all_progress(self) -> dict[str, dict]:
        return {t: json.loads(s) for t, s in self._read("SELECT tenant, snapshot FROM progress ORDER BY tenant")}

    def upload_counts(self, tenant: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for kind, status, n in self._read("SELECT kind, status, COUNT(*) FROM files WHERE tenant=? "
                                          "GROUP BY kind, status", (tenant,)):
            key = ("lists" if kind == "list" else "scans" if kind in ("ktp", "statement", "scan") else "other")
            key += "" if status == ACCEPTED else "_" + status
            out[key] = out.get(key, 0) + n
        return out

    def verdict_batches(self, tenant: str, upload_id: str | None = None,
                        batch: int = 5000) -> Iterator[list[tuple[StoredRow, str]]]:
        """(row, file name) in arrival order, a batch at a time (each batch its own short read)."""
        last = 0
        while True:
            if upload_id is None:
                rows = self._read(f"SELECT {', '.join('r.' + c.strip() for c in _ROW_COLS.split(','))}, f.filename "
                                  "FROM rows r JOIN files f ON f.upload_id = r.upload_id "
                                  "WHERE r.tenant=? AND r.id>? ORDER BY r.id LIMIT ?", (tenant, last, batch))
            else:
                rows = self._read(f"SELECT {', '.join('r.' + c.strip() for c in _ROW_COLS.split(','))}, f.filename "
                                  "FROM rows r JOIN files f ON f.upload_id = r.upload_id "
                                  "WHERE r.upload_id=? AND r.id>? ORDER BY r.id LIMIT ?", (upload_id, last, batch))
            if not rows:
                return
            last = rows[-1][0]
            yield [(_row(t[:11]), t[11]) for t in rows]

    def count_rows(self, upload_id: str | None = None) -> int:
        if upload_id is None:
            return self._read("SELECT COUNT(*) FROM rows")[0][0]
        return self._read("SELECT COUNT(*) FROM rows WHERE upload_id=?", (upload_id,))[0][0]

    def links_into(self, upload_id: str) -> list[tuple[str, int, str, int, str]]:
        """(earlier upload, earlier row_no, later upload, later row_no, action) for rows of `upload_id`."""
        return self._read("SELECT e.upload_id, e.row_no, l.upload_id, l.row_no, k.action FROM links k "
                          "JOIN rows e ON e.id = k.earlier JOIN rows l ON l.id = k.later "
                          "WHERE l.upload_id=? ORDER BY l.id", (upload_id,))

    def changes(self, tenant: str) -> list[tuple]:
        return self._read("SELECT c.row_id, r.upload_id, r.row_no, c.cause, c.old_status, c.old_reasons, "
                          "c.new_status, c.new_reasons, c.why FROM row_changes c JOIN rows r ON r.id = c.row_id "
                          "WHERE r.tenant=? ORDER BY c.id", (tenant,))


def results_store(settings: Settings) -> ResultsStore:
    """The validator's results store, as the settings name it (today: SQLite at results_path)."""
    return SQLiteResults(settings.results_path)


def results_reader(settings: Settings) -> ResultsReader:
    """The gateway's view of the results, read-only (today: the same SQLite file)."""
    return SQLiteResults(settings.results_path, readonly=True)
