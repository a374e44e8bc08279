"""What every rehearsal scenario shares: parameters, the work of each pair, a tus
operator (Locust FastHttpUser), load shapes, and the journal the runner reads.

The operator speaks tus 1.0 the way a team's client does on deadline night:
POST creation (Upload-Length, Upload-Metadata with `filename` and the file's
`sha256`, an Idempotency-Key), PATCH chunks with Upload-Offset and
`Upload-Checksum: crc32c <b64>`, HEAD to resume after anything goes wrong.
Three kinds of client are modelled side by side, each a `RetryPolicy`. Polite
ones retry until the run ends: patient clients wait what Retry-After says
(jittered backoff without one); impatient ones retry at once and, after a burst
of refusals, pause as an operator would before clicking "upload" again. The
third is tus-js-client with its default options, what most teams ship: it
ignores Retry-After, retries after 0, 1, 3 and 5 s (HEAD first once the upload
exists), starts counting afresh when the offset advances, and then gives the
upload up. A polite client can only lose time to a refusal; this one loses the
upload, which is why the report counts its abandoned uploads.

Parameters come from REHEARSE_* environment variables (the runner,
`python -m loadtest.rehearse`, sets them all; by hand, see `Params`).

Everything a client believed is written to `<out>/journal.json` when Locust
quits: per file the pair, size, sha256, upload URL and the offset the server
acknowledged. The runner checks it against the status API afterwards; nothing
here decides whether data was lost.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import itertools
import json
import math
import os
import random
import socket
import struct
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import crc32c
import gevent
from locust import FastHttpUser, LoadTestShape, events, task

TUS = "1.0.0"
KiB = 1024
SYMPTOM_RETRYABLE = {0, 423, 429, 500, 502, 503, 504}
TUSJS_RETRY_DELAYS = (0.0, 1.0, 3.0, 5.0)  # tus-js-client's default retryDelays, in seconds


from loadtest.scenarios.params import Params, pair_name  # noqa: E402 - no gevent there: the runner imports it

# ---------------------------------------------------------------- the work

@dataclass
class FileSpec:
    pair: int
    index: int
    kind: str  # "list" (supporter CSV) or "scan"
    size: int
    rows: int = 0

    @property
    def name(self) -> str:
        if self.kind == "list":
            return f"{pair_name(self.pair)}-daftar-dukungan-{self.index:03d}.csv"
        return f"{pair_name(self.pair)}-scan-{self.index:05d}.jpg"


COLUMNS = ("NO,NIK,NAMA,JENIS_KELAMIN,TEMPAT_LAHIR,TANGGAL_LAHIR,STATUS_PERKAWINAN,"
           "PEKERJAAN,ALAMAT,RT,RW,KODE_DESA,NO_HP\n")
NAMES = ("SITI AMINAH", "BUDI SANTOSO", "AGUS SALIM", "DEWI LESTARI", "RUDI HARTONO", "NUR HASANAH",
         "YULIANTI", "AHMAD FAUZI", "RINA WATI", "JOKO SUSILO")
PLACES = ("PANGKALPINANG", "JAKARTA", "MAKASSAR", "SUNGAILIAT", "MUNTOK", "TOBOALI")


def supporter_csv(seed: int, pair: int, index: int, rows: int, row_bytes: int) -> bytes:
    """A supporter list (B.1.1-KWK layout) of `rows` rows of about `row_bytes` bytes each."""
    rng = random.Random(f"{seed}/{pair}/list/{index}")
    out = [COLUMNS]
    for n in range(rows):
        day = rng.randint(1, 28)
        female = rng.random() < 0.5
        nik = f"1971{rng.randint(1, 9):02d}{day + (40 if female else 0):02d}{rng.randint(1, 12):02d}" \
              f"{rng.randint(50, 99):02d}{rng.randint(1, 9999):04d}"
        row = (f"{n + 1},{nik},{rng.choice(NAMES)},{'P' if female else 'L'},{rng.choice(PLACES)},"
               f"{day:02d}-{rng.randint(1, 12):02d}-19{rng.randint(50, 99)},{rng.choice('BSP')},WIRASWASTA,"
               f"JL. MERDEKA NO. {rng.randint(1, 300)},{rng.randint(1, 20):03d},{rng.randint(1, 9):03d},"
               f"19.71.0{rng.randint(1, 7)}.100{rng.randint(1, 9)},08{rng.randint(10**9, 10**10 - 1)}")
        pad = row_bytes - len(row) - 1
        if pad > 0:  # longer addresses bring the row to its realistic size
            row = row.replace("JL. MERDEKA", "JL. MERDEKA" + " GG. MAWAR" * (pad // 10) + " " * (pad % 10), 1)
        out.append(row + "\n")
    return "".join(out).encode()


def scan_bytes(seed: int, pair: int, index: int, size: int) -> bytes:
    """A scan: JPEG markers around incompressible bytes, `size` bytes."""
    rng = random.Random(f"{seed}/{pair}/scan/{index}")
    body = rng.randbytes(max(0, size - 4))
    return (b"\xff\xd8" + body + b"\xff\xd9")[:size]


def file_bytes(p: Params, f: FileSpec) -> bytes:
    if f.kind == "list":
        return supporter_csv(p.seed, f.pair, f.index, f.rows, p.row_bytes)
    return scan_bytes(p.seed, f.pair, f.index, f.size)


def plan_pair(p: Params, pair: int) -> list[FileSpec]:
    """A pair's files in the order its operators send them: each list followed by its share of scans."""
    lists = []
    left, i = p.rows, 0
    while left > 0:
        n = min(p.rows_per_list, left)
        lists.append(FileSpec(pair, i, "list", len(COLUMNS) + n * p.row_bytes, rows=n))
        left -= n
        i += 1
    scans = [FileSpec(pair, j, "scan", p.scan_bytes) for j in range(p.scans)]
    if not lists:
        return scans
    out: list[FileSpec] = []
    per = math.ceil(len(scans) / len(lists)) if scans else 0
    for k, lst in enumerate(lists):
        out.append(lst)
        out.extend(scans[k * per:(k + 1) * per])
    return out


