"""The Python API under `unggah push` and `unggah status`, for teams that script their uploads.

    import asyncio
    from client.api import push
    report = asyncio.run(push(["kirim/"], "https://unggah.example", token="...", parallel=4))
    print(report.counts(), [f.reason for f in report.files if f.state != "stored"])
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Callable, Iterable, TextIO

import msgspec
import orjson

from client import preflight as pf
from client import receipts as rcpt
from client.progress import ProgressBoard
from client.retry import RetryBudget
from client.state import StateFile, default_path, upload_key
from client.transport import Endpoints, Http
from client.uploader import Capabilities, FileJob, FileResult, Uploader, pick_checksum, sha256_file

MiB = 1 << 20
SKIP_SUFFIXES = (".receipt.json", ".tmp")


class PreflightResult(msgspec.Struct, kw_only=True):
    path: str
    rejected: bool
    code: str = ""
    checked: str = "rules"
    summary: str = ""


class PushReport(msgspec.Struct, kw_only=True):
    server: str
    files: list[FileResult] = []
    preflight: list[PreflightResult] = []
    stopped: str | None = None  # why nothing was sent (preflight), if so
    seconds: float = 0.0  # preflight to the last status answer
    preflight_seconds: float = 0.0
    upload_seconds: float = 0.0  # to the last acknowledged byte
    bytes_total: int = 0
    bytes_sent: int = 0
    requests: int = 0
    retries: int = 0
    receipts: str = ""  # what the server said about receipts

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.files:
            out[f.state] = out.get(f.state, 0) + 1
        return out

    def lists_not_counted(self) -> list[FileResult]:
        """Lists the server stored but whose rows count for nothing: rejected, not validated."""
        return [f for f in self.files if f.verdict not in (None, "accepted")]

    @property
    def ok(self) -> bool:
        if self.stopped:
            return False
        return all(f.state in ("stored", "uploaded") and f.receipt_status != rcpt.INVALID
                   and f.verdict not in ("rejected", "error") for f in self.files)


def collect(paths: Iterable[str | os.PathLike[str]], exclude: Iterable[Path] = ()) -> list[FileJob]:
    """Files and folders (recursively) to upload: supporter lists first, hidden files, office lock
    files and our own receipts left out."""
    skip = {p.resolve() for p in exclude}
    seen: set[Path] = set()
    jobs: list[FileJob] = []

    def add(p: Path) -> None:
        rp = p.resolve()
        if rp in seen or rp in skip:
            return
        name = p.name
        if name.startswith((".", "~$")) or name.endswith(SKIP_SUFFIXES) or name in ("Thumbs.db", "desktop.ini"):
            return
        st = p.stat()
        seen.add(rp)
        jobs.append(FileJob(rp, st.st_size, st.st_mtime_ns, is_list=pf.is_list(p)))

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for f in sorted(files):
                    add(Path(root) / f)
        elif p.is_file():
            add(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    jobs.sort(key=lambda j: (not j.is_list, str(j.path)))
    return jobs


def run_preflight(jobs: list[FileJob], election: str | None) -> list[PreflightResult]:
    out = []
    for j in jobs:
        if j.is_list:
            c = pf.check_list(j.path, election)
            out.append(PreflightResult(path=c.path, rejected=c.rejected, code=c.code, checked=c.checked,
                                       summary=c.summary))
    return out


async def push(paths: Iterable[str | os.PathLike[str]], server: str, token: str | None = None, *,
               parallel: int = 4, chunk_size: int = 4 * MiB, election: str | None = None, force: bool = False,
               state_path: str | os.PathLike[str] | None = None, checksum: str = "auto",
               creation_with_upload: bool = True, wait: float = 120.0, retry_ratio: float = 0.1,
               retry_min: int = 30, progress: bool | TextIO = False,
               on_preflight: Callable[[PreflightResult], None] | None = None) -> PushReport:
    """Preflight, upload, confirm storage and collect receipts. Never raises for a file that
    fails: its FileResult says why. `progress`: False, True (stderr) or a text stream."""
    t0 = time.monotonic()
    ep = Endpoints.from_server(server)
    state_file = Path(state_path) if state_path else default_path()
    report = PushReport(server=ep.creation)
    jobs = collect(paths, exclude=[state_file])
    report.bytes_total = sum(j.size for j in jobs)

    # 1. Preflight of every supporter list, before any byte is sent.
    report.preflight = await asyncio.to_thread(run_preflight, jobs, election)
    report.preflight_seconds = time.monotonic() - t0
    for p in report.preflight:
        if on_preflight:
            on_preflight(p)
    rejected = [p for p in report.preflight if p.rejected]
    if rejected and not force:
        report.stopped = (f"{len(rejected)} supporter list(s) would be rejected whole ({rejected[0].code or 'TEMPLATE_INVALID'}): "
                          + ", ".join(Path(p.path).name for p in rejected)
                          + "; nothing was sent. Fix them, or pass --force to send anyway.")
        report.seconds = time.monotonic() - t0
        return report

    state = StateFile(state_file)
    budget = RetryBudget(retry_ratio, retry_min)
    out = progress if progress not in (True, False) else None
    board = ProgressBoard(out=out, enabled=bool(progress))
    board.plan(len(jobs), report.bytes_total)
    results: list[FileResult | None] = [None] * len(jobs)
    async with Http(token, budget, limit=parallel * 2 + 4) as http:
        caps = Capabilities.from_options(await http.send("OPTIONS", ep.creation, tus=False, count=False))
        up = Uploader(http, state, ep, caps, board, chunk_size=chunk_size,
                      checksum=pick_checksum(checksum, caps), creation_with_upload=creation_with_upload)
        poller = StatusPoller(http, state, ep, parallel)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(jobs)):
            queue.put_nowait(i)

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                job = jobs[i]
                if job.sha256 is None:
                    job.sha256 = state.cached_hash(str(job.path), job.size, job.mtime_ns)
                    if job.sha256 is None:
                        job.sha256 = await asyncio.to_thread(sha256_file, job.path)
                        state.remember_hash(str(job.path), job.size, job.mtime_ns, job.sha256)
                fr = await up.upload(job)
                results[i] = fr
                if fr.state in ("uploaded", "stored"):
                    poller.add(fr)

        board.start()
        poller.start()
        try:
            await asyncio.gather(*(worker() for _ in range(max(1, parallel))))
            report.upload_seconds = time.monotonic() - t0
            await board.stop()
            if progress and poller.outstanding():
                board.message(f"[unggah push] all bytes sent; waiting for the server to store "
                              f"{poller.outstanding()} file(s) (up to {wait:.0f} s)")
            await poller.finish(wait)
            for _ in range(RESEND_ROUNDS):
                # Uploads the server lost after acknowledging them are sent again, then polled again.
                again, poller.resend = poller.resend, []
                if not again:
                    break
                for fr in again:
                    i = next(n for n, r in enumerate(results) if r is fr)
                    redo = await up.upload(jobs[i])
                    redo.notes = fr.notes + redo.notes
                    results[i] = redo
                    if redo.state in ("uploaded", "stored"):
                        poller.add(redo)
                await poller.finish(wait)
            lists = [f for f in results if f is not None and f.state == "stored" and pf.is_list(Path(f.name))]
            if lists and not poller.no_status_endpoint:
                # What a team must not learn only at the close: a stored list that counts for nothing.
                await collect_verdicts(http, lists, deadline=time.monotonic() + min(wait, VERDICT_WAIT))
        finally:
            await board.stop()
            await poller.close()
            await state.close()
        report.receipts = poller.ring.note if poller.ring is not None else ""
    report.files = [r for r in results if r is not None]
    report.bytes_sent = sum(f.bytes_sent for f in report.files)
    report.retries = budget.retries
    report.requests = budget.requests
    report.seconds = time.monotonic() - t0
    return report


class StatusPoller:
    """Polls `<upload URL>/status` of uploaded files until stored or failed, while other
    files are still being sent; verifies and saves receipts."""

    def __init__(self, http: Http, state: StateFile, ep: Endpoints, concurrency: int) -> None:
        self.http, self.state, self.ep = http, state, ep
        self.n = max(2, concurrency)
        self.q: asyncio.Queue[tuple[float, float, FileResult]] = asyncio.Queue()
        self.tasks: list[asyncio.Task] = []
        self.ring: rcpt.KeyRing | None = None
        self._ring_lock = asyncio.Lock()
        self.no_status_endpoint = False
        self.pending: dict[int, FileResult] = {}
        # Files the server lost after acknowledging them (a crash of its buffer): sent again.
        self.resend: list[FileResult] = []

    def add(self, fr: FileResult) -> None:
        entry = self.state.get(upload_key(self.ep.creation, fr.name, fr.size, fr.sha256 or ""))
        if fr.state == "stored" and entry and entry.get("receipt") and Path(entry["receipt"]).exists():
            fr.receipt, fr.receipt_status = entry["receipt"], "saved earlier"
            return
        fr.state = "uploaded"
        self.pending[id(fr)] = fr
        # The first look after a short pause: the ingester needs a moment, and a status read
        # that only says "receiving" costs the gateway as much as one that says "stored".
        self.q.put_nowait((time.monotonic() + 0.3, 0.5, fr))

    def outstanding(self) -> int:
        return len(self.pending)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._run()) for _ in range(self.n)]

    async def finish(self, wait: float) -> None:
        try:
            await asyncio.wait_for(self.q.join(), wait)
        except asyncio.TimeoutError:
            pass

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        # Whatever is still waiting is pending: bytes safe on the server, storage not confirmed yet.
        for fr in self.pending.values():
            if fr.state == "uploaded" and not self.no_status_endpoint:
                fr.state = "pending"
                fr.reason = "all bytes received by the server, not stored yet; run `unggah push` again to check"

    async def keys(self) -> rcpt.KeyRing:
        async with self._ring_lock:
            if self.ring is None:
                self.ring = await rcpt.fetch_keys(self.http, self.ep.base)
            return self.ring

    async def _run(self) -> None:
        while True:
            due, interval, fr = await self.q.get()
            try:
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                done = await self._poll(fr)
                if done:
                    self.pending.pop(id(fr), None)
                else:
                    nxt = min(5.0, interval * 2)
                    self.q.put_nowait((time.monotonic() + interval, nxt, fr))
            finally:
                self.q.task_done()

    async def _poll(self, fr: FileResult) -> bool:
        k = upload_key(self.ep.creation, fr.name, fr.size, fr.sha256 or "")
        if self.no_status_endpoint:
            fr.notes.append("the server has no status endpoint: all bytes acknowledged, storage not confirmed")
            return True
        resp = await self.http.send("GET", fr.url + "/status", count=False)
        if resp.status == 410 and resp.reason == LOST_UPLOAD:
            # Acknowledged, then lost whole with the server's buffer: a new upload, from the start.
            gen = int((self.state.get(k) or {}).get("generation") or 0) + 1
            self.state.put(k, state="uploading", url=None, generation=gen, reason=None)
            fr.notes.append("the server lost this upload in a crash after acknowledging it; sent again")
            self.resend.append(fr)
            return True
        if resp.status == 404:
            if resp.reason == "upload-not-found":
                fr.state = "failed"
                fr.reason = "the server no longer knows this upload; run `unggah push` again to send it anew"
                self.state.put(k, state="failed", url=None, reason=fr.reason)
                return True
            self.no_status_endpoint = True
            fr.notes.append("the server has no status endpoint: all bytes acknowledged, storage not confirmed")
            return True
        if resp.status != 200:
            return False  # 503 while the buffer restarts, network trouble: poll again
        try:
            st = resp.json()
        except orjson.JSONDecodeError:
            return False
        s = st.get("state")
        if st.get("reason") == LOST_BYTES and s == "receiving":
            # The server's buffer came back without bytes it had acknowledged: resume from its offset.
            self.state.put(k, state="uploading", reason=None)
            fr.notes.append(f"the server lost acknowledged bytes in a crash; sent again from offset "
                            f"{st.get('bytes_received')}")
            self.resend.append(fr)
            return True
        if s == "failed":
            fr.state = "failed"
            fr.reason = f"the server could not store the file: {st.get('reason') or 'no reason given'}"
            self.state.put(k, state="failed", reason=fr.reason)
            return True
        if s != "stored":
            return False
        fr.state = "stored"
        if st.get("sha256") and fr.sha256 and st["sha256"].lower() != fr.sha256.lower():
            fr.state = "failed"
            fr.reason = f"stored sha256 {st['sha256']} differs from the file's {fr.sha256}"
            self.state.put(k, state="failed", reason=fr.reason)
            return True
        await self._receipt(fr, st, k)
        self.state.put(k, state="stored", reason=None, receipt=fr.receipt)
        return True

    async def _receipt(self, fr: FileResult, st: dict, k: str) -> None:
        receipt = st.get("receipt")
        ring = await self.keys()
        if not isinstance(receipt, dict):
            fr.receipt_status = rcpt.MISSING if ring.available else rcpt.UNAVAILABLE
            return
        if not ring.available:
            fr.receipt_status = rcpt.INVALID
            fr.receipt_error = f"a receipt came but cannot be verified: {ring.note}"
            return
        err = rcpt.check(receipt, ring, upload_id=st.get("id"), size=fr.size, sha256=fr.sha256 or "")
        if err:
            fr.receipt_status, fr.receipt_error = rcpt.INVALID, err
            return
        try:
            fr.receipt = str(await asyncio.to_thread(rcpt.save, fr.path, receipt))
        except OSError as e:
            fr.receipt_status, fr.receipt_error = rcpt.VERIFIED, f"verified but not saved: {e}"
            return
        fr.receipt_status = rcpt.VERIFIED


# The server's answers when its buffer lost what it had acknowledged (gateway/witness.py).
LOST_UPLOAD, LOST_BYTES = "upload-lost", "buffer-lost-acknowledged-bytes"
# Rounds of sending such uploads again within one push.
RESEND_ROUNDS = 3

# How long push waits, at most, for the server's verdicts on the lists it stored.
VERDICT_WAIT = 60.0


async def collect_verdicts(http: Http, lists: list[FileResult], deadline: float) -> None:
    """Ask the server for each stored list's verdict (GET <upload>/verdicts) until it has one
    or the deadline passes; a list still unjudged then is left with verdict None and a note."""
    waiting, pause = list(lists), 0.3
    while waiting:
        for fr in list(waiting):
            resp = await http.send("GET", fr.url + "/verdicts", tus=False, count=False)
            if resp.status == 404 and resp.reason != "not-validated":
                return  # this server does not judge lists
            if resp.status != 200:
                continue  # not-validated: still being judged; 503, network trouble: ask again
            try:
                v = resp.json()
            except orjson.JSONDecodeError:
                continue
            fr.verdict = str(v.get("status") or "")
            fr.verdict_message = v.get("message") or None
            fr.verdict_problems = [str(x) for x in (v.get("problems") or [])]
            waiting.remove(fr)
        if not waiting or time.monotonic() + pause > deadline:
            break
        await asyncio.sleep(pause)
        pause = min(2.0, pause * 2)
    for fr in waiting:
        fr.notes.append("stored; the server has not judged this list yet: `unggah status` shows its verdict")


async def fetch_progress(server: str, token: str | None = None) -> tuple[int, dict | None, str]:
    """GET /progress for the token's tenant: (HTTP status, JSON or None, problem text)."""
    ep = Endpoints.from_server(server)
    async with Http(token) as http:
        resp = await http.send("GET", ep.base + "/progress", tus=False, count=False)
    if resp.status == 200:
        try:
            return 200, resp.json(), ""
        except orjson.JSONDecodeError:
            return 200, None, "the server's /progress answer is not JSON"
    return resp.status, None, resp.describe()
