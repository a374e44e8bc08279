"""An async tus 1.0 load generator: N concurrent uploads, each POST then PATCH
chunks until the upload is full, then a new upload takes the slot.

Closed loop (default): a slot sends its next chunk as soon as the previous one
is answered, so the rate is whatever the server sustains.
Open loop (`--rate R`): R chunks/s offered in total, each slot on a fixed
timetable of R/N per second. Latency is measured from the *scheduled* send
time, so when the server falls behind the queueing delay shows up in the
figures instead of being hidden by the client slowing down (no coordinated
omission). Scheduled sends never drop: a late slot catches up, and what it
could not send before the end is reported as `backlog`.

Chunk latency is from the first attempt (closed loop) or the scheduled time
(open loop) to the 2xx, so refusals and their Retry-After waits are part of
it: that is what an uploader sees.

Usage: python -m loadtest.tusload --url http://127.0.0.1:8080/files/ -c 32
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import email.utils
import hashlib
import math
import os
import random
import sys
import time
from urllib.parse import urljoin

import aiohttp
import msgspec

try:
    import crc32c as _crc32c
except ImportError:  # only needed for --checksum crc32c
    _crc32c = None

KiB = 1024
MiB = 1024 * KiB
TUS = "1.0.0"
# Statuses that mean "not now": wait (Retry-After if given) and send the same
# request again. They are refusals, not errors.
REFUSAL = {423, 429, 500, 502, 503, 504}
POOL = 8  # distinct random buffers per chunk size: enough that no two neighbours repeat


class LoadConfig(msgspec.Struct, kw_only=True):
    url: str
    concurrency: int = 32
    chunk: int = 256 * KiB
    upload_size: int = 8 * MiB
    duration: float = 10.0
    warmup: float = 2.0
    rate: float | None = None  # chunks/s in total; None = closed loop
    checksum: str = "none"  # none | sha1 | crc32c
    headers: dict[str, str] = {}
    timeout: float = 30.0
    # A body sink (nginx) cannot add Upload-Offset + length: trust our own count
    # instead of the server's Upload-Offset.
    sink: bool = False
    max_uploads: int | None = None  # stop after this many uploads were started and finished
    label: str = ""


class Result(msgspec.Struct, kw_only=True):
    label: str
    mode: str
    concurrency: int
    chunk: int
    seconds: float  # measured window
    chunks: int  # successful PATCHes (or XADD entries) in the window
    bytes: int
    chunks_per_s: float
    mb_per_s: float  # MB = 10^6 bytes
    p50_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int] = {}  # "PATCH 204" -> count
    errors: dict[str, int] = {}  # timeout, connection, offset_mismatch, ...
    refusals: int = 0
    refusal_p50_ms: float = 0.0  # how long a refused request waited for its answer
    refusal_p99_ms: float = 0.0
    # How late the generator's own event loop ran a 5 ms timer: every latency above includes
    # up to this much of the generator's queueing, not the server's.
    loop_lag_p99_ms: float = 0.0
    conflicts: int = 0
    uploads_created: int = 0
    uploads_completed: int = 0
    offered_rate: float | None = None
    backlog: int = 0  # open loop: scheduled chunks never sent before the end

    def row(self) -> str:
        return format_row(self)


# ---------------------------------------------------------------- payloads

class Payloads:
    """Random buffers made once, with their checksums, so a request costs no
    CPU for payload generation or hashing on the (shared) generator cores."""

    def __init__(self, chunk: int, checksum: str) -> None:
        if checksum not in ("none", "sha1", "crc32c"):
            raise ValueError(f"unknown checksum {checksum!r}")
        if checksum == "crc32c" and _crc32c is None:
            raise RuntimeError("--checksum crc32c needs the crc32c package")
        self.chunk = chunk
        self.checksum = checksum
        self.buffers = [os.urandom(chunk) for _ in range(POOL)]
        self._cache: dict[tuple[int, int], tuple[bytes, str | None]] = {}

    def get(self, i: int, length: int) -> tuple[bytes, str | None]:
        """Body and Upload-Checksum value for chunk number i of `length` bytes."""
        key = (i % POOL, length)
        hit = self._cache.get(key)
        if hit is None:
            body = self.buffers[key[0]][:length]
            hit = (body, self._digest(body))
            self._cache[key] = hit
        return hit

    def _digest(self, body: bytes) -> str | None:
        if self.checksum == "sha1":
            return "sha1 " + base64.b64encode(hashlib.sha1(body).digest()).decode()
        if self.checksum == "crc32c":
            return "crc32c " + base64.b64encode(_crc32c.crc32c(body).to_bytes(4, "big")).decode()
        return None


# ---------------------------------------------------------------- recording

class Recorder:
    """Counts only what completes inside [start, end): warmup and the cut-off
    tail are run but not reported."""

    def __init__(self) -> None:
        self.start = math.inf
        self.end = math.inf
        self.latencies: list[float] = []
        self.bytes = 0
        self.statuses: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.refusals = 0
        self.refusal_latencies: list[float] = []  # request sent -> refusal received
        self.loop_lags: list[float] = []
        self.conflicts = 0
        self.created = 0
        self.completed = 0

    def inside(self, t: float) -> bool:
        return self.start <= t < self.end

    def status(self, method: str, code: int, t: float) -> None:
        if self.inside(t):
            key = f"{method} {code}"
            self.statuses[key] = self.statuses.get(key, 0) + 1
            if code in REFUSAL:
                self.refusals += 1
            elif code == 409:
                self.conflicts += 1

    def error(self, kind: str, t: float) -> None:
        if self.inside(t):
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def chunk(self, latency: float, nbytes: int, t: float, count: int = 1) -> None:
        """`count` items of `nbytes` in total that each took `latency` (a pipelined batch)."""
        if self.inside(t):
            if count == 1:
                self.latencies.append(latency)
            else:
                self.latencies.extend([latency] * count)
            self.bytes += nbytes


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 is a latency that happened)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(rec: Recorder, *, label: str, mode: str, concurrency: int, chunk: int,
              seconds: float, offered_rate: float | None = None, backlog: int = 0) -> Result:
    lat = sorted(rec.latencies)
    refused = sorted(rec.refusal_latencies)
    lags = sorted(rec.loop_lags)
    n = len(lat)
    seconds = max(seconds, 1e-9)
    return Result(
        label=label, mode=mode, concurrency=concurrency, chunk=chunk, seconds=round(seconds, 3),
        chunks=n, bytes=rec.bytes,
        chunks_per_s=n / seconds, mb_per_s=rec.bytes / seconds / 1e6,
        p50_ms=percentile(lat, 0.50) * 1e3, p99_ms=percentile(lat, 0.99) * 1e3,
        max_ms=(lat[-1] * 1e3 if lat else 0.0),
        statuses=dict(sorted(rec.statuses.items())), errors=dict(sorted(rec.errors.items())),
        refusals=rec.refusals, conflicts=rec.conflicts,
        refusal_p50_ms=percentile(refused, 0.50) * 1000, refusal_p99_ms=percentile(refused, 0.99) * 1000,
        loop_lag_p99_ms=percentile(lags, 0.99) * 1000,
        uploads_created=rec.created, uploads_completed=rec.completed,
        offered_rate=offered_rate, backlog=backlog,
    )


HEADER = (f"{'target':<14} {'mode':<12} {'conc':>5} {'chunks/s':>9} {'MB/s':>8} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'refused':>7} {'errors':>6} {'uploads':>7}")


def format_row(r: Result) -> str:
    return (f"{r.label[:14]:<14} {r.mode[:12]:<12} {r.concurrency:>5} {r.chunks_per_s:>9.0f} "
            f"{r.mb_per_s:>8.1f} {r.p50_ms:>8.1f} {r.p99_ms:>8.1f} {r.max_ms:>8.1f} "
            f"{r.refusals:>7} {sum(r.errors.values()):>6} {r.uploads_completed:>7}")


# ---------------------------------------------------------------- protocol

def retry_after(headers, default: float) -> float:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    value = headers.get("Retry-After")
    if not value:
        return default
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    return max(0.0, when.timestamp() - time.time())


class Upload:
    __slots__ = ("url", "offset", "n")

    def __init__(self, url: str) -> None:
        self.url = url
        self.offset = 0
        self.n = 0  # chunks sent, picks the payload buffer


class _Stop(Exception):
    """The run is over (end of time or upload budget)."""


LAG_TICK = 0.005


class Generator:
    def __init__(self, cfg: LoadConfig) -> None:
        if cfg.chunk <= 0 or cfg.upload_size <= 0 or cfg.concurrency <= 0:
            raise ValueError("chunk, upload_size and concurrency must be positive")
        self.cfg = cfg
        self.payloads = Payloads(cfg.chunk, cfg.checksum)
        self.rec = Recorder()
        self.base = dict(cfg.headers)
        self.base["Tus-Resumable"] = TUS
        self.started_uploads = 0
        self.deadline = math.inf  # perf_counter time after which no wait is worth it
        self.next_sched: list[float] = []
        self.interval = 0.0

    # -- helpers

    # perf_counter, not loop.time(): uvloop's loop clock is cached at 1 ms resolution,
    # too coarse for sub-10 ms latencies against a fast server.
    _now = staticmethod(time.perf_counter)

    async def _sleep(self, seconds: float) -> None:
        # Never sleep past the end of the run: a Retry-After of 60 s must not hold the run open.
        if self._now() + seconds >= self.deadline:
            raise _Stop
        await asyncio.sleep(seconds)

    async def _backoff(self, attempt: int) -> None:
        # No Retry-After: short jittered exponential backoff so a failing server is not hammered.
        await self._sleep(min(2.0, 0.05 * 2 ** min(attempt, 6)) * (0.5 + random.random()))

    async def _wait_refused(self, headers, attempt: int) -> None:
        """Honour Retry-After on a refusal; without one, back off."""
        if "Retry-After" in headers:
            await self._sleep(retry_after(headers, 0.0))
        else:
            await self._backoff(attempt)

    async def _request(self, http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str],
                       body: bytes | None = None) -> tuple[int, "aiohttp.typedefs.CIMultiDictProxy", float] | None:
        """One request. Returns (status, headers, completion time), or None after
        counting a timeout or connection error."""
        sent = self._now()
        try:
            async with http.request(method, url, headers=headers, data=body) as resp:
                await resp.read()
                t = self._now()
                self.rec.status(method, resp.status, t)
                if resp.status in REFUSAL and self.rec.inside(t):
                    self.rec.refusal_latencies.append(t - sent)
                return resp.status, resp.headers, t
        except asyncio.TimeoutError:
            self.rec.error("timeout", self._now())
        except aiohttp.ClientConnectionError:
            self.rec.error("connection", self._now())
        except aiohttp.ClientError:
            self.rec.error("client", self._now())
        return None

    # -- tus steps

    async def _create(self, http: aiohttp.ClientSession) -> Upload:
        cfg = self.cfg
        if cfg.max_uploads is not None and self.started_uploads >= cfg.max_uploads:
            raise _Stop
        self.started_uploads += 1
        headers = dict(self.base)
        headers["Upload-Length"] = str(cfg.upload_size)
        attempt = 0
        while True:
            got = await self._request(http, "POST", cfg.url, headers)
            attempt += 1
            if got is not None:
                status, h, t = got
                if status == 201 and h.get("Location"):
                    if self.rec.inside(t):
                        self.rec.created += 1
                    return Upload(urljoin(cfg.url, h["Location"]))
                if status in REFUSAL:
                    await self._wait_refused(h, attempt)
                    continue
                self.rec.error("create_failed", t)
            await self._backoff(attempt)

    async def _resume(self, http: aiohttp.ClientSession, up: Upload) -> Upload | None:
        """HEAD for the server's offset; None if the upload is gone."""
        attempt = 0
        while True:
            got = await self._request(http, "HEAD", up.url, dict(self.base))
            attempt += 1
            if got is not None:
                status, h, t = got
                if status in (200, 204):
                    off = h.get("Upload-Offset")
                    if off is None or not off.isdigit():
                        self.rec.error("head_without_offset", t)
                        return None
                    up.offset = int(off)
                    return up
                if status in REFUSAL:
                    await self._wait_refused(h, attempt)
                    continue
                self.rec.error("upload_lost", t)
                return None
            await self._backoff(attempt)

    async def _send_chunk(self, http: aiohttp.ClientSession, up: Upload, t0: float) -> Upload | None:
        """Send the chunk at up.offset until accepted; t0 is when it was due.
        Returns the upload to go on with (None: start a new one)."""
        cfg = self.cfg
        failures = refused = 0
        while True:
            if up.offset >= cfg.upload_size:
                return up  # a resume found the upload already full (the answer to our PATCH was lost)
            length = min(cfg.chunk, cfg.upload_size - up.offset)
            body, digest = self.payloads.get(up.n, length)
            headers = dict(self.base)
            headers["Upload-Offset"] = str(up.offset)
            headers["Content-Type"] = "application/offset+octet-stream"
            if digest:
                headers["Upload-Checksum"] = digest
            got = await self._request(http, "PATCH", up.url, headers, body)
            if got is None:
                # The body may have been partly written: only the server knows the offset now.
                failures += 1
                if failures >= 5:
                    self.rec.error("upload_abandoned", self._now())
                    return None
                await self._backoff(failures)
                if not cfg.sink and await self._resume(http, up) is None:
                    return None
                continue
            status, h, t = got
            if 200 <= status < 300:
                expected = up.offset + length
                off = h.get("Upload-Offset")
                if not cfg.sink:
                    if off is None or not off.isdigit():
                        self.rec.error("no_offset", t)
                    elif int(off) != expected:
                        self.rec.error("offset_mismatch", t)
                        expected = int(off)
                up.offset = expected
                up.n += 1
                self.rec.chunk(t - t0, length, t)
                return up
            if status in REFUSAL:
                refused += 1
                await self._wait_refused(h, refused)
                continue
            failures += 1
            if status == 409:
                # Our offset is wrong (e.g. an earlier PATCH landed partly): ask and resume there.
                if failures >= 3:
                    self.rec.error("upload_abandoned", t)
                    return None
                if await self._resume(http, up) is None:
                    return None
                continue
            if status == 460:
                self.rec.error("checksum_mismatch", t)
            elif status in (404, 410):
                self.rec.error("upload_lost", t)
                return None
            else:
                self.rec.error(f"http_{status}", t)
            if failures >= 3:
                self.rec.error("upload_abandoned", t)
                return None
            await self._backoff(failures)

    async def _sample_loop_lag(self) -> None:
        while True:
            t = self._now()
            await asyncio.sleep(LAG_TICK)
            if self.rec.inside(t):
                self.rec.loop_lags.append(max(0.0, self._now() - t - LAG_TICK))

    async def _slot(self, k: int, http: aiohttp.ClientSession) -> None:
        cfg = self.cfg
        up: Upload | None = None
        try:
            while True:
                if up is None:
                    up = await self._create(http)
                if cfg.rate:
                    due = self.next_sched[k]
                    now = self._now()
                    if due >= self.deadline:
                        return
                    if due > now:
                        await asyncio.sleep(due - now)
                    t0 = due
                else:
                    t0 = self._now()
                    if t0 >= self.deadline:
                        return
                up = await self._send_chunk(http, up, t0)
                if cfg.rate:
                    self.next_sched[k] += self.interval
                if up is not None and up.offset >= cfg.upload_size:
                    if self.rec.inside(self._now()):
                        self.rec.completed += 1
                    up = None
        except _Stop:
            return

    async def run(self) -> Result:
        cfg = self.cfg
        timeout = aiohttp.ClientTimeout(total=cfg.timeout)
        # Each slot is one uploader with its own keep-alive connection, as real clients are.
        # A pool shared by all slots hands the connection just released to the next slot,
        # which then queues behind whatever the server still reads on it (a refused
        # request's body), a wait no real client has.
        sessions = [aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1, ttl_dns_cache=None, enable_cleanup_closed=False),
            timeout=timeout, auto_decompress=False) for _ in range(cfg.concurrency)]
        try:
            t_begin = self._now()
            self.rec.start = t_begin + cfg.warmup
            self.rec.end = self.rec.start + cfg.duration
            self.deadline = self.rec.end
            if cfg.rate:
                # Slot k's chunks are due at t_begin + (k/N + i) * N/R: a fixed, staggered timetable.
                self.interval = cfg.concurrency / cfg.rate
                self.next_sched = [t_begin + k * self.interval / cfg.concurrency
                                   for k in range(cfg.concurrency)]
            tasks = [asyncio.create_task(self._slot(k, http)) for k, http in enumerate(sessions)]
            sampler = asyncio.create_task(self._sample_loop_lag())
            done, pending = await asyncio.wait(tasks, timeout=max(0.0, self.rec.end - self._now()))
            sampler.cancel()
            # Slots that stop early because a Retry-After reaches past the end still
            # count as idle for the whole window; only an upload budget ends a run early.
            t_stop = self.rec.end if cfg.max_uploads is None else min(self._now(), self.rec.end)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()
        finally:
            await asyncio.gather(*(http.close() for http in sessions))
        backlog = 0
        if cfg.rate:
            for due in self.next_sched:
                if due < self.rec.end:
                    backlog += int((self.rec.end - due) / self.interval) + 1
        mode = f"open {cfg.rate:g}/s" if cfg.rate else "closed"
        seconds = max(0.0, t_stop - self.rec.start)
        return summarize(self.rec, label=cfg.label or "tus", mode=mode, concurrency=cfg.concurrency,
                         chunk=cfg.chunk, seconds=seconds, offered_rate=cfg.rate, backlog=backlog)


