"""The fast CSV path: the row rules of rules.validate, vectorised with numpy over the raw bytes.

Why: the reference path (template.parse_csv_bytes + rules.validate) builds
one Python string per cell, 13 per row, and every rule pass touches every
one of them; at a million rows that object churn is the floor (about
90,000 rows/s). Here a file is one uint8 array: the offsets of every
delimiter and newline give every cell's start and end, fixed-width fields
(NIK, dates, village codes, phones) are cut into small uint8 matrices and
decoded with integer arithmetic, membership tests are searchsorted on sorted
int64 keys, duplicates come from sorting, and variable text (occupation,
odd spellings of JK or marital status, odd dates) is grouped by exact bytes
so that the reference's own Python functions run once per distinct value.
Python strings are built only for the few rows that fail a check.

Verdicts are identical to the reference, by construction and by test
(tests/dukungan/test_fast.py compares both, row by row, on generated files
with every trap). The rule for staying identical: a cell the vectorised code
cannot judge with certainty (non-ASCII text, an unusual length, an odd date
format...) goes to the reference's Python function for that value. A file
whose *shape* is outside what this module handles returns None and the
caller runs the reference path instead:

* quoted cells (a '"' anywhere in the data rows), NUL bytes, blank lines,
  rows with a wrong number of cells (the reference's csv.reader path);
* a line longer than MAX_CELL_CHARS bytes (the reference checks cell sizes);
* anything the reference rejects as a whole file (bad header, not UTF-8,
  empty, a date serial or a village code stored as a number...): the
  reference raises the TemplateError with its own message.

The Verdicts returned carry a lazy Table: its columns (lists of str) are
built on first access, column by column, so judging a file does not pay for
13 string objects per row that most callers never read.
"""

from __future__ import annotations

import csv
import os
import re
from typing import Collection

try:
    import numpy as np
    from numpy.lib.stride_tricks import sliding_window_view
except ImportError:  # numpy is optional: without it everything runs on the reference path
    np = None  # type: ignore[assignment]

from . import nik as nikmod
from .reasons import MS, ROW_CODES, verdict_of
from .rules import (_MARITAL, _SEX, MAX_NAME, RuleContext, Verdicts, _norm_text,
                    fingerprint, normalize_phone, parse_row_date)
from .occupation import is_prohibited
from .scans import ScanSets
from .template import _OTHER_ASCII_SPACE, HEADER, MAX_CELL_CHARS, NCOLS, Table, _header_problem

_BOM = b"\xef\xbb\xbf"
(C_NO, C_NIK, C_NAMA, C_JK, C_TEMPAT, C_TGL, C_KAWIN, C_KERJA, C_ALAMAT, C_RT, C_RW, C_DESA,
 C_HP) = range(NCOLS)
_BIT = {code: 1 << k for k, code in enumerate(ROW_CODES)}
_VILLAGE = re.compile(r"\d\d\.\d\d\.\d\d\.\d\d\d\d", re.ASCII)
_DIGITS16 = re.compile(r"\d{16}", re.ASCII)
# ASCII bytes str.strip() removes (the reference strips every cell when the file has padding).
_WS = [chr(b).isspace() for b in range(128)] + [False] * 128


def available() -> bool:
    """numpy importable and not switched off (DUKUNGAN_FAST=0 forces the reference path)."""
    return np is not None and os.environ.get("DUKUNGAN_FAST", "1") != "0"


# --------------------------------------------------------------------------- numpy helpers

if np is not None:
    _WS_TABLE = np.array(_WS, dtype=bool)
    _U8 = np.uint64(8)
    _GOLDEN = np.uint64(0x9E3779B97F4A7C15)
    _MULTIPLIERS = (_GOLDEN, np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0xFF51AFD7ED558CCD))
    _LO_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)
    _HI_NIBBLES = np.uint64(0xF0F0F0F0F0F0F0F0)
    _ASCII_ZEROS = np.uint64(0x3030303030303030)
    _PLUS_6 = np.uint64(0x0606060606060606)
    # _BYTE_MASK[k]: the low k bytes of a little-endian word (k = 0..8).
    _BYTE_MASK = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], dtype=np.uint64)
    _POW10 = np.array([10 ** k for k in range(19)], dtype=np.int64)
    _MONTH_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31] + [0] * 244, dtype=np.int64)


def _all_digits(words: "np.ndarray") -> "np.ndarray":
    """Per uint64 word: are all 8 bytes ASCII digits? (high nibble 3, and low nibble + 6 does not carry)."""
    return (((words & _HI_NIBBLES) == _ASCII_ZEROS) & (((words + _PLUS_6) & _HI_NIBBLES) == _ASCII_ZEROS))