class Plan:
    """Each pair's queue of files, shared by its operators."""

    def __init__(self, p: Params) -> None:
        self.queues = {i: collections.deque(plan_pair(p, i)) for i in range(p.pairs)}
        self.planned = {i: (len(q), sum(f.size for f in q)) for i, q in self.queues.items()}

    def take(self, pair: int) -> FileSpec | None:
        q = self.queues[pair]
        return q.popleft() if q else None

    def remaining(self, pair: int) -> tuple[int, int]:
        q = self.queues[pair]
        return len(q), sum(f.size for f in q)


# ---------------------------------------------------------------- the journal

@dataclass
class FileRecord:
    pair: str
    kind: str
    name: str
    size: int
    sha256: str
    operator: int
    client: str  # "patient", "impatient" or "tus-js-client" (the operator's RetryPolicy)
    checksum: bool
    first_attempt: float = 0.0  # epoch
    created_at: float = 0.0
    completed_at: float = 0.0
    url: str = ""
    acked: int = 0  # highest offset the server acknowledged (PATCH 204 or HEAD)
    outcome: str = "in-progress"  # complete | refused | expired | upload-lost | error | abandoned | in-progress
    abandoned: str = ""  # why the client gave the upload up, e.g. "upload abandoned after 4 retries: 503 ..."
    retries: int = 0  # retries in a row since the offset last advanced (the count tus-js-client gives up on)
    acked_at_retry: int = 0  # the acknowledged offset at the last retry: beyond it is progress
    refused_reason: str = ""  # the last refusal, when creation never succeeded
    attempts: int = 0  # creation attempts
    refusals: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)
    cuts: int = 0
    resumes: int = 0
    regressed_bytes: int = 0  # acknowledged bytes a later HEAD no longer reported: a durability failure
    appends_after_close: int = 0
    replayed: int = 0  # creations answered from the Idempotency-Key record


