"""Validation results over HTTP: progress, verdict exports, a file's outcome.

    GET /progress[?tenant=T]        per-pair progress (shape: docs/client.md)
    GET /progress/all               every tenant's summary (verifiers, observers)
    GET /verdicts.csv[?tenant=T][&upload=ID]   row verdicts, both languages' labels
    GET /files/{id}/verdicts        a file's outcome: rejection message, or row counts

Access (the request's principal, see gateway/auth.py):
  operator  own tenant only; another tenant's name or upload id is a 404 (nothing leaks)
  verifier  any tenant, named with ?tenant=
  observer  progress only (/progress?tenant=T, /progress/all); verdicts are 403

The results are read through `ResultsReader` (the validator's SQLite file, read-only, unless
the app is given another). The window
(name, close, extension) is computed here, on the gateway's clock.

Times are ISO 8601 in the election's time zone (UTC, `Z`, without an election) under their
plain names, each beside its epoch milliseconds as `<name>_ms`: `closes_at`/`closes_at_ms`,
`next_opens_at`/`next_opens_at_ms`, `computed_at`/`computed_at_ms`, `validated_at`/`validated_at_ms`.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import time
from typing import Callable

import orjson
from aiohttp import web

from dukungan.election import Election
from dukungan.export import EXPORT_HEADER, as_text, verdict_records
from dukungan.windows import window_state
from buffer.tenants import TENANT_ID
from gateway.auth import PUBLIC
from gateway.context import PRINCIPAL, STREAMING
from gateway.problems import problem
from stores.results import FileRecord, ResultsReader
from unggah.times import stamped

UTC = dt.timezone.utc


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


class ResultsAPI:
    def __init__(self, results: ResultsReader, election: Election | None, clock: Callable[[], float] = time.time,
                 tenants=None) -> None:
        self.results = results
        self.election = election
        self.clock = clock
        self.tenants = tenants  # buffer.tenants.TenantStore, to list tenants without results yet

    # ---- access

    @staticmethod
    def principal(request: web.Request):
        return request.get(PRINCIPAL, PUBLIC)

    def target(self, request: web.Request, *, verdicts: bool) -> str | web.Response:
        """The tenant this request may read, or the refusal."""
        p = self.principal(request)
        asked = request.query.get("tenant", "").strip()
        if p.role == "observer" and verdicts:
            return problem(403, "progress-only-role",
                           "the observer role sees progress (/progress?tenant=..., /progress/all), not row verdicts")
        if p.role == "operator":
            if asked and asked != p.tenant:
                return problem(404, "tenant-not-found", f"no tenant {asked[:64]!r} here")
            return p.tenant
        if not asked:
            return problem(400, "tenant-required",
                           "name the pair with ?tenant=<id>; /progress/all lists every pair")
        if not TENANT_ID.match(asked):  # it also names the CSV download: no stray characters
            return problem(404, "tenant-not-found", f"no tenant {asked[:64]!r} here")
        return asked

    # ---- reading (blocking SQLite reads run in a thread)

    async def _read(self, fn, *args):
        if not self.results.available():
            return None
        return await asyncio.to_thread(fn, *args)

    @property
    def tz(self) -> dt.tzinfo:
        """The zone of every time a person reads here: the election's (WIB, WITA, WIT)."""
        return self.election.tz if self.election is not None else UTC

    def window(self, tenant: str) -> dict | None:
        e = self.election
        if e is None:
            return None
        now = dt.datetime.fromtimestamp(self.clock(), UTC)
        st = window_state(e, tenant, now)
        if not st.open:
            return {"name": None, "open": False,
                    "next_opens_at": st.next_opens_at.astimezone(e.tz).isoformat() if st.next_opens_at else None,
                    "next_opens_at_ms": int(st.next_opens_at.timestamp() * 1000) if st.next_opens_at else None}
        assert st.closes_at is not None
        kind = next((w.kind for w in e.windows if w.name == st.round), None)
        return {"name": st.round, "kind": kind, "open": True, "closes_at": st.closes_at.astimezone(e.tz).isoformat(),
                "closes_at_ms": int(st.closes_at.timestamp() * 1000), "extension": st.extended_by}

    def render(self, tenant: str, snap: dict | None, uploads: dict[str, int] | None,
               not_counted: list[FileRecord] | None = None) -> dict:
        """The client's shape (docs/client.md) plus every field of dukungan.progress.Progress."""
        body: dict = {"tenant": tenant}
        if snap is None:
            body["ms"] = 0
            body["validated"] = False
        else:
            body.update({
                "election": snap.get("election"),
                "minimum": snap["min_support"],
                "ms": snap["ms"], "ms_pending_external": snap["ms_pending_external"],
                "bms": snap["bms"], "tms": snap["tms"],
                "shortfall": snap["shortfall"], "correction_required": snap["correction_required"],
                "spread": {"required": snap["min_spread"], "met": snap["units_meeting"], "total": snap["units"],
                           "unit_kind": snap.get("unit_kind"), "units": snap["ms_per_unit"],
                           "shortfall": snap["spread_shortfall"]},
                "bms_by_reason": snap["bms_by_reason"], "tms_by_reason": snap["tms_by_reason"],
                "flags_by_reason": snap["flags_by_reason"],
            })
            for k in ("min_support", "min_spread", "ms_per_unit", "units_meeting", "units", "spread_shortfall",
                      "met"):
                if k in snap:
                    body[k] = snap[k]
            if isinstance(snap.get("computed_at"), int):  # the validator's stamp, epoch ms
                body.update(stamped(self.tz, computed_at=snap["computed_at"]))
        if uploads is not None:
            body["uploads"] = uploads
        if not_counted:
            # A list whose rows count for nothing is the first thing a team must see, by name.
            body["lists_not_counted"] = [
                {"id": f.upload_id, "filename": f.filename, "status": f.status, "message": f.message,
                 "problems": f.problems[:20]} for f in not_counted]
        w = self.window(tenant)
        if w is not None:
            body["window"] = w
        return body

    def _tenant_progress(self, tenant: str) -> tuple[dict | None, dict[str, int], list[FileRecord]]:
        snap = self.results.progress(tenant)
        if snap is None:
            empty = self.results.meta("empty_progress")
            snap = orjson.loads(empty) if empty else None
        return snap, self.results.upload_counts(tenant), self.results.lists_not_counted(tenant)

    # ---- handlers

    async def progress(self, request: web.Request) -> web.Response:
        tenant = self.target(request, verdicts=False)
        if isinstance(tenant, web.Response):
            return tenant
        got = await self._read(self._tenant_progress, tenant)
        snap, uploads, not_counted = got if got else (None, None, None)
        return _json(self.render(tenant, snap, uploads, not_counted))

    async def progress_all(self, request: web.Request) -> web.Response:
        p = self.principal(request)
        if p.role == "operator":
            return problem(403, "commission-only", "every pair's progress is for the commission's verifiers and "
                                                   "the supervisors' observers; /progress shows your own pair")
        snaps = await self._read(self.results.all_progress) or {}
        names = set(snaps)
        if self.tenants is not None:
            names |= {t.id for t in await self.tenants.list()}
        empty = await self._read(self.results.meta, "empty_progress")
        out = []
        for t in sorted(names):
            body = self.render(t, snaps.get(t) or (orjson.loads(empty) if empty else None), None)
            for k in ("bms_by_reason", "tms_by_reason", "flags_by_reason", "ms_per_unit"):
                body.pop(k, None)
            if "spread" in body:
                body["spread"] = {k: v for k, v in body["spread"].items() if k != "units"}
            out.append(body)
        return _json({"election": self.election.name if self.election else None, "tenants": out})

    async def verdicts_csv(self, request: web.Request) -> web.StreamResponse:
        tenant = self.target(request, verdicts=True)
        if isinstance(tenant, web.Response):
            return tenant
        upload = request.query.get("upload", "").strip() or None
        if upload is not None:
            f = await self._read(self.results.file, upload)
            if f is None or f.tenant != tenant:
                return problem(404, "upload-not-found", f"no validated list {upload[:80]!r} for this pair")
        resp = web.StreamResponse(headers={
            "Content-Type": "text/csv; charset=utf-8", "Cache-Control": "no-store",
            "Content-Disposition": f'attachment; filename="verdicts-{upload or tenant}.csv"'})
        await resp.prepare(request)
        request[STREAMING] = True
        await resp.write("\ufeff".encode())  # UTF-8 with BOM, as dukungan.export writes it
        if upload is not None:
            # One file: exactly what `unggah check --export` writes for the same file.
            header = EXPORT_HEADER
        else:
            # The whole pair: every row ever received, which upload it came from, and whether it
            # still counts in the pair's standing (a corrected row is kept, superseded).
            header = ("UNGGAHAN", "BERKAS") + EXPORT_HEADER + ("BERLAKU",)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        await resp.write(buf.getvalue().encode())
        if self.results.available():
            it = self.results.verdict_batches(tenant, upload)
            while True:
                batch = await asyncio.to_thread(next, it, None)
                if batch is None:
                    break
                buf = io.StringIO()
                cw = csv.writer(buf, lineterminator="\n")
                if upload is not None:
                    cw.writerows(verdict_records(r for r, _ in batch))
                else:
                    for (r, fname), rec in zip(batch, verdict_records(r for r, _ in batch)):
                        cw.writerow((r.upload_id, as_text(fname)) + tuple(rec) + ("TIDAK" if r.superseded_by else "YA",))
                await resp.write(buf.getvalue().encode())
        await resp.write_eof()
        return resp

    async def file_verdicts(self, request: web.Request) -> web.Response:
        p = self.principal(request)
        upload_id = request.match_info["upload_id"]
        if p.role == "observer":
            return problem(403, "progress-only-role", "the observer role sees progress (/progress), not files")
        f = await self._read(self.results.file, upload_id)
        if f is None or (p.role == "operator" and f.tenant != p.tenant):
            return problem(404, "not-validated",
                           f"no validation result for upload {upload_id[:80]!r} (yet): it is still being "
                           "received, stored or validated, or it is not yours; GET /files/<id>/status says which")
        body = {"id": f.upload_id, "tenant": f.tenant, "kind": f.kind, "filename": f.filename,
                "sha256": f.sha256, "status": f.status, "message": f.message or None, "problems": f.problems,
                "round": f.round or None, **stamped(self.tz, validated_at=f.validated_at or None)}
        if f.kind == "list" and f.status == "accepted":
            body["rows"] = f.rows
            body.update(await self._read(self.results.file_counts, upload_id))
        elif f.kind in ("ktp", "statement", "scan"):
            s = await self._read(self.results.scan, upload_id)
            if s is not None:
                body["scan"] = {"nik": s.nik or None, "kind": s.kind or None, "ok": s.ok,
                                "content_type": s.content_type or None, "size": s.size, "pages": s.pages}
        return _json(body)


def add_routes(app: web.Application, results: ResultsReader, election: Election | None,
               clock: Callable[[], float] = time.time, tenants=None) -> ResultsAPI:
    api = ResultsAPI(results, election, clock, tenants)
    app.router.add_get("/progress", api.progress)
    app.router.add_get("/progress/all", api.progress_all)
    app.router.add_get("/verdicts.csv", api.verdicts_csv)
    app.router.add_get("/files/{upload_id}/verdicts", api.file_verdicts)
    return api