async def run_load(cfg: LoadConfig) -> Result:
    return await Generator(cfg).run()


def run(cfg: LoadConfig) -> Result:
    """Run in a fresh event loop (uvloop when installed)."""
    try:
        import uvloop
        return uvloop.run(run_load(cfg))
    except ImportError:
        return asyncio.run(run_load(cfg))


# ---------------------------------------------------------------- CLI

def parse_size(text: str) -> int:
    """'256k', '8m', '8MiB', '1000' -> bytes (binary units)."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = {"k": KiB, "m": MiB, "g": 1024 * MiB}.get(t[-1:], 1)
    if t[-1:] in "kmg":
        t = t[:-1]
    return int(float(t) * mult)


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"header must be 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.tusload", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="creation URL, e.g. http://127.0.0.1:8080/files/")
    p.add_argument("-c", "--concurrency", type=int, default=32, help="concurrent uploads")
    p.add_argument("--chunk", type=parse_size, default=256 * KiB, help="PATCH size (default 256k)")
    p.add_argument("--upload-size", type=parse_size, default=8 * MiB, help="bytes per upload (default 8m)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    p.add_argument("--rate", type=float, default=None, help="open loop: chunks/s offered in total")
    p.add_argument("--checksum", choices=("none", "sha1", "crc32c"), default="none")
    p.add_argument("-H", "--header", type=parse_header, action="append", default=[],
                   help="extra request header 'Name: value' (repeatable), e.g. Authorization")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, s")
    p.add_argument("--sink", action="store_true",
                   help="target is a body sink (nginx): do not check the returned Upload-Offset")
    p.add_argument("--max-uploads", type=int, default=None, help="stop after this many uploads")
    p.add_argument("--label", default="", help="name of the target in the output")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def config_from_args(a: argparse.Namespace) -> LoadConfig:
    return LoadConfig(url=a.url, concurrency=a.concurrency, chunk=a.chunk, upload_size=a.upload_size,
                      duration=a.duration, warmup=a.warmup, rate=a.rate, checksum=a.checksum,
                      headers=dict(a.header), timeout=a.timeout, sink=a.sink,
                      max_uploads=a.max_uploads, label=a.label)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run(config_from_args(args))
    if args.json:
        sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    else:
        print(HEADER)
        print(result.row())
        print("statuses:", result.statuses, " errors:", result.errors,
              f" refusals: {result.refusals}  conflicts: {result.conflicts}",
              f" uploads created/completed: {result.uploads_created}/{result.uploads_completed}",
              f" backlog: {result.backlog}" if args.rate else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