class Journal:
    def __init__(self, p: Params) -> None:
        self.p = p
        self.files: list[FileRecord] = []
        self.t_first = 0.0
        self.timeline: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        self.counts: collections.Counter = collections.Counter()
        self.latency: dict[str, list[float]] = collections.defaultdict(list)
        self.probes: list[dict] = []
        self.users_max = 0
        self.surge_at = 0.0

    def second(self) -> int:
        return int(time.time() - self.p.start_at)

    def tick(self, what: str, n: int = 1) -> None:
        self.timeline[self.second()][what] += n

    def count(self, what: str) -> None:
        self.counts[what] += 1
        self.tick(what)

    def dump(self, plan: "Plan") -> Path:
        out = Path(self.p.out)
        out.mkdir(parents=True, exist_ok=True)
        pairs = []
        for i in range(self.p.pairs):
            planned_files, planned_bytes = plan.planned[i]
            rest_files, rest_bytes = plan.remaining(i)
            pairs.append({"pair": pair_name(i), "planned_files": planned_files, "planned_bytes": planned_bytes,
                          "not_started_files": rest_files, "not_started_bytes": rest_bytes})
        doc = {
            "params": {k: v for k, v in asdict(self.p).items() if k != "tokens"},
            "t_first_request": self.t_first, "surge_at": self.surge_at, "users_max": self.users_max,
            "pairs": pairs,
            "files": [asdict(f) for f in self.files],
            "timeline": {str(k): dict(v) for k, v in sorted(self.timeline.items())},
            "counts": dict(self.counts),
            "latency_ms": {k: v for k, v in self.latency.items()},
            "probes": self.probes,
        }
        path = out / "journal.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(path)
        return path


P = Params.from_env()
PLAN = Plan(P)
JOURNAL = Journal(P)
_user_ids = itertools.count()


def setup(**defaults: object) -> Params:
    """A scenario's own defaults, for every knob not set in the environment; rebuilds the plan."""
    global PLAN, JOURNAL
    env = {"REHEARSE_" + k.upper(): str(v) for k, v in defaults.items()}
    env.update({k: v for k, v in os.environ.items() if k.startswith("REHEARSE_")})
    fresh = Params.from_env(env)
    for f in fields(Params):
        setattr(P, f.name, getattr(fresh, f.name))
    PLAN = Plan(P)
    JOURNAL = Journal(P)
    return P


@events.test_start.add_listener
def _started(environment, **kwargs):  # noqa: ARG001
    out = Path(P.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "started.json").write_text(json.dumps({"t": time.time(), "pid": os.getpid()}))


@events.quitting.add_listener
def _quitting(environment, **kwargs):  # noqa: ARG001
    JOURNAL.dump(PLAN)


# ---------------------------------------------------------------- answers

class Answer:
    __slots__ = ("status", "reason", "headers", "ms", "error")

    def __init__(self, status: int, reason: str, headers, ms: float, error: str = "") -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.ms = ms
        self.error = error  # for status 0: timeout | connection-reset | connection-refused | connection

    def header(self, name: str) -> str | None:
        if self.headers is None:
            return None
        try:
            return self.headers.get(name)
        except Exception:  # noqa: BLE001
            return None

    @property
    def retry_after(self) -> float | None:
        v = self.header("Retry-After")
        try:
            return float(v) if v is not None else None
        except ValueError:
            return None

    @property
    def described(self) -> str:
        """Status and reason as an operator would quote them: "503 buffer-full", "connection-reset"."""
        if self.status == 0:
            return self.error or "connection"
        return f"{self.status} {self.reason}".strip()

    @property
    def symptom(self) -> str:
        """The answer in the taxonomy of the report."""
        if self.status == 0:
            return self.error or "connection"
        if self.status in (429, 503) and self.reason:
            return "refused:" + self.reason
        if self.status == 403 and self.reason == "window-closed":
            return "refused:window-closed"
        if self.status >= 500:
            return f"5xx:{self.status}" + (f" {self.reason}" if self.reason else "")
        if self.status == 409:
            return "conflict:" + (self.reason or "409")
        if self.status == 410:
            return "expired"
        return f"http:{self.status}" + (f" {self.reason}" if self.reason else "")