def _parse8(words: "np.ndarray") -> "np.ndarray":
    """Eight ASCII digits per little-endian word -> their value (first byte most significant)."""
    v = words & _LO_NIBBLES
    v = (v * np.uint64(10) + (v >> np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)
    v = (v * np.uint64(100) + (v >> np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
    v = (v * np.uint64(10000) + (v >> np.uint64(32))) & np.uint64(0x00000000FFFFFFFF)
    return v.astype(np.int64)


def _member(keys: "np.ndarray", sorted_vals: "np.ndarray") -> "np.ndarray":
    """keys in sorted_vals, elementwise (int64 arrays; sorted_vals sorted, contiguous)."""
    k = sorted_vals.size
    if k == 0:
        return np.zeros(keys.shape, dtype=bool)
    if k <= 4:
        out = keys == sorted_vals[0]
        for v in sorted_vals[1:]:
            out |= keys == v
        return out
    keys = np.ascontiguousarray(keys)
    if k <= 1024:  # small sets (a region's villages): a collision-free hash table, two small gathers
        for mult in _MULTIPLIERS:
            hv = sorted_vals.view(np.uint64) * mult
            for bits in range(max(8, (k * k).bit_length()), 21):
                slot = (hv >> np.uint64(64 - bits)).view(np.int64)
                if _sorted_unique(slot).size == k:
                    table = np.zeros(1 << bits, dtype=np.int64)
                    table[slot] = np.arange(k)
                    h = keys.view(np.uint64) * mult
                    h >>= np.uint64(64 - bits)
                    return sorted_vals[table[h.view(np.int64)]] == keys
    if keys.size > 20_000:
        sample = keys[:: keys.size // 2048]
        if np.count_nonzero(_search(sample, sorted_vals)) * 4 > sample.size:
            return _search(keys, sorted_vals)  # most keys are in: no filter would help
    # Mostly absent: a byte map indexed by a multiplicative hash rules out most keys with one
    # gather; only the keys it lets through are looked up exactly.
    bits = max(12, min(22, (32 * k).bit_length()))
    shift = np.uint64(64 - bits)
    seen = np.zeros(1 << bits, dtype=bool)
    seen[((sorted_vals.view(np.uint64) * _GOLDEN) >> shift).view(np.int64)] = True
    h = keys.view(np.uint64) * _GOLDEN
    h >>= shift
    maybe = np.flatnonzero(seen[h.view(np.int64)])
    del h
    out = np.zeros(keys.shape, dtype=bool)
    if maybe.size:
        out[maybe] = _search(keys[maybe], sorted_vals)
    return out


def _search(keys: "np.ndarray", sorted_vals: "np.ndarray") -> "np.ndarray":
    idx = np.searchsorted(sorted_vals, keys)
    idx[idx == sorted_vals.size] = 0
    return sorted_vals[idx] == keys


def _index_in(uniq: "np.ndarray", h: "np.ndarray") -> "np.ndarray":
    """Position in `uniq` (sorted, distinct uint64 hashes) of every h, all of which are in it."""
    if uniq.size <= 4096:
        for bits in range(max(4, (4 * uniq.size).bit_length()), 17):
            low = uniq & np.uint64((1 << bits) - 1)
            if _sorted_unique(low).size == uniq.size:  # the low bits tell the values apart: one gather
                lut = np.zeros(1 << bits, dtype=np.int64)
                lut[low.view(np.int64)] = np.arange(uniq.size)
                return lut[(h & np.uint64((1 << bits) - 1)).view(np.int64)]
    return np.searchsorted(uniq, h)


def _sorted_unique(a: "np.ndarray") -> "np.ndarray":
    if a.size == 0:
        return a
    s = np.sort(a)
    keep = np.empty(s.size, dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def _repeated(a: "np.ndarray") -> "np.ndarray":
    """Sorted distinct values that occur more than once in a (int64)."""
    if a.size < 2:
        return a[:0]
    if a.size > 100_000:  # sort 32-bit hashes first (faster), then the few candidates exactly
        h = ((np.ascontiguousarray(a).view(np.uint64) * _GOLDEN) >> np.uint64(32)).astype(np.int64)
        hs = np.sort(h.astype(np.uint32)).astype(np.int64)
        twice = _sorted_unique(hs[1:][hs[1:] == hs[:-1]])
        if twice.size == 0:
            return a[:0]
        a = a[_member(h, twice)]
    s = np.sort(a)
    return _sorted_unique(s[1:][s[1:] == s[:-1]])


def _set_keys(values: Collection[str]) -> "np.ndarray":
    """Sorted int64 values of the members that are exactly 16 ASCII digits (the only ones a valid NIK can equal)."""
    empty = np.zeros(0, dtype=np.int64)
    if not values:
        return empty
    members = list(values)  # join() on a list is faster than on a set
    try:
        joined = "\n".join(members)
    except TypeError:  # a member that is not a str can equal no NIK
        joined = None
    if joined is None or joined.count("\n") != len(members) - 1 or not joined.isascii():
        members = [v for v in members if isinstance(v, str) and "\n" not in v and v.isascii()]
        if not members:
            return empty
        joined = "\n".join(members)
    a = np.frombuffer(joined.encode("ascii") + b"\n", dtype=np.uint8)
    del joined
    rows = a.reshape(-1, 17) if a.size == 17 * len(members) else None
    if rows is not None and (rows[:, 16] == 10).all():  # every member is 16 characters
        w = np.ascontiguousarray(rows[:, :16]).view(np.uint64)
        ok = _all_digits(w[:, 0]) & _all_digits(w[:, 1])
        return np.sort(_parse8(w[ok, 0]) * 100_000_000 + _parse8(w[ok, 1]))
    a = a[:-1]
    if a.size < 16:
        return empty
    seps = np.flatnonzero(a == 10)
    starts = np.empty(seps.size + 1, dtype=np.int64)
    starts[0] = 0
    starts[1:] = seps + 1
    ends = np.empty_like(starts)
    ends[:-1] = seps
    ends[-1] = a.size
    sel = starts[(ends - starts) == 16]
    w = sliding_window_view(a, 16)[sel].view(np.uint64)
    ok = _all_digits(w[:, 0]) & _all_digits(w[:, 1])
    keys = _parse8(w[ok, 0]) * 100_000_000 + _parse8(w[ok, 1])
    return np.sort(keys)


class _Prep:
    """Per-election lookup arrays derived from a RuleContext (built once, reused for every file)."""

    def __init__(self, ctx: RuleContext) -> None:
        b = ctx.births
        # DDMMYY -> chosen birth date as YYYYMMDD (0: no valid reading); DDMMYY -> the NIK's
        # century-free side of NIK_DOB_MISMATCH, YYMMDD * 4 + (1 L, 2 P) (-1: none).
        self.iso = np.zeros(1_000_000, dtype=np.int64)
        self.short = np.full(1_000_000, -1, dtype=np.int64)
        iso = _fixed_digits(b.iso, 6, ())
        iso_v = _fixed_digits(b.iso.values(), 10, (4, 7))
        short = _fixed_digits(b.short, 6, ())
        short_v = _fixed_digits((v[:8] for v in b.short.values()), 8, (2, 5))
        sex = [v[8:] for v in b.short.values()]
        self.ok = not (iso is None or iso_v is None or short is None or short_v is None
                       or any(x not in ("L", "P") for x in sex))
        if not self.ok:
            return
        self.iso[iso] = iso_v
        self.short[short] = short_v * 4 + np.where(np.array(sex) == "L", 1, 2)
        self.prefix_ok = np.zeros(1_000_000, dtype=bool)
        for p in ctx.nik_prefixes:
            if len(p) == 6 and p.isascii() and p.isdigit():
                self.prefix_ok[int(p)] = True
        self.region = _village_keys(ctx.region_villages)
        self.all = _village_keys(ctx.all_villages)
        vd = ctx.election.vote_date
        self.vote = vd.year * 10000 + vd.month * 100 + vd.day
        co = ctx.adult_cutoff
        if not (len(co) == 10 and co[4] == "-" and co[7] == "-"):
            self.ok = False
            return
        self.cutoff = int(co[:4] + co[5:7] + co[8:])


def _fixed_digits(texts, width: int, dashes: tuple[int, ...]):
    """int64 values of ASCII texts of exactly `width` characters, digits except '-' at `dashes`; None if any is not."""
    texts = list(texts)
    joined = "".join(texts)
    if len(joined) != width * len(texts) or not joined.isascii():
        return None
    m = np.frombuffer(joined.encode("ascii"), dtype=np.uint8).reshape(len(texts), width)
    digits = [j for j in range(width) if j not in dashes]
    if not ((m[:, digits] - 48 < 10).all() and (m[:, list(dashes)] == 45).all()):
        return None
    out = np.zeros(len(texts), dtype=np.int64)
    for j in digits:
        out = out * 10 + (m[:, j] - 48)
    return out


def _village_cells(W, L):
    """(key, ok) per cell from its first 16 bytes as two words: ok when the cell is PP.KK.CC.DDDD in ASCII.

    The key keeps the low nibble of every digit (an injective packing once the shape is checked).
    """
    w0, w1 = W[:, 0], W[:, 1]
    dots0 = np.uint64(0x0000FF0000FF0000)  # bytes 2 and 5 of "PP.KK.CC"
    ok = (L == 13) & ((w0 & dots0) == np.uint64(0x00002E00002E0000))
    ok &= _all_digits((w0 & ~dots0) | (_ASCII_ZEROS & dots0))
    ok &= (w1 & np.uint64(0xFF)) == np.uint64(0x2E)  # byte 8: "."
    ok &= _all_digits((w1 & np.uint64(0x000000FFFFFFFF00)) | (_ASCII_ZEROS & np.uint64(0xFFFFFF00000000FF)))
    key = (w0 & np.uint64(0x0F0F000F0F000F0F)) | ((w1 & np.uint64(0x000000000F0F0F0F00)) << np.uint64(4))
    return key.view(np.int64), ok


def _village_keys(villages: Collection[str]) -> "np.ndarray":
    vs = [v for v in villages if _VILLAGE.fullmatch(v)]
    if not vs:
        return np.zeros(0, dtype=np.int64)
    raw = np.frombuffer("".join(v + "\0\0\0" for v in vs).encode("ascii"), dtype=np.uint8)
    W = raw.reshape(len(vs), 16).view(np.uint64) & np.array([_BYTE_MASK[8], _BYTE_MASK[5]], dtype=np.uint64)
    key, ok = _village_cells(W, np.full(len(vs), 13))
    assert ok.all()
    return np.sort(key)


_PREP: dict[int, tuple[RuleContext, _Prep]] = {}


def warm(ctx: RuleContext) -> None:
    """Build the per-election lookup arrays now rather than on the first file (about 0.1 s)."""
    if available():
        _prep(ctx)


def _prep(ctx: RuleContext) -> _Prep:
    hit = _PREP.get(id(ctx))
    if hit is not None and hit[0] is ctx:
        return hit[1]
    p = _Prep(ctx)
    if len(_PREP) >= 8:
        _PREP.pop(next(iter(_PREP)))
    _PREP[id(ctx)] = (ctx, p)  # holds ctx, so the id cannot be reused while cached
    return p


# --------------------------------------------------------------------------- cells


class _Cells:
    """Where every cell of a CSV body lies in the raw bytes: start/end offsets per column."""

    def __init__(self, data: bytes, arr, b0: int, b1: int, pos, n: int, ascii_only: bool, strip: bool) -> None:
        self.data = data
        self.arr = arr
        self.N = arr.size
        self.b0, self.b1 = b0, b1
        self.pos = pos  # offsets from b0 of the 13n - 1 separators (12 delimiters per line, n - 1 newlines)
        self.n = n
        self.ascii = ascii_only
        self.strip = strip
        self._bounds: dict[int, tuple] = {}
        self._sep: dict[int, object] = {}
        self._line_start = None
        self._na: dict[int, object] = {}
        self._na_cells = None

    # -- offsets
    def release(self) -> None:
        """Drop the per-column arrays (about 30 bytes per row each); they are rebuilt on demand."""
        line_end = self._sep.get(NCOLS - 1)
        self._bounds.clear()
        self._sep = {NCOLS - 1: line_end}
        self._na.clear()

    def sep(self, k: int):
        """Offsets of the k-th separator of every line (k = 12: the line end)."""
        got = self._sep.get(k)
        if got is None:
            got = self.pos[k::NCOLS].astype(np.int64)
            got += self.b0
            self._sep[k] = got
        return got

    def bounds(self, c: int):
        """(start, end, length) int64 arrays for column c, cells stripped as the reference strips them."""
        got = self._bounds.get(c)
        if got is not None:
            return got
        S = self._line_start.copy() if c == 0 else self.sep(c - 1) + 1
        E = self.sep(c)
        if self.strip:
            S, E = self._strip(c, S, E.copy())
        got = (S, E, E - S)
        self._bounds[c] = got
        return got

    def _strip(self, c: int, S, E):
        arr, ws = self.arr, _WS_TABLE
        last = self.N - 1
        idx = np.flatnonzero((S < E) & ws[arr[np.minimum(S, last)]])
        while idx.size:
            S[idx] += 1
            idx = idx[(S[idx] < E[idx]) & ws[arr[np.minimum(S[idx], last)]]]
        idx = np.flatnonzero((S < E) & ws[arr[E - 1]])
        while idx.size:
            E[idx] -= 1
            idx = idx[(S[idx] < E[idx]) & ws[arr[E[idx] - 1]]]
        if not self.ascii:  # str.strip() also removes non-ASCII spaces (U+00A0, U+3000...): ask Python
            edge = np.flatnonzero((S < E) & ((arr[np.minimum(S, last)] >= 128) | (arr[E - 1] >= 128)))
            data = self.data
            for i in edge.tolist():
                raw = data[S[i]:E[i]].decode("utf-8")
                s = raw.strip()
                if s == raw:
                    continue
                if not s:
                    E[i] = S[i]
                    continue
                lead = len(raw) - len(raw.lstrip())
                trail = len(raw) - len(raw.rstrip())
                S[i] += len(raw[:lead].encode("utf-8"))
                E[i] -= len(raw[len(raw) - trail:].encode("utf-8"))
        return S, E

    def non_ascii(self, c: int):
        """Bool per row: does the cell of column c hold a non-ASCII byte? None when the file is ASCII."""
        if self.ascii:
            return None
        if self._na_cells is None:
            body = self.arr[self.b0:self.b1]
            at = np.flatnonzero(body >= 128)
            self._na_cells = np.unique(np.searchsorted(self.pos, at))
        if c not in self._na:
            k = self._na_cells
            rows = k[k % NCOLS == c] // NCOLS
            m = np.zeros(self.n, dtype=bool)
            m[rows] = True
            self._na[c] = m
        return self._na[c]

    def gather(self, S, w: int):
        """(len(S), w) uint8: the w bytes from each offset (zeros past the end of the data)."""
        N, arr = self.N, self.arr
        if N >= w:
            Sc = np.minimum(S, N - w)
            M = sliding_window_view(arr, w)[Sc]
            for i in np.flatnonzero(Sc != S).tolist():
                k = N - int(S[i])
                M[i, :k] = arr[S[i]:]
                M[i, k:] = 0
            return M
        M = np.zeros((S.size, w), dtype=np.uint8)
        for i, s in enumerate(S.tolist()):
            M[i, :N - s] = arr[s:]
        return M

    def words(self, S, L, nwords: int):
        """(len(S), nwords) uint64: each cell's first 8*nwords bytes, zeroed past the cell's length."""
        M = self.gather(S, 8 * nwords)
        W = M.view(np.uint64)  # fancy-indexed result is C-contiguous
        for j in range(nwords):
            W[:, j] &= _BYTE_MASK[np.clip(L - 8 * j, 0, 8)]
        return W

    def text(self, c: int, i: int) -> str:
        S, E, _ = self.bounds(c)
        return self.data[S[i]:E[i]].decode("utf-8")

    def texts(self, c: int, rows) -> list[str]:
        S, E, _ = self.bounds(c)
        data = self.data
        return [data[s:e].decode("utf-8") for s, e in zip(S[rows].tolist(), E[rows].tolist())]

    def column(self, c: int) -> list[str]:
        """Every cell of column c as str (what the reference's Table holds)."""
        S, E, L = self.bounds(c)
        if self.n == 0:
            return []
        w = int(L.max())
        if w > 64:
            data = self.data
            return [data[s:e].decode("utf-8") for s, e in zip(S.tolist(), E.tolist())]
        nw = max(1, -(-w // 8))
        W = self.words(S, L, nw)
        fixed = W.view(f"S{8 * nw}").ravel()  # trailing NULs are dropped by tolist(); cells hold none
        na = self.non_ascii(c)
        if na is None or not na.any():
            return fixed.astype(f"U{8 * nw}").tolist()
        return [b.decode("utf-8") for b in fixed.tolist()]

    # -- grouping by exact content
    def distinct_apply(self, c: int, rows, fn, dtype, default, chunk: int = 1 << 18):
        """fn(cell text) for the cells of column c at `rows`, called once per distinct content.

        Cells are grouped by a hash of their bytes, and every cell is compared with its group's
        representative byte for byte, so a hash collision can never merge two values.
        """
        out = np.full(rows.size, default, dtype=dtype)
        if rows.size == 0:
            return out
        cache: dict[str, object] = {}

        def call(text: str):
            if text not in cache:
                cache[text] = fn(text)
            return cache[text]

        S, E, L = self.bounds(c)
        for c0 in range(0, rows.size, chunk):
            part = rows[c0:c0 + chunk]
            Sr, Lr = S[part], L[part]
            short = np.flatnonzero(Lr <= 64)
            if short.size:
                Ls = Lr[short]
                nw = max(1, -(-int(Ls.max()) // 8))
                W = self.words(Sr[short], Ls, nw)
                h = Ls.astype(np.uint64)
                for j in range(nw):
                    h = (h ^ W[:, j]) * _GOLDEN
                    h ^= h >> np.uint64(31)
                uniq = _sorted_unique(h)
                gid = _index_in(uniq, h)
                rep = np.empty(uniq.size, dtype=np.int64)
                rep[gid] = np.arange(short.size)
                same = Ls[rep][gid] == Ls
                for j in range(nw):
                    same &= W[rep, j][gid] == W[:, j]
                results = np.array([call(t) for t in self.texts(c, part[short][rep])], dtype=dtype)
                res = results[gid]
                if not same.all():  # a hash collision: judge those cells one by one
                    for k in np.flatnonzero(~same).tolist():
                        res[k] = call(self.text(c, int(part[short][k])))
                out[c0 + short] = res
            long_ = np.flatnonzero(Lr > 64)
            if long_.size:
                out[c0 + long_] = np.array([call(t) for t in self.texts(c, part[long_])], dtype=dtype)
        return out


def split_csv(data: bytes) -> _Cells | None:
    """Locate every cell, or None when the file needs the reference parser (see the module docstring)."""
    if np is None:
        return None
    start = 3 if data.startswith(_BOM) else 0
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    nl = data.find(b"\n", start)
    if nl < 0:
        return None
    if start:
        ascii_only = bytes(memoryview(data)[start:]).isascii()
    else:
        ascii_only = data.isascii()
    if not ascii_only:
        try:
            str(memoryview(data)[start:], "utf-8")
        except UnicodeDecodeError:
            return None
    first = data[start:nl].decode("utf-8")
    delim = ";" if first.count(";") > first.count(",") else ","
    try:
        if _header_problem(next(csv.reader([first], delimiter=delim), [])):
            return None
    except csv.Error:
        return None  # the reference path says what is wrong
    b0, b1 = nl + 1, len(data)
    while b1 > b0 and data[b1 - 1] == 10:
        b1 -= 1
        if len(data) - b1 > 4096:
            return None
    if b1 <= b0 or data.find(b'"', b0, b1) >= 0 or data.find(b"\x00", b0, b1) >= 0:
        return None
    arr = np.frombuffer(data, dtype=np.uint8)
    body = arr[b0:b1]
    size = body.size
    # Separator offsets (relative to b0, int32 when they fit), found chunk by chunk so that no
    # file-sized temporary is allocated. The reference strips every cell when a space touches a
    # separator, a tab appears, or the body starts or ends with a space: look at the bytes around
    # each separator while they are in cache.
    before, after = arr[b0 - 1:], arr[b0 + 1:]  # before[p] is the byte before body[p] (b0 >= 1)
    # As the reference: any other whitespace str.strip() removes (non-ASCII, or ASCII such as
    # form feed) strips every cell too.
    strip = (arr[b0] == 32 or arr[b1 - 1] == 32 or data.find(b"\t", b0, b1) >= 0 or not ascii_only
             or any(data.find(c.encode(), b0, b1) >= 0 for c in _OTHER_ASCII_SPACE))
    itype = np.int32 if size < 2**31 - 1 else np.int64
    step = 1 << 22
    m, t = np.empty(min(step, size), dtype=bool), np.empty(min(step, size), dtype=bool)
    parts, newlines = [], 0
    for s0 in range(0, size, step):
        chunk = body[s0:s0 + step]
        mc, tc = m[:chunk.size], t[:chunk.size]
        np.equal(chunk, 10, out=mc)
        newlines += int(np.count_nonzero(mc))
        np.equal(chunk, ord(delim), out=tc)
        mc |= tc
        p = np.flatnonzero(mc)
        p += s0
        if not strip and p.size:
            strip = bool((before[p] == 32).any()) or bool((np.take(after, p, mode="clip") == 32).any())
        parts.append(p.astype(itype))
    del m, t
    pos = np.concatenate(parts) if parts else np.zeros(0, dtype=itype)
    del parts
    if pos.size % NCOLS != NCOLS - 1:
        return None
    n = (pos.size + 1) // NCOLS
    # n - 1 newlines in all, each where the 13th separator of a line must be: every line has 12 delimiters.
    line_end = np.empty(n, dtype=np.int64)
    line_end[:-1] = pos[NCOLS - 1::NCOLS]
    line_end[-1] = size
    if newlines != n - 1 or not (body[line_end[:-1]] == 10).all():
        return None
    # Line lengths in bytes bound lengths in characters: no line over the cell limit, no cell over it.
    line_start = np.empty(n, dtype=np.int64)
    line_start[0] = 0
    line_start[1:] = line_end[:-1] + 1
    if int((line_end - line_start).max()) > MAX_CELL_CHARS:
        return None
    line_end += b0
    line_start += b0
    cells = _Cells(data, arr, b0, b1, pos, n, ascii_only, bool(strip))
    cells._sep[NCOLS - 1] = line_end
    cells._line_start = line_start
    return cells


# --------------------------------------------------------------------------- the lazy table

_SLOTS = {name: Table.__dict__[name] for name in ("row_no",) + tuple(h.lower() for h in HEADER)}


class LazyTable(Table, dict=True):
    """A Table whose columns are built from the raw bytes on first access, then kept.

    Attribute access (t.nik, t.row_no, t.column(...), t.row(i)) behaves as on a Table. Code that
    reads a Struct's fields without attribute access (msgspec encoders, structs.asdict) must call
    materialize() first; pickling and == materialize by themselves.
    """

    def __len__(self) -> int:
        return self._cells.n

    def materialize(self) -> "LazyTable":
        for name in _SLOTS:
            getattr(self, name)
        return self

    def __reduce__(self):
        self.materialize()
        return (Table, tuple(getattr(self, f) for f in Table.__struct_fields__))

    def __eq__(self, other):
        if not isinstance(other, Table):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in Table.__struct_fields__)

    def __repr__(self) -> str:
        return f"LazyTable(source={self.source!r}, rows={len(self)})"


def _lazy(name: str, c: int | None) -> property:
    slot = _SLOTS[name]

    def get(self):
        v = slot.__get__(self)
        if v is None:
            cells = self._cells
            v = list(range(2, cells.n + 2)) if c is None else cells.column(c)
            slot.__set__(self, v)
        return v

    def set_(self, v) -> None:
        slot.__set__(self, v)

    return property(get, set_)


for _name in _SLOTS:
    setattr(LazyTable, _name, _lazy(_name, None if _name == "row_no" else HEADER.index(_name.upper())))


def lazy_table(cells: _Cells) -> LazyTable:
    t = LazyTable("csv", *([None] * (1 + NCOLS)))
    t._cells = cells
    return t


# --------------------------------------------------------------------------- the rules


def csv_bytes(path) -> bytes | None:
    """The file's bytes when template.read_table would parse it as CSV, else None (XLSX, .xls, unreadable)."""
    from pathlib import Path

    p = Path(path)
    if p.suffix.lower() in (".xlsx", ".xlsm", ".xls"):
        return None
    try:
        data = p.read_bytes()
    except OSError:
        return None  # the reference path reports it
    if data.startswith(b"PK\x03\x04"):
        return None
    return data


def validate_csv_bytes(data: bytes, ctx: RuleContext, scans: ScanSets | None = None,
                       other_pairs: Collection[str] = frozenset()) -> Verdicts | None:
    """Same verdicts as rules.validate(template.parse_csv_bytes(data), ...), or None: use the reference.

    None also covers every file the reference rejects (TemplateError): the caller runs the
    reference, which raises with its own message.
    """
    if not available():
        return None
    prep = _prep(ctx)
    if not prep.ok:
        return None
    cells = split_csv(data)
    if cells is None:
        return None
    return _judge(cells, ctx, prep, scans, other_pairs)


class _Col:
    __slots__ = ("cells", "c")

    def __init__(self, cells: _Cells, c: int) -> None:
        self.cells, self.c = cells, c

    def __getitem__(self, i: int) -> str:
        return self.cells.text(self.c, i)


class _RowReader:
    """Just enough of a Table for rules.fingerprint: t.<column>[i] decodes one cell."""

    def __init__(self, cells: _Cells) -> None:
        for c, h in enumerate(HEADER):
            setattr(self, h.lower(), _Col(cells, c))


def validate_table(t: Table, ctx: RuleContext, scans: ScanSets | None = None,
                   other_pairs: Collection[str] = frozenset()) -> Verdicts | None:
    """Same verdicts as rules.validate(t, ...) for a Table already read (an XLSX sheet), or None:
    use the reference.

    The cells are written out as the CSV body the numpy path reads, which is exact when no cell
    holds a comma, a line break, a quote or a NUL (the counts of separators say so) and every
    cell is stripped, as the XLSX reader leaves them. A NIK from a number cell that still reads
    as 16 digits goes to the reference: its text takes part in the duplicate rule while the row
    is judged by the cell's type, which only the reference does.
    """
    if not available() or len(t) == 0:
        return None
    prep = _prep(ctx)
    if not prep.ok:
        return None
    if any(len(t.nik[i]) == 16 and t.nik[i].isdigit() for i in t.nik_numeric):
        return None
    n = len(t)
    body = "\n".join(map(",".join, zip(*(t.column(h) for h in HEADER))))
    if (body.count(",") != (NCOLS - 1) * n or body.count("\n") != n - 1
            or '"' in body or "\x00" in body or "\r" in body):
        return None
    cells = split_csv((",".join(HEADER) + "\n" + body).encode("utf-8"))
    del body
    if cells is None:
        return None
    return _judge(cells, ctx, prep, scans, other_pairs, table=t)


def _judge(cells: _Cells, ctx: RuleContext, prep: _Prep, scans: ScanSets | None,
           other_pairs: Collection[str], table: Table | None = None) -> Verdicts | None:
    """table: the Table the cells were written from (XLSX): its cell types are verdicts too, and
    it is the result's table (its row numbers are the sheet's)."""
    n = cells.n
    arr, last = cells.arr, cells.N - 1
    bits = np.zeros(n, dtype=np.uint32)

    def flag(code: str, where) -> None:
        bits[where] |= np.uint32(_BIT[code])

    numeric = np.fromiter(table.nik_numeric, dtype=np.int64) if table is not None else np.zeros(0, np.int64)

    # --- NIK structure: 16 ASCII digits, as an int64
    S, _, L = cells.bounds(C_NIK)
    W = cells.words(S, L, 2)
    good = (L == 16) & _all_digits(W[:, 0]) & _all_digits(W[:, 1])
    val = _parse8(W[:, 0]) * 100_000_000 + _parse8(W[:, 1])
    val[~good] = -1
    del W
    bad = np.flatnonzero(~good)
    bad_ids: dict[str, int] = {}
    bid = cells.distinct_apply(C_NIK, bad, lambda s: bad_ids.setdefault(s, len(bad_ids)), np.int64, -1)
    bad_strs = list(bad_ids)
    as_number = np.array([nikmod.looks_like_number(s) and any(ch in s for ch in ".,eE") for s in bad_strs],
                         dtype=bool)[bid]
    if numeric.size:  # a number cell: digits lost whatever its text says now
        as_number |= np.isin(bad, numeric)
    flag("NIK_AS_NUMBER", bad[as_number])
    flag("NIK_FORMAT", bad[~as_number])
    nik_id = val.copy()  # identity of the NIK text: the value, or a negative id for unreadable ones
    nik_id[bad] = -1 - bid

    seg = np.where(good, (val // 10_000) % 1_000_000, 0)
    chosen = prep.iso[seg]
    chosen[~good] = 0
    usable = good & (chosen != 0)
    flag("NIK_DATE_INVALID", good & (chosen == 0))
    flag("NIK_SERIAL_0000", good & (val % 10_000 == 0))
    flag("NIK_PREFIX_UNKNOWN", good & ~prep.prefix_ok[np.where(good, val // 10_000_000_000, 0)])

    # --- TANGGAL_LAHIR: DD-MM-YYYY (- / .) or YYYY-MM-DD in 10 ASCII bytes; anything else through
    # rules.parse_row_date, once per distinct value
    S, _, L = cells.bounds(C_TGL)
    fast10 = L == 10
    na = cells.non_ascii(C_TGL)
    if na is not None:
        fast10 &= ~na
    rd = np.zeros(n, dtype=np.int64)  # YYYYMMDD of a valid row date, 0 when invalid
    f = np.flatnonzero(fast10)
    if f.size:
        M = cells.gather(S[f], 10)
        b = [M[:, j] for j in range(10)]
        d = [x - np.uint8(48) for x in b]  # uint8 wraps: anything but a digit is > 9
        dig = [x < 10 for x in d]
        del M
        sep2 = (b[2] == 45) | (b[2] == 47) | (b[2] == 46)
        sep5 = (b[5] == 45) | (b[5] == 47) | (b[5] == 46)
        dmy = dig[0] & dig[1] & sep2 & dig[3] & dig[4] & sep5 & dig[6] & dig[7] & dig[8] & dig[9]
        iso = (dig[0] & dig[1] & dig[2] & dig[3] & (b[4] == 45) & dig[5] & dig[6] & (b[7] == 45) & dig[8]
               & dig[9])
        d = [x.astype(np.int32) for x in d]
        dd = np.where(dmy, d[0] * 10 + d[1], d[8] * 10 + d[9])
        mm = np.where(dmy, d[3] * 10 + d[4], d[5] * 10 + d[6])
        yy = np.where(dmy, ((d[6] * 10 + d[7]) * 10 + d[8]) * 10 + d[9], ((d[0] * 10 + d[1]) * 10 + d[2]) * 10 + d[3])
        del d, dig, b
        leap = (yy % 4 == 0) & ((yy % 100 != 0) | (yy % 400 == 0))
        mdays = _MONTH_DAYS[np.clip(mm, 0, 12)] + (leap & (mm == 2))
        v = yy.astype(np.int64) * 10000 + mm * 100 + dd
        ok = ((dmy | iso) & (mm >= 1) & (mm <= 12) & (dd >= 1) & (dd <= mdays) & (yy >= 1)
              & (v >= 19000101) & (v <= prep.vote))
        rd[f] = np.where(ok, v, 0)
    rest = np.flatnonzero(~fast10)
    if rest.size:
        vote_date = ctx.election.vote_date

        def parse(s: str) -> int:
            d = parse_row_date(s, vote_date)
            return d.year * 10000 + d.month * 100 + d.day if d else 0

        rd[rest] = cells.distinct_apply(C_TGL, rest, parse, np.int64, 0)
    bad_date = rd == 0

    # --- JENIS_KELAMIN (1 L, 2 P, 0 invalid) and STATUS_PERKAWINAN (1 B, 2 S, 3 P, 0 invalid)
    def coded(c: int, table: dict[str, str], codes: dict[str, int]):
        S, _, L = cells.bounds(c)
        first = arr[np.minimum(S, last)]
        out = np.zeros(n, dtype=np.int8)
        one = L == 1
        for letter, code in codes.items():
            out[one & (first == ord(letter))] = code
        rest = np.flatnonzero(out == 0)
        out[rest] = cells.distinct_apply(c, rest, lambda s: codes.get(table.get(_norm_text(s), ""), 0), np.int8, 0)
        return out

    sex = coded(C_JK, _SEX, {"L": 1, "P": 2})
    marital = coded(C_KAWIN, _MARITAL, {"B": 1, "S": 2, "P": 3})

    # --- other required fields
    field_bad = bad_date | (sex == 0) | (marital == 0)
    _, _, L = cells.bounds(C_NAMA)
    field_bad |= L == 0
    long_name = np.flatnonzero(L > MAX_NAME)  # bytes; characters decide (UTF-8 names)
    field_bad[long_name] |= cells.distinct_apply(C_NAMA, long_name, lambda s: len(s) > MAX_NAME, bool, False)
    field_bad |= cells.bounds(C_ALAMAT)[2] == 0
    for c in (C_RT, C_RW):
        S, _, L = cells.bounds(c)
        w = cells.words(S, np.minimum(L, 8), 1)[:, 0]
        w |= _ASCII_ZEROS & ~_BYTE_MASK[np.minimum(L, 8)]  # bytes past the cell read as '0'
        ok = (L >= 1) & (L <= 3) & _all_digits(w)
        na = cells.non_ascii(c)
        if na is not None:  # Unicode digits count for str.isdigit
            r = np.flatnonzero(na)
            ok[r] = cells.distinct_apply(c, r, lambda s: 1 <= len(s) <= 3 and s.isdigit(), bool, False)
        field_bad |= ~ok
    flag("FIELD_INVALID", field_bad)

    # --- KODE_DESA: PP.KK.CC.DDDD as an int64 key; anything else asks the code-list sets directly
    S, _, L = cells.bounds(C_DESA)
    key, pattern = _village_cells(cells.words(S, np.minimum(L, 16), 2), L)
    region = np.zeros(n, dtype=np.int8)  # 0 in the region, 1 elsewhere in the list, 2 not in the list
    outside = np.flatnonzero(pattern & ~_member(key, prep.region))
    region[outside] = np.where(_member(key[outside], prep.all), 1, 2)
    odd = np.flatnonzero(~pattern)
    if odd.size:
        rv, av = ctx.region_villages, ctx.all_villages

        def where_is(s: str) -> int:
            if s in rv:
                return 0
            return 1 if s in av else 2

        region[odd] = cells.distinct_apply(C_DESA, odd, where_is, np.int8, 2)
    flag("OUT_OF_REGION", region == 1)
    flag("REGION_CODE_INVALID", region == 2)

    # --- the NIK against the row: DDMMYY and sex, century-free
    row_short = (((rd // 10000) % 100) * 10000 + rd % 10000) * 4 + sex
    flag("NIK_DOB_MISMATCH", usable & ~field_bad & (prep.short[seg] != row_short))

    # --- eligibility: the row's birth date decides; the NIK's only when the row's is unreadable
    young = (rd > prep.cutoff) | (bad_date & usable & (chosen > prep.cutoff))
    flag("UNDERAGE", young & (marital != 2) & (marital != 3))

    flag("PROHIBITED_OCCUPATION", cells.distinct_apply(C_KERJA, np.arange(n), is_prohibited, bool, False))

    # --- duplicates within the file: the first row of a NIK counts
    grows = np.flatnonzero(good)
    gk = val[grows]
    sorted_keys = np.sort(gk)
    same = sorted_keys[1:] == sorted_keys[:-1]
    if same.any():
        rep = _sorted_unique(sorted_keys[1:][same])
        cand = grows[_member(gk, rep)]
        order = np.lexsort((cand, val[cand]))
        rows, keys = cand[order], val[cand][order]
        starts = np.empty(rows.size, dtype=bool)
        starts[0] = True
        np.not_equal(keys[1:], keys[:-1], out=starts[1:])
        firsts = rows[starts][np.cumsum(starts) - 1]
        later, first = rows[~starts], firsts[~starts]
        flag("DUP_INTERNAL", later)
        potential = _differing(cells, later, first, rd)
        flag("DUP_POTENTIAL", potential)
    uniq = sorted_keys[np.concatenate(([True], ~same))] if sorted_keys.size else sorted_keys

    def present(values: Collection[str]):
        """Per distinct valid file NIK: in `values`?"""
        ref = _set_keys(values)
        if ref.size == 0:
            return np.zeros(uniq.size, dtype=bool)
        idx = np.searchsorted(ref, uniq)
        idx[idx == ref.size] = 0
        return ref[idx] == uniq

    if other_pairs:
        flag("DUP_EXTERNAL", good & _member(val, uniq[present(other_pairs)]))

    # --- phones shared by different NIKs
    flag("DUP_PHONE", _shared_phones(cells, nik_id))

    # --- scans
    if scans is not None:
        for code, have in (("NO_KTP", scans.ktp), ("NO_STATEMENT", scans.statement)):
            flag(code, good & _member(val, uniq[~present(have)]))
            if bad.size:
                has_bad = np.array([s in have for s in bad_strs], dtype=bool)
                flag(code, bad[~has_bad[bid]])

    # --- a date cell of a sheet, read as the date it shows: kept, and said so
    if table is not None and table.date_from_sheet:
        flag("DATE_FROM_SPREADSHEET", np.fromiter(table.date_from_sheet, dtype=np.int64))

    # The result keeps the raw bytes and separator offsets for its lazy table; the per-column
    # arrays are rebuilt if a column is ever read.
    cells.release()
    return _assemble(cells, bits, table)


def _differing(cells: _Cells, later, first, rd):
    """Rows of (later, first) pairs whose identity data differ (rules.fingerprint), both sides."""
    if later.size == 0:
        return later
    s1 = cells.bounds(C_NIK)[0]
    e5 = cells.bounds(C_TGL)[1]
    s8 = cells.bounds(C_ALAMAT)[0]
    e11 = cells.bounds(C_DESA)[1]
    # Equal bytes from NIK to TANGGAL_LAHIR and from ALAMAT to KODE_DESA mean equal fingerprints;
    # only pairs that differ there are fingerprinted.
    same = np.ones(later.size, dtype=bool)
    for s, e in ((s1, e5), (s8, e11)):
        la, lb = e[later] - s[later], e[first] - s[first]
        same &= la == lb
        nw = max(1, -(-int(la.max()) // 8))
        wa, wb = cells.words(s[later], la, nw), cells.words(s[first], lb, nw)
        same &= (wa == wb).all(axis=1)
    suspects = np.flatnonzero(~same).tolist()
    if not suspects:
        return later[:0]
    t = _RowReader(cells)
    cache: dict[int, str] = {}

    def fp(i: int) -> str:
        if i not in cache:
            r = int(rd[i])
            iso = f"{r // 10000:04d}-{r // 100 % 100:02d}-{r % 100:02d}" if r else cells.text(C_TGL, i)
            cache[i] = fingerprint(t, i, iso)  # type: ignore[arg-type]
        return cache[i]

    out = []
    for k in suspects:
        i, j = int(later[k]), int(first[k])
        if fp(i) != fp(j):
            out += (i, j)
    return np.array(out, dtype=np.int64)


def _shared_phones(cells: _Cells, nik_id):
    """Rows whose normalised phone (rules.normalize_phone) is shared with a different NIK."""
    n = cells.n
    S, _, L = cells.bounds(C_HP)
    W = cells.words(S, np.minimum(L, 16), 2)
    for j in range(2):
        W[:, j] |= _ASCII_ZEROS & ~_BYTE_MASK[np.clip(L - 8 * j, 0, 8)]
    fast = (L >= 1) & (L <= 16) & _all_digits(W[:, 0]) & _all_digits(W[:, 1])
    Lc = np.clip(L, 1, 16)
    ip = (_parse8(W[:, 0]) * 100_000_000 + _parse8(W[:, 1])) // _POW10[16 - Lc]  # int(p)
    b0 = (W[:, 0] & np.uint64(0xFF)).astype(np.int64)
    b1 = ((W[:, 0] >> _U8) & np.uint64(0xFF)).astype(np.int64)
    del W
    p62 = (L >= 2) & (b0 == ord("6")) & (b1 == ord("2"))
    value = np.where(p62, ip - 62 * _POW10[np.clip(Lc - 2, 0, 18)], ip)
    length = np.where(p62, L - 1, np.where(b0 == ord("8"), L + 1, L))
    key = np.where(fast, value * 32 + length, -1)  # -1: no phone
    rest = np.flatnonzero(~fast & (L > 0))
    if rest.size:
        odd: dict[str, int] = {}

        def canon_key(s: str) -> int:
            c = normalize_phone(s) if s else ""
            if not c:
                return -1
            if c.isascii() and c.isdigit() and len(c) <= 17:
                return int(c) * 32 + len(c)
            return -2 - odd.setdefault(c, len(odd))

        key[rest] = cells.distinct_apply(C_HP, rest, canon_key, np.int64, -1)
    prow = np.flatnonzero(key != -1)
    pk = key[prow]
    rep = _repeated(pk)
    if rep.size == 0:
        return prow[:0]
    cand = prow[_member(pk, rep)]
    order = np.lexsort((nik_id[cand], key[cand]))
    rows, keys, ids = cand[order], key[cand][order], nik_id[cand][order]
    new_group = np.empty(rows.size, dtype=bool)
    new_group[0] = True
    np.not_equal(keys[1:], keys[:-1], out=new_group[1:])
    gid = np.cumsum(new_group) - 1
    other_nik = np.zeros(rows.size, dtype=bool)
    other_nik[1:] = (ids[1:] != ids[:-1]) & ~new_group[1:]
    multi = np.zeros(int(gid[-1]) + 1, dtype=bool)
    multi[gid[other_nik]] = True
    return rows[multi[gid]]


def _assemble(cells: _Cells, bits, table: Table | None = None) -> Verdicts:
    n = cells.n
    status = [MS] * n
    reasons: list[tuple[str, ...]] = [()] * n
    rows = np.flatnonzero(bits)
    if rows.size:
        combos: dict[int, tuple[tuple[str, ...], str]] = {}
        for b in np.unique(bits[rows]).tolist():
            codes = tuple(code for code in ROW_CODES if b & _BIT[code])
            combos[b] = (codes, verdict_of(codes))
        for i, b in zip(rows.tolist(), bits[rows].tolist()):
            reasons[i], status[i] = combos[b]
    return Verdicts(table=lazy_table(cells) if table is None else table, status=status, reasons=reasons)
