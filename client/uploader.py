"""One file over tus 1.0: create (idempotently), resume from HEAD, append chunks
with per-chunk checksums, retry what the server asks us to retry, and never send
again a byte the server acknowledged."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import mimetypes
import os
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from client import retry
from client.progress import ProgressBoard
from client.state import StateFile, upload_key
from client.transport import Endpoints, Http, Resp

MiB = 1 << 20
OFFSET_STREAM = "application/offset+octet-stream"
MAX_GENERATIONS = 3  # new uploads for one file when the server lost the previous one


class FileResult(msgspec.Struct, kw_only=True):
    path: str
    name: str
    size: int
    sha256: str | None = None
    url: str | None = None
    # stored | uploaded (all bytes acknowledged, storage not confirmed) | pending | failed
    state: str = "pending"
    reason: str | None = None
    resumed_from: int = 0  # bytes already on the server when this run started
    bytes_sent: int = 0  # bytes this run sent in request bodies (retries included)
    retries: int = 0
    receipt: str | None = None  # path of the saved receipt
    receipt_status: str | None = None  # verified | invalid | unavailable | missing
    receipt_error: str | None = None
    # Supporter lists: the server's verdict on the file (accepted | rejected | skipped | error;
    # None: not judged yet), its message and the problems it names (cells, columns).
    verdict: str | None = None
    verdict_message: str | None = None
    verdict_problems: list[str] = []
    notes: list[str] = []


@dataclass
class Capabilities:
    extensions: frozenset[str] = frozenset()
    checksums: frozenset[str] = frozenset()
    max_size: int | None = None
    checksum_max: int | None = None

    @classmethod
    def from_options(cls, resp: Resp) -> "Capabilities":
        if resp.status not in (200, 204):
            return cls()
        h = resp.headers
        ext = frozenset(x.strip() for x in h.get("Tus-Extension", "").split(",") if x.strip())
        algos = frozenset(x.strip().lower() for x in h.get("Tus-Checksum-Algorithm", "").split(",") if x.strip())
        def num(name):
            v = h.get(name, "").strip()
            return int(v) if v.isdigit() else None
        return cls(ext, algos, num("Tus-Max-Size"), num("Upload-Checksum-Max-Size"))


def pick_checksum(requested: str, caps: Capabilities) -> str | None:
    """auto: crc32c (cheap) if offered, else sha256, else sha1, else none."""
    if requested == "none":
        return None
    if requested != "auto":
        return requested
    for algo in ("crc32c", "sha256", "sha1"):
        if algo in caps.checksums:
            return algo
    return None


def chunk_checksum(algo: str, data: bytes) -> str:
    if algo == "crc32c":
        import crc32c
        digest = crc32c.crc32c(data).to_bytes(4, "big")
    else:
        digest = hashlib.new(algo, data).digest()
    return f"{algo} {base64.b64encode(digest).decode()}"


def encode_metadata(meta: dict[str, str]) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in meta.items())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(MiB)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def read_at(path: Path, offset: int, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


@dataclass
class FileJob:
    path: Path
    size: int
    mtime_ns: int
    sha256: str | None = None
    is_list: bool = False

    @property
    def name(self) -> str:
        return self.path.name


class GiveUp(Exception):
    """This file cannot go on in this run (reason in the message)."""


@dataclass
class Uploader:
    http: Http
    state: StateFile
    ep: Endpoints
    caps: Capabilities
    board: ProgressBoard
    chunk_size: int = 4 * MiB
    checksum: str | None = "crc32c"
    creation_with_upload: bool = True
    extra_metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.checksum and self.caps.checksum_max:
            self.chunk_size = min(self.chunk_size, self.caps.checksum_max)
        self.use_cwu = self.creation_with_upload and "creation-with-upload" in self.caps.extensions

    # -- helpers

    def key(self, job: FileJob) -> str:
        assert job.sha256
        return upload_key(self.ep.creation, job.name, job.size, job.sha256)

    async def _wait(self, fr: FileResult, resp: Resp, attempt: int) -> None:
        """Spend one retry and wait as told; GiveUp when the budget is spent."""
        b = self.http.budget
        if not b.try_spend():
            raise GiveUp(f"gave up after the retry budget was spent ({b.describe()}); last answer: "
                         f"{resp.describe()}. Run the same command again to resume from the acknowledged offset.")
        fr.retries += 1
        await asyncio.sleep(retry.delay(attempt, resp.headers.get("Retry-After")))

    def _chunk(self, job: FileJob, offset: int) -> tuple[bytes, dict[str, str]]:
        data = read_at(job.path, offset, min(self.chunk_size, job.size - offset))
        h = {"Content-Type": OFFSET_STREAM}
        if self.checksum:
            h["Upload-Checksum"] = chunk_checksum(self.checksum, data)
        return data, h

    def _fatal(self, resp: Resp, what: str) -> GiveUp:
        hints = {401: "the token was refused: check --token / UNGGAH_TOKEN",
                 403: "the server refuses this upload",
                 413: "the file is larger than the server accepts",
                 412: "the server does not speak tus 1.0.0"}
        hint = hints.get(resp.status, "")
        return GiveUp(f"{what}: {resp.describe()}" + (f" ({hint})" if hint else ""))

    # -- creation

    async def _create(self, job: FileJob, fr: FileResult, gen: int) -> tuple[str | None, int | None, int]:
        """(url, offset or None for 'ask HEAD', generation). Retries inside."""
        k = self.key(job)
        meta = {"filename": job.name, "sha256": job.sha256 or ""}
        ctype = mimetypes.guess_type(job.name)[0]
        if ctype:
            meta["filetype"] = ctype
        meta.update(self.extra_metadata)
        attempt = 0
        while True:
            idem = hashlib.sha256(f"unggah-push|{k}|{gen}".encode()).hexdigest()
            h = {"Upload-Length": str(job.size), "Upload-Metadata": encode_metadata(meta), "Idempotency-Key": idem}
            body = None
            if self.use_cwu and job.size > 0:
                body, ch = self._chunk(job, 0)
                h.update(ch)
            resp = await self.http.send("POST", self.ep.creation, h, body)
            if body:
                fr.bytes_sent += len(body)
            loc = resp.headers.get("Location") if resp.status else None
            if resp.status == 201 and loc:
                url = self.ep.resolve(loc)
                off = resp.headers.get("Upload-Offset")
                offset = int(off) if off and off.isdigit() else (0 if body is None else None)
                self.state.put(k, url=url, offset=offset or 0, generation=gen, state="uploading")
                return url, offset, gen
            if loc and resp.status >= 400:
                # The upload exists, its first chunk was refused (e.g. 460): resume it from HEAD.
                url = self.ep.resolve(loc)
                self.state.put(k, url=url, offset=0, generation=gen, state="uploading")
                if resp.status == 460:
                    fr.notes.append("first chunk arrived corrupted (460); sent again")
                attempt += 1
                await self._wait(fr, resp, attempt)
                return url, None, gen
            attempt += 1
            if resp.status == 0 or resp.status in retry.RETRYABLE or (
                    resp.status == 409 and resp.reason in ("idempotency-key-in-flight", "")):
                await self._wait(fr, resp, attempt)
                continue
            if resp.status in (410, 422) and gen < MAX_GENERATIONS:
                # Our key's upload was terminated (410) or the key meant another request (422): new key.
                gen += 1
                fr.notes.append(f"creation answered {resp.describe()}; made a new upload")
                continue
            raise self._fatal(resp, "the server refused to create the upload")

    # -- one file

    async def upload(self, job: FileJob) -> FileResult:
        fr = FileResult(path=str(job.path), name=job.name, size=job.size, sha256=job.sha256)
        k = self.key(job)
        entry = self.state.get(k) or self.state.put(
            k, server=self.ep.creation, name=job.name, path=str(job.path), size=job.size, sha256=job.sha256,
            generation=0, url=None, offset=0, state="uploading", reason=None, receipt=None)
        entry["path"] = str(job.path)
        url: str | None = entry.get("url")
        gen = int(entry.get("generation") or 0)
        fr.url = url
        if entry.get("state") in ("uploaded", "stored") and url:
            fr.state = entry["state"]
            fr.resumed_from = job.size
            self.board.already(job.size)
            return fr
        offset: int | None = None
        attempt = 0
        began = False
        try:
            while True:
                if url is None:
                    url, offset, gen = await self._create(job, fr, gen)
                    fr.url = url
                    if offset is not None and not began:
                        # creation-with-upload: the first chunk went with the POST.
                        self.board.begin(k, job.name, job.size, 0)
                        began = True
                        self.board.advance(k, offset)
                if offset is None:
                    resp = await self.http.send("HEAD", url)
                    if resp.status in (200, 204) and (resp.headers.get("Upload-Offset") or "").isdigit():
                        offset = int(resp.headers["Upload-Offset"])
                        length = resp.headers.get("Upload-Length")
                        if length is not None and length.isdigit() and int(length) != job.size:
                            url, offset, gen = None, None, gen + 1
                            fr.notes.append("the recorded upload has another length; made a new upload")
                            continue
                        if not began:
                            fr.resumed_from = offset
                            self.board.begin(k, job.name, job.size, offset)
                            began = True
                        self.board.advance(k, offset)
                        self.state.put(k, offset=offset)
                        attempt = 0
                    elif resp.status in (404, 410) and gen < MAX_GENERATIONS:
                        fr.notes.append(f"the server no longer has {url} ({resp.describe()}); made a new upload")
                        url, offset, gen = None, None, gen + 1
                        self.state.put(k, url=None, offset=0, generation=gen)
                        continue
                    elif resp.status == 0 or resp.status in retry.RETRYABLE:
                        attempt += 1
                        await self._wait(fr, resp, attempt)
                        continue
                    else:
                        raise self._fatal(resp, "could not learn the upload's offset")
                if offset >= job.size:
                    break
                data, h = self._chunk(job, offset)
                h["Upload-Offset"] = str(offset)
                resp = await self.http.send("PATCH", url, h, data)
                fr.bytes_sent += len(data)
                if resp.status == 204 and (resp.headers.get("Upload-Offset") or "").isdigit():
                    new = int(resp.headers["Upload-Offset"])
                    if new <= offset or new > job.size:
                        offset = None  # an answer we cannot trust: ask HEAD
                        continue
                    offset = new
                    self.board.advance(k, offset)
                    self.state.put(k, offset=offset)
                    attempt = 0
                    continue
                attempt += 1
                if resp.status == 409:
                    # Offset mismatch (another client, or an answer we never saw): learn the offset.
                    offset = None
                    await self._wait(fr, resp, attempt)
                elif resp.status == 460:
                    fr.notes.append(f"chunk at {offset} arrived corrupted (460); sent again")
                    await self._wait(fr, resp, attempt)
                elif resp.status == 403 and resp.reason == "upload-complete":
                    offset = None
                elif resp.status in (404, 410) and gen < MAX_GENERATIONS:
                    fr.notes.append(f"the server lost or expired {url} ({resp.describe()}); made a new upload")
                    url, offset, gen = None, None, gen + 1
                    self.state.put(k, url=None, offset=0, generation=gen)
                elif resp.status == 0 or resp.status in retry.RETRYABLE:
                    if resp.status == 0:
                        offset = None  # the PATCH may have landed, in part: ask before sending again
                    await self._wait(fr, resp, attempt)
                else:
                    raise self._fatal(resp, f"the server refused the chunk at offset {offset}")
        except GiveUp as e:
            fr.state, fr.reason = "failed", str(e)
            self.state.put(k, reason=fr.reason)
            self.board.finish(k, False, fr.reason)
            return fr
        fr.url = url
        fr.state = "uploaded"
        if not began:
            self.board.begin(k, job.name, job.size, job.size)
        self.state.put(k, url=url, offset=job.size, state="uploaded", reason=None)
        self.board.finish(k, True)
        return fr