def _error_kind(exc: BaseException | None) -> str:
    if exc is None:
        return "connection"
    text = f"{type(exc).__name__} {exc}".lower()
    if "timeout" in text or "timed out" in text:
        return "timeout"
    if isinstance(exc, ConnectionRefusedError) or "refused" in text:
        return "connection-refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)) or "reset" in text or "broken pipe" in text:
        return "connection-reset"
    return "connection"


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


# ---------------------------------------------------------------- retry policies

@dataclass(frozen=True)
class RetryPolicy:
    """How a client waits between tries of an upload and when it stops trying.

    One type, so that the create, resume and append loops are written once and the
    kind of client is data: the polite clients retry until the run ends (a refusal
    costs them time only), tus-js-client's defaults give an upload up after its
    retries (a refusal can cost the upload, and the report must see that)."""

    name: str  # the client kind, as the journal and the report name it
    delays: tuple[float, ...] | None = None  # None: retry forever; else the wait before each retry, then give up
    retry_after: bool = True  # wait what Retry-After says; False: ignore it
    burst: int = 0  # ignoring Retry-After and retrying forever: pause after this many retries in a row ...
    pause: float = 0.0  # ... this long, like an operator clicking "upload" again

    @classmethod
    def polite(cls, impatient: bool = False) -> "RetryPolicy":
        if impatient:
            return cls("impatient", retry_after=False, burst=max(1, P.impatient_burst), pause=P.impatient_pause)
        return cls("patient")

    @classmethod
    def tus_js_client(cls) -> "RetryPolicy":
        return cls("tus-js-client", delays=TUSJS_RETRY_DELAYS, retry_after=False)

    @property
    def gives_up(self) -> bool:
        return self.delays is not None

    def retryable(self, status: int) -> bool:
        if self.gives_up:  # tus-js-client's shouldRetry: network errors and 5xx, no 4xx but 409 and 423
            return not 400 <= status < 500 or status in (409, 423)
        return status in SYMPTOM_RETRYABLE or status == 409

    def wait(self, ans: Answer, retry: int, rng: random.Random) -> float | None:
        """Seconds to wait before retry number `retry` (1: the first) after `ans`; None: stop trying."""
        if not self.retryable(ans.status):
            return None
        if self.delays is not None:
            return self.delays[retry - 1] if retry <= len(self.delays) else None
        if not self.retry_after:
            return self.pause if retry % self.burst == 0 else 0.0
        ra = ans.retry_after
        if ra is not None:
            return ra * (1 + 0.1 * rng.random())
        return min(8.0, 0.25 * 2 ** min(retry, 5)) * (0.5 + rng.random())


# ---------------------------------------------------------------- the operator

