"""`unggah validate`: judge every stored upload and keep the results.

Consumes every partition's `completed` stream through its own consumer group
(`validate`), with the ingesters' at-least-once discipline: a stable consumer
name, its own pending entries re-read first after a restart, an entry
acknowledged only after its results are committed, and idempotent by upload
id (a file already in the results is acknowledged without work). One
validator process is the single writer of the results store.

Per stored upload, by its `Upload-Metadata` (`kind` = list/ktp/statement wins,
else the `filename` extension: .csv/.xlsx/.xlsm = supporter list,
.pdf/.jpg/.jpeg = scan):

* supporter list: `dukungan` rules with the election's RuleContext (built once),
  the tenant's valid scans (NO_KTP / NO_STATEMENT) and the NIKs counted for
  other tenants (DUP_EXTERNAL); then the history rule against the tenant's
  earlier rows. Every row is stored with its verdict, reasons and history
  links; a TEMPLATE_INVALID file is stored as a rejected file with its message.
* scan: `dukungan.scans.check_scan`, linked to a NIK by metadata or file name.
  A valid scan that arrives after the list removes NO_KTP / NO_STATEMENT from
  the tenant's current rows of that NIK (recorded in `row_changes`), so the
  outcome does not depend on the order in which files arrive.

Without an election file, lists are stored as `skipped` (logged), scans are
still checked against default limits.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import signal
import socket
import time
from itertools import compress
from pathlib import Path

import msgspec
import redis.asyncio as redis

from buffer import keys
from buffer.connection import connect, ensure_groups, until_available
from buffer.messages import STORED, CompletedEvent, UploadState, decode_metadata, from_fields
from buffer.queue import Queue
from dukungan.election import Election, ScanLimits, load_election
from dukungan.gcpause import paused_gc
from dukungan.history import HistoryRow, apply_history, standing
from dukungan.preflight import validate_bytes
from dukungan.progress import Tally, progress_of_tally, tally, unit_cut
from dukungan.reasons import MS, sort_codes, verdict_of
from dukungan.rules import RuleContext, fingerprints, prepare
from dukungan.scans import ScanSets, check_scan, link_scan
from dukungan.template import TemplateError
from dukungan.windows import window_state
from stores.blobs import BlobStore, blob_store
from stores.results import (ACCEPTED, ERROR, REJECTED, SKIPPED, FileRecord, ResultsStore, ResultsWriter, RowColumns,
                            ScanRecord, now_ms, results_store)
from unggah.config import Settings

log = logging.getLogger("unggah.validate")

GROUP = "validate"
LIST_EXT = (".csv", ".xlsx", ".xlsm")
SCAN_EXT = (".pdf", ".jpg", ".jpeg")
SCAN_CODE = {"ktp": "NO_KTP", "statement": "NO_STATEMENT"}


def classify(filename: str, meta: dict[str, str]) -> str:
    """list | ktp | statement | scan (kind from the file name) | other."""
    kind = meta.get("kind", "").strip().lower()
    if kind in ("list", "daftar", "b1.1", "b.1.1-kwk"):
        return "list"
    if kind in ("ktp", "suket"):
        return "ktp"
    if kind in ("statement", "pernyataan", "b1", "b.1-kwk"):
        return "statement"
    ext = Path(filename).suffix.lower()
    if ext in LIST_EXT:
        return "list"
    if ext in SCAN_EXT:
        return "scan"
    return "other"


def text_metadata(metadata: str) -> dict[str, str]:
    try:
        return {k: v.decode("utf-8", errors="replace") for k, v in decode_metadata(metadata).items()}
    except ValueError:
        return {}


def progress_snapshot(ctx: RuleContext, counted: Tally) -> dict:
    """dukungan.progress of a pair's tallied rows, plus what the gateway needs to render it."""
    snap = msgspec.to_builtins(progress_of_tally(counted, ctx))
    snap["election"] = ctx.election.name
    snap["unit_kind"] = "kab/kota" if ctx.election.level == "gubernur" else "kecamatan"
    snap["computed_at"] = now_ms()
    return snap


# What a team sees for a list while the server has no election: never silence.
NO_ELECTION = ("not validated: no election configured. The list is stored, but its rows are not judged or "
               "counted until the server is started with an election (unggah up --election election.toml)")