class TusOperator(FastHttpUser):
    """One operator of one pair: takes the pair's next file, uploads it, repeats."""

    abstract = True
    network_timeout = P.timeout
    connection_timeout = P.timeout
    concurrency = 1
    max_retries = 0
    host = None

    def on_start(self) -> None:
        self.idx = next(_user_ids)
        self.pair = self.idx % P.pairs
        self.rng = random.Random(f"{P.seed}/op/{self.idx}")
        # Irrational spacing (golden ratio, sqrt 2): the shares hold for any number of users and are
        # stable across runs. tus-js-client sends no Upload-Checksum by default.
        tusjs = ((self.idx * 0.4142135624 + 0.6) % 1.0) < P.tusjs_share
        impatient = ((self.idx * 0.6180339887) % 1.0) < P.impatient_share
        self.policy = RetryPolicy.tus_js_client() if tusjs else RetryPolicy.polite(impatient)
        self.checksum = not tusjs and ((self.idx * 0.7548776662 + 0.5) % 1.0) >= P.no_checksum_share
        tokens = P.token_list
        self.auth = {"Authorization": "Bearer " + tokens[self.pair % len(tokens)]} if tokens else {}
        self.probed = False
        JOURNAL.users_max = max(JOURNAL.users_max, self.idx + 1)
        if time.time() < P.start_at:  # Locust came up before the planned start: wait for it
            gevent.sleep(P.start_at - time.time())

    def wait_time(self) -> float:
        surging = P.surge != "flat" and JOURNAL.surge_at and time.time() >= JOURNAL.surge_at
        base = P.think * (0.1 if surging else 1.0)
        return base * (0.5 + self.rng.random())

    @task
    def next_file(self) -> None:
        if time.time() >= P.close_at:
            if P.probe_after_close and not self.probed:
                self.probed = True
                self.probe_after_close()
            gevent.sleep(0.5)  # nothing new after close; the run ends soon
            return
        spec = PLAN.take(self.pair)
        if spec is None:
            gevent.sleep(0.5)  # this pair has sent everything
            return
        self.upload(spec)

    # -- requests

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"Tus-Resumable": TUS, **self.auth}
        if extra:
            h.update(extra)
        return h

    def request(self, method: str, url: str, name: str, headers: dict[str, str], data: bytes | None = None,
                ok: tuple[int, ...] = (200, 201, 204)) -> Answer:
        if not JOURNAL.t_first:
            JOURNAL.t_first = time.time()
        t = time.perf_counter()
        with self.client.request(method, url, name=name, data=data, headers=headers, catch_response=True) as resp:
            ms = (time.perf_counter() - t) * 1000
            status = int(resp.status_code or 0)
            hdrs = resp.headers if status else None
            reason = ""
            if hdrs is not None:
                try:
                    reason = hdrs.get("Unggah-Reason") or ""
                except Exception:  # noqa: BLE001
                    reason = ""
            ans = Answer(status, reason, hdrs, ms, "" if status else _error_kind(getattr(resp, "error", None)))
            if status in ok:
                resp.success()
                JOURNAL.latency[name].append(ms)
            else:
                resp.failure(ans.symptom)
        if status not in ok:
            JOURNAL.count(ans.symptom)
        return ans

    def retry(self, rec: FileRecord, ans: Answer) -> bool:
        """Wait before trying again after `ans`, as this client's policy says. False when the client
        stops trying this upload; its outcome is then set: `abandoned` (with the symptom) for a client
        that gives up, as tus-js-client's onError, or `error` for a polite one answered what it never
        retries."""
        if rec.acked > rec.acked_at_retry:  # the offset advanced since the last retry: count afresh
            rec.retries = 0
        wait = self.policy.wait(ans, rec.retries + 1, self.rng)
        if wait is None:
            if self.policy.gives_up:
                rec.outcome = "abandoned"
                rec.abandoned = f"upload abandoned after {rec.retries} retries: {ans.described}"
                JOURNAL.count("abandoned")
            else:
                rec.outcome = "error"
            return False
        rec.retries += 1
        rec.acked_at_retry = rec.acked
        if self.policy.burst and rec.retries % self.policy.burst == 0:
            JOURNAL.count("gave-up-and-retried")
        gevent.sleep(wait)
        return True

    # -- one file

    def upload(self, spec: FileSpec) -> None:
        data = file_bytes(P, spec)
        rec = FileRecord(pair=pair_name(spec.pair), kind=spec.kind, name=spec.name, size=len(data),
                         sha256=hashlib.sha256(data).hexdigest(), operator=self.idx,
                         client=self.policy.name, checksum=self.checksum)
        JOURNAL.files.append(rec)
        rec.first_attempt = time.time()
        url = self.create(rec)
        if url is None:
            return
        self.send(rec, data)

    def create(self, rec: FileRecord, name: str = "POST create") -> str | None:
        headers = self._headers({
            "Upload-Length": str(rec.size),
            "Upload-Metadata": f"filename {_b64(rec.name)},sha256 {_b64(rec.sha256)}",
            "Idempotency-Key": f"rehearsal-{P.seed}-{int(P.start_at)}-{rec.name}",
        })
        while True:
            rec.attempts += 1
            ans = self.request("POST", "/files/", name, headers, ok=(201,))
            if ans.status == 201:
                loc = ans.header("Location") or ""
                rec.url = urljoin(self.host.rstrip("/") + "/files/", loc)
                rec.created_at = time.time()
                if (ans.header("Idempotent-Replayed") or "") == "true":
                    rec.replayed += 1
                JOURNAL.tick("created")
                return rec.url
            sym = ans.symptom
            rec.refusals[sym] = rec.refusals.get(sym, 0) + 1
            if sym == "refused:window-closed":
                rec.outcome, rec.refused_reason = "refused", "window-closed"
                return None
            # Refused or failed: the file stays refused until a retry gets through, the server's
            # window closes (window-closed above), the run ends ("not created") or the client gives up.
            rec.refused_reason = sym.removeprefix("refused:")
            if not self.retry(rec, ans):
                return None

    def resume(self, rec: FileRecord) -> int | None:
        """HEAD until the server says where the upload stands; None if it is gone or the client gave up."""
        while True:
            ans = self.request("HEAD", rec.url, "HEAD resume", self._headers(), ok=(200, 204))
            if ans.status in (200, 204):
                rec.resumes += 1
                off = int(ans.header("Upload-Offset") or 0)
                if off < rec.acked:
                    rec.regressed_bytes += rec.acked - off
                    JOURNAL.count("offset-regressed")
                elif off > rec.acked:  # part of a cut or unanswered PATCH landed
                    JOURNAL.tick("bytes", off - rec.acked)
                    rec.acked = off
                return off
            if ans.status in (404, 410):
                rec.outcome = "expired" if ans.status == 410 else "upload-lost"
                return None
            if not self.retry(rec, ans):
                return None

    def send(self, rec: FileRecord, data: bytes) -> None:
        size = len(data)
        offset = 0
        while offset < size:
            body = data[offset:offset + P.chunk]
            headers = self._headers({"Upload-Offset": str(offset),
                                     "Content-Type": "application/offset+octet-stream"})
            if self.checksum:
                headers["Upload-Checksum"] = "crc32c " + _b64(struct.pack(">I", crc32c.crc32c(body)))
            if P.cut_rate and len(body) > 1 and self.rng.random() < P.cut_rate:
                self.cut_patch(rec.url, headers, body)
                rec.cuts += 1
                # A polite client resumes at once; tus-js-client sees a network error and retries.
                if self.policy.gives_up and not self.retry(rec, Answer(0, "", None, 0.0, "connection-reset")):
                    return
                off = self.resume(rec)
                if off is None:
                    return
                offset = off
                continue
            ans = self.request("PATCH", rec.url, "PATCH chunk", headers, data=body, ok=(204,))
            if ans.status == 204:
                new = int(ans.header("Upload-Offset") or offset + len(body))
                JOURNAL.tick("bytes", new - offset)
                rec.acked = max(rec.acked, new)
                if time.time() >= P.close_at:
                    rec.appends_after_close += 1
                    JOURNAL.count("append-after-close")
                offset = new
                continue
            sym = ans.symptom
            rec.errors[sym] = rec.errors.get(sym, 0) + 1
            if ans.status in (404, 410):
                rec.outcome = "expired" if ans.status == 410 else "upload-lost"
                return
            if not self.policy.gives_up and ans.status in (409, 403):
                # offset-mismatch, or upload-complete: ask where we are
                off = self.resume(rec)
                if off is None:
                    return
                offset = off
                continue
            if not self.policy.gives_up and ans.status == 460:  # damaged on the way: send it again
                continue
            if not self.retry(rec, ans):
                return
            # Part of the body may have landed after a network error, and tus-js-client asks
            # with HEAD before every retried PATCH: only the server knows the offset.
            if ans.status == 0 or self.policy.gives_up:
                off = self.resume(rec)
                if off is None:
                    return
                offset = off
        rec.outcome = "complete"
        rec.completed_at = time.time()
        JOURNAL.tick("completed")
        JOURNAL.latency["file seconds"].append(rec.completed_at - rec.first_attempt)

    # -- faults the client makes itself

    def cut_patch(self, url: str, headers: dict[str, str], body: bytes) -> None:
        """Send the headers and part of the body on a raw socket, maybe stall, then drop the connection
        (FIN or RST), as a phone losing its signal mid-upload would."""
        u = urlsplit(url)
        keep = self.rng.randint(1, len(body) - 1)
        head = [f"PATCH {u.path} HTTP/1.1", f"Host: {u.netloc}", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        raw = ("\r\n".join(head) + "\r\n\r\n").encode() + body[:keep]
        t = time.perf_counter()
        err = None
        s = None
        try:
            s = socket.create_connection((u.hostname, u.port or 80), timeout=P.timeout)
            s.sendall(raw)
            if P.stall:
                gevent.sleep(self.rng.random() * P.stall)
            if self.rng.random() < 0.5:  # RST instead of FIN
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError as e:
            err = e
        finally:
            if s is not None:
                s.close()
        self.environment.events.request.fire(
            request_type="PATCH", name="PATCH cut mid-body (injected)",
            response_time=(time.perf_counter() - t) * 1000, response_length=0, exception=err, context={})
        JOURNAL.count("cut:injected")

    def probe_after_close(self) -> None:
        """One creation after close: the server must refuse it (403 window-closed)."""
        rec = FileRecord(pair=pair_name(self.pair), kind="probe", name=f"{pair_name(self.pair)}-late-{self.idx}.csv",
                         size=1024, sha256="", operator=self.idx, client="patient", checksum=False)
        headers = self._headers({"Upload-Length": "1024", "Upload-Metadata": f"filename {_b64(rec.name)}"})
        ans = self.request("POST", "/files/", "POST create after close (probe)", headers, ok=(403,))
        probe = {"t": time.time(), "status": ans.status, "reason": ans.reason, "pair": rec.pair}
        JOURNAL.probes.append(probe)
        if ans.status == 201 and ans.header("Location"):  # accepted after close: do not leave it behind
            url = urljoin(self.host.rstrip("/") + "/files/", ans.header("Location"))
            self.request("DELETE", url, "DELETE probe", self._headers(), ok=(204,))


# ---------------------------------------------------------------- load shapes

class RehearsalShape(LoadTestShape):
    """Users over wall-clock time: few before the surge, all of them by close, then the tail
    in which uploads started before close may finish; None (stop) at `end_at`."""

    abstract = True
    use_common_options = False

    def tick(self):
        now = time.time()
        if now >= P.end_at:
            return None
        n_max = P.users
        rate = P.spawn_rate or float(n_max)
        window = max(1e-3, P.close_at - P.start_at)
        surge_at = P.close_at - P.surge_share * window
        JOURNAL.surge_at = surge_at
        base = max(1, round(P.base_share * n_max))
        if P.surge == "flat" or now >= P.close_at:
            n = n_max
        elif now < surge_at:
            n = base
        elif P.surge == "step":
            n = n_max
        else:  # ramp
            n = base + (n_max - base) * (now - surge_at) / max(1e-3, P.close_at - surge_at)
        return max(1, min(n_max, math.ceil(n))), rate