class Validator:
    def __init__(self, settings: Settings, name: str, client: redis.Redis, results: ResultsStore,
                 blobs: BlobStore, election: Election | None = None, ctx: RuleContext | None = None) -> None:
        self.s = settings
        self.name = name
        self.r = client
        self.q = Queue(client, settings.partitions)
        self.results = results
        self.blobs = blobs
        self.election = election
        self.ctx = ctx
        self.stopping = asyncio.Event()
        self.lock = asyncio.Lock()  # one file at a time: one writer, CPU-bound work in a thread
        self.dirty: set[str] = set()  # tenants whose progress snapshot is stale (late scans, external flags)
        self.attempts: dict[str, int] = {}
        self.processed = 0

    @classmethod
    def for_settings(cls, settings: Settings, name: str, client: redis.Redis) -> "Validator":
        election = ctx = None
        if settings.election_file:
            election = load_election(settings.election_file)
            ctx = prepare(election)
        else:
            log.warning("no election_file configured: supporter lists will be stored as 'skipped', not validated")
        return cls(settings, name, client, results_store(settings), blob_store(settings), election, ctx)

    # ---- the loops

    async def ensure_groups(self) -> None:
        await ensure_groups(self.r, [keys.completed(p) for p in range(self.s.partitions)], GROUP)

    async def run(self) -> None:
        if not await until_available(self.ensure_groups, self.stopping):
            return
        if self.ctx is not None:
            await asyncio.to_thread(self._write_meta)
        loops = [asyncio.create_task(self.partition_loop(p)) for p in range(self.s.partitions)]
        loops.append(asyncio.create_task(self.progress_loop()))
        log.info("validator started", extra={"consumer": self.name, "partitions": self.s.partitions,
                                            "election": self.election.name if self.election else None})
        await self.stopping.wait()
        await asyncio.wait(loops, timeout=self.s.ingest_block_ms / 1000 + 30)
        for t in loops:
            t.cancel()
        log.info("validator stopped", extra={"consumer": self.name})

    def _write_meta(self) -> None:
        assert self.ctx is not None
        with self.results.write() as w:
            w.set_meta("election", self.ctx.election.name)
            empty = tally([], unit_cut(self.ctx))
            w.set_meta("empty_progress", msgspec.json.encode(progress_snapshot(self.ctx, empty)).decode())

    async def partition_loop(self, p: int) -> None:
        own_pending = True  # after a restart, first finish what we held under this name
        stream = keys.completed(p)
        while not self.stopping.is_set():
            try:
                res = await self.r.xreadgroup(GROUP, self.name, {stream: "0" if own_pending else ">"},
                                              count=self.s.ingest_read_count,
                                              block=None if own_pending else self.s.ingest_block_ms)
                raw = res[0][1] if res else []
                if own_pending and not raw:
                    own_pending = False
                    continue
                failed = False
                for entry_id, fields in raw:
                    if self.stopping.is_set():
                        break
                    if not await self.handle(p, entry_id, fields):
                        failed = True
                # Entries that failed stay pending under our name: retry them after a pause.
                own_pending = failed or (own_pending and bool(raw))
                if failed:
                    await asyncio.sleep(1.0)
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError) as e:
                log.warning("redis unavailable; retrying", extra={"partition": p, "error": str(e)})
                own_pending = True  # an entry read but not acknowledged is ours to finish
                await asyncio.sleep(0.5)
            except Exception:
                log.exception("validate loop error", extra={"partition": p})
                own_pending = True
                await asyncio.sleep(0.5)

    async def progress_loop(self) -> None:
        """Late scans and external flags change rows of tenants in bulk: refresh their progress
        at most every max(0.5 s, 4x the last refresh's duration)."""
        pause = 0.5
        while not self.stopping.is_set():
            try:
                await asyncio.wait_for(self.stopping.wait(), pause)
                return
            except asyncio.TimeoutError:
                pass
            if not self.dirty or self.ctx is None:
                continue
            t0 = time.monotonic()
            async with self.lock:
                tenants, self.dirty = self.dirty, set()
                try:
                    await asyncio.to_thread(self._refresh, tenants)
                except Exception:
                    log.exception("progress refresh failed")
                    self.dirty |= tenants
            pause = max(0.5, 4 * (time.monotonic() - t0))

    def _refresh(self, tenants: set[str]) -> None:
        assert self.ctx is not None
        with self.results.write() as w:
            for t in tenants:
                w.save_progress(t, progress_snapshot(self.ctx, w.tally(t, unit_cut(self.ctx))))

    async def handle(self, p: int, entry_id: bytes, fields: dict[bytes, bytes] | None) -> bool:
        """Process one completed event; True when it is acknowledged."""
        stream = keys.completed(p)
        if not fields:  # deleted while pending
            await self.r.xack(stream, GROUP, entry_id)
            return True
        ev = from_fields(fields, CompletedEvent)
        try:
            state = await self.q.upload(ev.u)
            async with self.lock:
                await asyncio.to_thread(self.process, ev, state)
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            raise
        except Exception as exc:
            n = self.attempts[ev.u] = self.attempts.get(ev.u, 0) + 1
            log.exception("validation failed", extra={"upload": ev.u, "attempt": n})
            if n < self.s.ingest_max_deliveries:
                return False
            # Give up on this file, visibly: the team sees an error instead of silence.
            async with self.lock:
                await asyncio.to_thread(self._record_error, ev, f"{type(exc).__name__}: {exc}")
        self.attempts.pop(ev.u, None)
        await self.r.xack(stream, GROUP, entry_id)  # only after the results are committed
        self.processed += 1
        return True

    # ---- the work (synchronous, in a worker thread, one at a time)

    def _record_error(self, ev: CompletedEvent, message: str) -> None:
        meta = text_metadata(ev.metadata)
        with self.results.write() as w:
            if not w.has_file(ev.u):
                w.add_file(FileRecord(upload_id=ev.u, tenant=ev.tenant, kind=classify(meta.get("filename", ""), meta),
                                      filename=meta.get("filename", ""), sha256=ev.sha256, length=ev.length,
                                      status=ERROR, message=f"validation failed repeatedly: {message[:500]}",
                                      stored_at=ev.at))

    def process(self, ev: CompletedEvent, state: UploadState | None) -> None:
        if ev.state != STORED:
            return  # failed uploads have no file to judge; their status endpoint says why
        if state is not None and state.concat == "partial":
            return  # a part of a concatenation: the final upload is judged
        meta = text_metadata(ev.metadata)
        filename = meta.get("filename", "")
        kind = classify(filename, meta)
        base = dict(upload_id=ev.u, tenant=ev.tenant, kind=kind, filename=filename, sha256=ev.sha256,
                    length=ev.length, stored_at=ev.at)
        if kind == "list":
            self.process_list(ev, state, base)
        elif kind in ("ktp", "statement", "scan"):
            self.process_scan(ev, meta, base)
        else:
            with self.results.write() as w:
                if not w.has_file(ev.u):
                    w.add_file(FileRecord(**base, status=SKIPPED,
                                          message="neither a supporter list (.csv/.xlsx) nor a scan (.pdf/.jpg); "
                                                  "stored, not validated. Set metadata kind=list|ktp|statement"))

    def round_of(self, tenant: str, state: UploadState | None) -> tuple[str, str]:
        """(round name, kind) the upload was created in."""
        e = self.election
        if e is None or state is None:
            return "", "submission"
        name = state.window.split(" (extended")[0].strip()
        if not name and state.created_at:
            st = window_state(e, tenant, dt.datetime.fromtimestamp(state.created_at / 1000, dt.timezone.utc))
            name = st.round or ""
        kind = next((w.kind for w in e.windows if w.name == name), "submission")
        return name, kind

    def process_list(self, ev: CompletedEvent, state: UploadState | None, base: dict) -> None:
        with paused_gc():  # a million-row list makes millions of objects and no cycles
            self._process_list(ev, state, base)

    def _process_list(self, ev: CompletedEvent, state: UploadState | None, base: dict) -> None:
        tenant = ev.tenant
        with self.results.write() as w:
            if w.has_file(ev.u):
                return  # a duplicate delivery: already committed
            if self.ctx is None:
                log.warning("list not validated: no election_file configured", extra={"upload": ev.u})
                w.add_file(FileRecord(**base, status=SKIPPED, message=NO_ELECTION))
                return
            round_name, round_kind = self.round_of(tenant, state)
            ktp, statement = w.scan_niks(tenant)
            others = w.counted_elsewhere(tenant)
            with self.blobs.open_stored(ev.u) as f:  # FileNotFoundError: retried, then dead-lettered
                data = f.read()
            try:
                v = validate_bytes(data, self.ctx, scans=ScanSets(frozenset(ktp), frozenset(statement)),
                                   other_pairs=others)
            except TemplateError as e:
                w.add_file(FileRecord(**base, status=REJECTED, round=round_name,
                                      message=f"TEMPLATE_INVALID: {e.message_id} / {e.message_en}",
                                      problems=list(e.problems)))
                log.info("list rejected", extra={"upload": ev.u, "tenant": tenant, "reason": "TEMPLATE_INVALID"})
                return
            t = v.table
            niks = t.nik
            fps = fingerprints(t)  # column by column: a Python call per row costs seconds at a million rows
            hist = w.history(tenant, set(niks))
            row_id = {(h.upload_id, h.row_no): h.id for h in hist}
            earlier = standing(HistoryRow(h.nik, h.status, h.upload_id, h.row_no, h.fingerprint, h.round,
                                          h.superseded_by is not None) for h in hist)
            res = apply_history(v, earlier, round_kind, fps)
            v2 = res.verdicts
            w.add_file(FileRecord(**base, status=ACCEPTED, rows=len(v2), round=round_name))
            ids = w.add_rows(ev.u, tenant, round_name,
                             RowColumns(t.row_no, niks, t.nama, t.kode_desa, v2.status, v2.reasons, fps))
            w.link([(row_id[(r.earlier.upload_id, r.earlier.row_no)], ids[r.index], r.action,
                     r.action in ("correction", "resubmission")) for r in res.resolutions])
            counted_here = set(compress(niks, map(MS.__eq__, v2.status))) if others else set()
            dirty = self.flag_external(w, counted_here & others, ev.u)
            w.save_progress(tenant, progress_snapshot(self.ctx, w.tally(tenant, unit_cut(self.ctx))))
        self.dirty |= dirty - {tenant}
        log.info("list validated", extra={"upload": ev.u, "tenant": tenant, "rows": len(v2),
                                          "history": len(res.resolutions)})

    def flag_external(self, w: ResultsWriter, niks: set[str], cause: str) -> set[str]:
        """A NIK counted (MS) for two tenants: every current row of it, on both sides, carries
        DUP_EXTERNAL (pending: the supporter chooses at field verification). Returns tenants changed."""
        changed: set[str] = set()
        for nik in niks:
            rows = w.rows_of(None, [nik])
            counted_by = {tenant for row, tenant in rows if row.status == MS}
            for row, tenant in rows:
                if counted_by - {tenant} and "DUP_EXTERNAL" not in row.reasons:
                    reasons = sort_codes(row.reasons + ("DUP_EXTERNAL",))
                    w.change_row(row, verdict_of(reasons), reasons, cause,
                                 "NIK counted for another pair (DUP_EXTERNAL)")
                    changed.add(tenant)
        return changed

    def process_scan(self, ev: CompletedEvent, meta: dict[str, str], base: dict) -> None:
        tenant = ev.tenant
        limits = self.election.scans if self.election else ScanLimits()
        filename = base["filename"]
        hint = dict(meta)
        if base["kind"] in ("ktp", "statement"):
            hint["kind"] = base["kind"]
        link = link_scan(filename or ev.u, hint)
        with self.results.write() as w:
            if w.has_file(ev.u):
                return
            if link is None:
                msg = (f"{filename or ev.u}: nama berkas tanpa NIK 16 digit atau tanpa jenis (ktp/pernyataan) / "
                       "file name has no 16-digit NIK or no kind (ktp/pernyataan); name it <NIK>_ktp.jpg or "
                       "<NIK>_pernyataan.pdf, or send metadata nik and kind")
                w.add_file(FileRecord(**base, status=REJECTED, message=msg, problems=[msg]))
                w.add_scan(ev.u, tenant, filename, ScanRecord(nik="", kind="", ok=False, problems=[msg]))
                return
            base["kind"] = link.kind
            with self.blobs.open_stored(ev.u) as f:
                # A scan over the limit is refused by its size and first bytes, never read whole.
                data = f.read(limits.max_bytes + 1)
            size = len(data) if len(data) <= limits.max_bytes else base["length"]
            check = check_scan(filename or ev.u, data, limits, size=size)
            scan = ScanRecord(nik=link.nik, kind=link.kind, ok=check.ok, content_type=check.content_type or "",
                              size=check.size, pages=check.pages, problems=list(check.problems))
            w.add_file(FileRecord(**base, status=ACCEPTED if check.ok else REJECTED,
                                  message="; ".join(check.problems), problems=list(check.problems)))
            w.add_scan(ev.u, tenant, filename, scan)
            if not check.ok:
                return
            # A late scan: the tenant's current rows of this NIK lose the missing-scan reason.
            code = SCAN_CODE[link.kind]
            became_ms = False
            for row, _ in w.rows_of(tenant, [link.nik]):
                if code in row.reasons:
                    reasons = tuple(c for c in row.reasons if c != code)
                    status = verdict_of(reasons)
                    w.change_row(row, status, reasons, ev.u, f"{link.kind} scan arrived ({filename})")
                    self.dirty.add(tenant)
                    became_ms |= status == MS
            if became_ms:
                self.dirty |= self.flag_external(w, {link.nik}, ev.u)


async def run(settings: Settings, name: str) -> int:
    client = connect(settings.redis_url, retry=False, cluster=settings.redis_cluster)  # a group's consumer: see connect
    consumer = name if "." in name else f"{socket.gethostname()}.{name}"
    v = Validator.for_settings(settings, consumer, client)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, v.stopping.set)
    try:
        await v.run()
    finally:
        v.results.close()
        await client.aclose()
    return 0
