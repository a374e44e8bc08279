"""The tus 1.0.0 handler: one place that speaks the protocol.

Extensions, each findable by name below: creation, creation-with-upload,
creation-defer-length, expiration, checksum, termination, concatenation.
Plus Idempotency-Key on creation (draft-ietf-httpapi-idempotency-key-header).

The handler never holds more than one stream entry of a streamed PATCH in
memory, and commits each entry as it arrives, so an interrupted PATCH keeps
every byte that reached us. A PATCH with Upload-Checksum is the exception:
it must be verified whole before any byte counts, so its size is capped.

Idempotency-Key: a retried POST gets the upload the first one made (201, Idempotent-Replayed,
Upload-Offset: what it holds); the key with a different request is a 422. While the first
request of a creation-with-upload is still reading its body, the key is in flight and a retry
gets 409 with Retry-After, for as long as the gateway process reading that body lives (it
owns the mark and keeps a lease on it, buffer/scripts.py CREATE and LEASE). When that process
is gone, killed mid-body, nothing will finish the creation, so the retry takes it over at once
(as soon as the lease lapses, idempotency_owner_lease_seconds) instead of after
idempotency_inflight_seconds. A takeover is answered as a replay, not as a fresh upload: the
same upload id, with Upload-Offset at the bytes committed before the kill. That is what a tus
client needs: it resumes from Upload-Offset, so no committed byte is sent twice or orphaned in
a second upload, and the key keeps naming one upload. The retry's own body is not read; the
client sends the rest by PATCH from that offset, as after any creation that took part of a body.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import hashlib
import logging
import time
from typing import Callable

from aiohttp import web

from buffer.messages import RECEIVING, STORED, TERMINATED, UploadState, decode_metadata
from buffer.store import Appended, AppendOutcome, UploadStore
from gateway import checksum, headers
from gateway.auth import CHALLENGE, REVOKED, may_read_uploads, may_write
from gateway.admission import Admission, BodyStalled, Creation, Refused
from gateway.witness import AckWitness
from gateway.context import PRINCIPAL, READ_ALL, TENANT
from gateway.windows import Windows, WindowClosed
from gateway.problems import (TUS_VERSION, ErrBufferFull, ErrExceedsLength, ErrFinalImmutable, ErrIdempotencyKeyInFlight,
                              ErrIdempotencyKeyReused, ErrInternal, ErrLengthFixed, ErrLengthTooSmall, ErrOffsetMismatch,
                              ErrUnauthorized, ErrUploadComplete, ErrUploadExpired, ErrUploadFailed, ErrUploadGone,
                              ErrUploadImmutable, ErrUploadNotFound, ErrUploadTooLarge, ProblemType, problem,
                              retry_after)
from unggah.config import Settings
from unggah.receipts import ReceiptPayload, payload_for
from unggah.times import stamped

log = logging.getLogger("unggah.gateway")

EXTENSIONS = ("creation,creation-with-upload,creation-defer-length,expiration,"
              "checksum,termination,concatenation")
OFFSET_STREAM = "application/offset+octet-stream"


def _http_date(ms: int) -> str:
    return email.utils.formatdate(ms / 1000, usegmt=True)


# Every APPEND outcome that refuses a body ("ok" is the one that does not), with the detail it is
# answered with: {offset} and {state} are the outcome's values, {upload} the upload's id.
# tests/test_problems.py checks that every outcome the script can return is here.
APPEND_REFUSALS: dict[AppendOutcome, tuple[ProblemType, str]] = {
    "revoked": (ErrUnauthorized, REVOKED),
    "notfound": (ErrUploadNotFound, "no upload {upload} here; create a new one with POST"),
    "conflict": (ErrOffsetMismatch, "Upload-Offset does not match the upload's offset {offset}; "
                                    "send HEAD and resume from there"),
    "final": (ErrFinalImmutable, "a final (concatenated) upload cannot be appended to"),
    "complete": (ErrUploadComplete, "this upload is complete at {offset} bytes; nothing more can be appended"),
    "closed": (ErrUploadFailed, "this upload is {state}; create a new upload to send the file again"),
    "expired": (ErrUploadExpired, "this upload expired before it was complete (its registration window closed, "
                                  "or it was left unfinished too long); create a new one if a window is open"),
    "exceeds": (ErrExceedsLength, "the body would take the upload past its Upload-Length of {offset}; "
                                  "send HEAD to see what was kept, then at most the rest"),
    "too_large": (ErrUploadTooLarge, "the upload would exceed the maximum of {offset} bytes; "
                                     "split the file, or send HEAD to see what was kept"),
    "length_fixed": (ErrLengthFixed, "Upload-Length is already {offset} and cannot change"),
    "length_short": (ErrLengthTooSmall, "Upload-Length must be at least {offset}: the bytes already sent and this body"),
    "full": (ErrBufferFull, "the upload buffer is full; your bytes so far are safe, retry after the pause"),
}


def append_refusal(res: Appended, upload_id: str) -> web.Response:
    """The answer to an APPEND outcome other than ok: APPEND_REFUSALS says which."""
    o = res.outcome
    if o == "closed" and res.detail == TERMINATED:
        o = "notfound"  # a terminated upload is gone, as one that never was
    if o not in APPEND_REFUSALS:
        return ErrInternal(f"unexpected outcome {o}")
    kind, detail = APPEND_REFUSALS[o]
    headers, extra = {}, {}
    if o == "revoked":
        headers = dict(CHALLENGE)
    elif o == "conflict":
        headers, extra = {"Upload-Offset": str(res.offset)}, {"offset": res.offset}
    elif o == "full":
        headers = {"Retry-After": retry_after(2), "Upload-Offset": str(res.offset)}
    return kind(detail.format(offset=res.offset, state=res.detail, upload=repr(upload_id[:80])), headers=headers,
                **extra)


class TusHandler:
    def __init__(self, store: UploadStore, settings: Settings, admission: Admission, windows: Windows, *,
                 witness: AckWitness | None = None, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        # Told of every offset acknowledged to a client, so a buffer that loses it is caught.
        self.witness = witness
        self.s = settings
        self.admission = admission
        self.windows = windows
        self.clock = clock
        # Upload lengths this process has seen, for completion-first ordering without a read.
        self.lengths: collections.OrderedDict[str, int] = collections.OrderedDict()

    # --- dispatch -------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        method = headers.tus_method(request)
        if method == "OPTIONS":
            return self.options()
        if request.headers.get("Tus-Resumable") != TUS_VERSION:
            return problem(412, "unsupported-tus-version",
                           f"this server speaks tus {TUS_VERSION}; send 'Tus-Resumable: {TUS_VERSION}'",
                           headers={"Tus-Version": TUS_VERSION})
        refusal = may_write(request) if method in ("POST", "PATCH", "DELETE") else may_read_uploads(request)
        if refusal is not None:
            return refusal
        upload_id = request.match_info.get("upload_id")
        if upload_id is None:
            if method == "POST":
                return await self.create(request)
            return problem(405, "method-not-allowed", f"{method} is not allowed on the collection; POST creates an upload",
                           headers={"Allow": "POST, OPTIONS"})
        if method == "HEAD":
            return await self.head(request, upload_id)
        if method == "PATCH":
            return await self.patch(request, upload_id)
        if method == "DELETE":
            return await self.delete(request, upload_id)
        return problem(405, "method-not-allowed", f"{method} is not allowed on an upload; use HEAD, PATCH or DELETE",
                       headers={"Allow": "HEAD, PATCH, DELETE, OPTIONS"})

    def options(self) -> web.Response:
        return web.Response(status=204, headers={
            "Tus-Resumable": TUS_VERSION,
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": EXTENSIONS,
            "Tus-Max-Size": str(self.s.max_upload_bytes),
            # The longest header the gateway reads: Upload-Metadata must fit in it.
            "Unggah-Max-Header-Bytes": str(self.s.max_header_bytes),
            "Tus-Checksum-Algorithm": checksum.SUPPORTED,
            # Not part of tus 1.0: the cap on a PATCH that carries Upload-Checksum.
            "Upload-Checksum-Max-Size": str(self.s.checksum_patch_max_bytes),
        })

    # --- helpers --------------------------------------------------------

    def tenant(self, request: web.Request) -> str:
        return request.get(TENANT, "public")

    def token_hash(self, request: web.Request) -> str:
        """For APPEND's revocation check; '' when access control is off."""
        p = request.get(PRINCIPAL)
        return p.token_hash if p is not None else ""

    def actor(self, request: web.Request) -> str:
        """Who did it, for the audit trail: tenant and the token holder's name."""
        p = request.get(PRINCIPAL)
        return f"{p.tenant}/{p.name}" if p is not None else self.tenant(request)

    def location(self, request: web.Request, upload_id: str) -> str:
        base = self.s.public_url.rstrip("/") if self.s.public_url else f"{request.scheme}://{request.host}"
        return f"{base}/files/{upload_id}"

    async def load(self, request: web.Request, upload_id: str) -> UploadState | None:
        """The upload, if it exists and this tenant may see it (otherwise None: a 404,
        never a 403, so another tenant's upload ids do not leak)."""
        state = await self.store.get(upload_id)
        if state is None or state.state == TERMINATED:
            return None
        if not request.get(READ_ALL, False) and state.tenant != self.tenant(request):
            return None
        return state

    @staticmethod
    def not_found(upload_id: str) -> web.Response:
        kind, detail = APPEND_REFUSALS["notfound"]
        return kind(detail.format(upload=repr(upload_id[:80])))

    def upload_headers(self, state: UploadState) -> dict[str, str]:
        h = {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store",
             "Upload-Offset": str(state.offset)}
        if state.length >= 0:
            h["Upload-Length"] = str(state.length)
        else:
            h["Upload-Defer-Length"] = "1"
        if state.metadata:
            h["Upload-Metadata"] = state.metadata
        if state.concat == "partial":
            h["Upload-Concat"] = "partial"
        elif state.concat == "final":
            h["Upload-Concat"] = "final;" + " ".join(f"/files/{p}" for p in state.parts.split())
        if state.expires_at and state.state == RECEIVING and not state.complete:
            h["Upload-Expires"] = _http_date(state.expires_at)
        return h

    def remember_length(self, upload_id: str, length: int) -> None:
        if length >= 0:
            self.lengths[upload_id] = length
            self.lengths.move_to_end(upload_id)
            if len(self.lengths) > 100_000:
                self.lengths.popitem(last=False)

    def acknowledged(self, request: web.Request, upload_id: str, offset: int) -> None:
        if self.witness is not None:
            self.witness.acked(upload_id, offset, self.tenant(request))

    def committed(self, upload_id: str, n: int, offset: int) -> None:
        """Tell admission `n` bytes of `upload_id` are in, and how many are still to come
        (one piece's worth while the length is unknown or not remembered)."""
        length = self.lengths.get(upload_id)
        self.admission.committed(upload_id, n, length - offset if length is not None else self.s.entry_bytes)

    def progress(self, upload_id: str, offset: int) -> float:
        length = self.lengths.get(upload_id)
        return offset / length if length else 0.5

    def shed(self, request: web.Request, tenant: str) -> web.Response | None:
        """The refusal a new PATCH of `tenant` would get now from a full buffer, asked before
        the token is confirmed (see gateway/auth.py): while the buffer is full appends are
        refused, and this answers them without a round trip to Redis. Being busy refuses
        nothing here: appends wait their turn, creations are held (gateway/admission.py)."""
        if headers.tus_method(request) != "PATCH" or (upload_id := request.match_info.get("upload_id")) is None:
            return None
        offset = request.headers.get("Upload-Offset", "")
        if not headers.is_offset(offset) or self.store.partition(upload_id) is None:
            return None  # bad input: the full path says what is wrong
        # Nothing here raises: a raised refusal held in a local of this frame, which its
        # traceback holds in turn, is a reference cycle that keeps the request alive until
        # the garbage collector finds it, and under overload that is most requests.
        refusal = self.admission.buffer.append_refusal()
        return None if refusal is None else self.refused(refusal)

    def stalled(self, offset: int, kept: str) -> web.Response:
        response = problem(408, "body-stalled",
                           f"the body stalled: no byte for {self.s.body_idle_seconds:g} s, or under "
                           f"{self.s.body_min_bytes_per_second:g} bytes a second over that long; {kept}; "
                           "resume from HEAD", headers={"Upload-Offset": str(offset)})
        # The connection goes too (after aiohttp's lingering read): more of this body is of no use.
        response.force_close()
        return response

    @staticmethod
    def refused(e: Refused | WindowClosed, status: int = 503) -> web.Response:
        if isinstance(e, WindowClosed):
            return problem(403, "window-closed", e.detail)
        return problem(status, e.reason, e.detail, headers={"Retry-After": retry_after(e.retry_after)})

    # --- core: HEAD -----------------------------------------------------

    async def head(self, request: web.Request, upload_id: str) -> web.Response:
        state = await self.load(request, upload_id)
        if state is None:
            return self.not_found(upload_id)
        if self._expired(state):
            return problem(410, "upload-expired", "this upload expired before it was complete; create a new one")
        # The offset read above may count bytes whose append was refused (no replica confirmed
        # it in time): answered only once the replicas have them (503 buffer-unavailable if not).
        await self.store.confirm(upload_id)
        return web.Response(status=200, headers=self.upload_headers(state))

    def _expired(self, state: UploadState) -> bool:
        return (state.state == RECEIVING and not state.complete and state.expires_at > 0
                and self.clock() * 1000 >= state.expires_at)

    # --- creation -------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        try:
            length = headers.non_negative_int("Upload-Length", request.headers.get("Upload-Length"))
            defer = request.headers.get("Upload-Defer-Length")
            meta_raw = request.headers.get("Upload-Metadata", "")
            headers.metadata(meta_raw)
            concat, parts = headers.concat(request.headers.get("Upload-Concat"))
        except headers.HeaderError as e:
            return problem(400, "bad-header", str(e))
        if defer is not None and defer.strip() != "1":
            return problem(400, "bad-header", "Upload-Defer-Length must be 1")
        has_body = (request.content_length or 0) > 0 or "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        if has_body and (encoded := _encoded_body(request)) is not None:
            return encoded
        if has_body and request.content_type != OFFSET_STREAM:
            return problem(415, "unsupported-media-type",
                           f"a creation request with a body must have Content-Type: {OFFSET_STREAM}")
        if has_body:
            # What would refuse the body anyway refuses the creation, so nothing is created for it.
            try:
                if (ck := request.headers.get("Upload-Checksum")) is not None:
                    checksum.parse(ck)
            except checksum.ChecksumHeaderError as e:
                return problem(400, "bad-header", str(e))
            if length is not None and (request.content_length or 0) > length:
                return problem(413, "exceeds-length", f"the body carries {request.content_length} bytes but "
                                                      f"Upload-Length is {length}; nothing was created")

        final_parts: list[UploadState] = []
        if concat == "final":
            if length is not None or defer is not None:
                return problem(400, "bad-header", "a final upload takes its length from its partials; "
                                                  "do not send Upload-Length or Upload-Defer-Length")
            if has_body:
                return problem(403, "final-upload-immutable", "a final upload cannot carry a body")
            final_parts, err = await self._check_parts(request, parts)
            if err:
                return err
            length = sum(p.length for p in final_parts)
        elif length is None and defer is None:
            return problem(400, "missing-length", "send Upload-Length, or Upload-Defer-Length: 1 if the size is not known yet")
        elif length is not None and defer is not None:
            return problem(400, "bad-header", "send either Upload-Length or Upload-Defer-Length, not both")
        if length is not None and length > self.s.max_upload_bytes:
            return problem(413, "upload-too-large",
                           f"Upload-Length {length} exceeds the maximum of {self.s.max_upload_bytes} bytes",
                           headers={"Tus-Max-Size": str(self.s.max_upload_bytes)})

        tenant = self.tenant(request)
        try:
            window, deadline = self.windows.for_creation(tenant)
        except WindowClosed as e:
            log.info("creation refused", extra={"tenant": tenant, "reason": "window-closed"})
            return self.refused(e)
        ttl_end = int((self.clock() + self.s.upload_ttl_seconds) * 1000)
        expires_at = min(ttl_end, deadline) if deadline else ttl_end
        idem = request.headers.get("Idempotency-Key", "").strip()
        if len(idem) > 255:
            return problem(400, "bad-header", "Idempotency-Key must be at most 255 characters")
        fingerprint = hashlib.sha256(
            f"{length}|{defer}|{meta_raw}|{request.headers.get('Upload-Concat', '')}".encode()).hexdigest() if idem else ""
        # A final brings no bytes of its own, so it is never held back.
        admit = contextlib.nullcontext(Creation()) if concat == "final" else self.admission.creation(length)
        try:
            async with admit as admitted:
                created = await self.store.create(
                    tenant=tenant, length=-1 if length is None else length, metadata=meta_raw, concat=concat,
                    parts=[p.id for p in final_parts], expires_at=expires_at, window=window,
                    idempotency_key=idem, fingerprint=fingerprint, pending=has_body,
                    idempotency_ttl=self.s.idempotency_ttl_seconds,
                    inflight_ms=self.s.idempotency_inflight_seconds * 1000, actor=self.actor(request))
                if created.outcome == "created":
                    admitted.upload_id = created.upload_id
        except Refused as e:
            log.info("creation refused", extra={"tenant": tenant, "reason": e.reason})
            return self.refused(e)
        upload_id = created.upload_id

        if created.outcome == "mismatch":
            return ErrIdempotencyKeyReused("this Idempotency-Key was used for a different upload; "
                                           "use a new key for a new upload")
        if created.outcome == "inflight":
            return ErrIdempotencyKeyInFlight("the first request with this Idempotency-Key is still being processed; "
                                             "retry in a moment", headers={"Retry-After": "1"})
        if created.outcome == "takeover":
            log.info("creation taken over from a gateway that is gone",
                     extra={"upload": upload_id, "tenant": tenant})
        if created.outcome in ("replay", "takeover"):
            state = await self.store.get(upload_id)
            if state is None or state.state == TERMINATED:
                return ErrUploadGone("the upload this Idempotency-Key created was terminated; use a new key")
            h = self.upload_headers(state)
            h["Location"] = self.location(request, upload_id)
            h["Idempotent-Replayed"] = "true"
            return web.Response(status=201, headers=h)

        log.info("upload created", extra={"upload": upload_id, "tenant": tenant, "length": length})
        h = {"Tus-Resumable": TUS_VERSION, "Location": self.location(request, upload_id)}
        if concat == "final":
            state = await self.store.get(upload_id)
            if (taken := await self.store.link_final(state)) is not None:
                # Another final claimed it between our check and now: that one has it.
                await self.store.abandon_final(state, self.actor(request))
                return problem(400, "bad-partial", f"partial upload {taken} already belongs to another final upload")
            return web.Response(status=201, headers=h)
        h["Upload-Expires"] = _http_date(expires_at)
        self.remember_length(upload_id, -1 if length is None else length)
        if has_body:
            try:
                # creation-with-upload: the body is the first chunk.
                result = await self._receive(request, upload_id, 0)
            finally:
                if idem:
                    await self.store.creation_done(tenant, idem)
            if isinstance(result, web.Response):
                # The upload exists; the body was refused. Tell the client where to resume.
                result.headers["Location"] = h["Location"]
                return result
            h["Upload-Offset"] = str(result)
        self.acknowledged(request, upload_id, result if has_body else 0)
        return web.Response(status=201, headers=h)

    async def _check_parts(self, request: web.Request, parts: list[str]) -> tuple[list[UploadState], web.Response | None]:
        states = []
        for pid in parts:
            if parts.count(pid) > 1:
                return [], problem(400, "bad-partial", f"partial upload {pid[:80]!r} is listed twice")
            st = await self.load(request, pid)
            if st is None:
                return [], problem(400, "bad-partial", f"partial upload {pid[:80]!r} does not exist")
            if st.concat != "partial":
                return [], problem(400, "bad-partial", f"upload {pid} was not created with Upload-Concat: partial")
            if not st.complete:
                of = f"of {st.length} bytes" if st.length >= 0 else "bytes and no declared length yet"
                return [], problem(400, "partial-incomplete", f"partial upload {pid} has {st.offset} {of}; finish it first")
            if st.final_of:
                return [], problem(400, "bad-partial", f"partial upload {pid} already belongs to final upload {st.final_of}")
            states.append(st)
        return states, None

    # --- core: PATCH ----------------------------------------------------

    async def patch(self, request: web.Request, upload_id: str) -> web.Response:
        if request.content_type != OFFSET_STREAM:
            return problem(415, "unsupported-media-type", f"PATCH requests must have Content-Type: {OFFSET_STREAM}")
        if (encoded := _encoded_body(request)) is not None:
            return encoded
        try:
            offset = headers.non_negative_int("Upload-Offset", request.headers.get("Upload-Offset"))
        except headers.HeaderError as e:
            return problem(400, "bad-header", str(e))
        if offset is None:
            return problem(400, "missing-offset", "PATCH requests must carry Upload-Offset (send HEAD to learn it)")
        if self.store.partition(upload_id) is None:
            return self.not_found(upload_id)
        # No read before the body: the APPEND script checks existence, tenant and offset
        # in the same step that appends, so a PATCH costs one round trip.
        if (refusal := self.admission.buffer.append_refusal()) is not None:
            return self.refused(refusal)
        result = await self._receive(request, upload_id, offset)
        if isinstance(result, web.Response):
            return result
        self.acknowledged(request, upload_id, result)
        return web.Response(status=204, headers={"Tus-Resumable": TUS_VERSION, "Upload-Offset": str(result)})

    async def _receive(self, request: web.Request, upload_id: str, offset: int) -> int | web.Response:
        """Take the request body at `offset`; the new offset, or the refusal."""
        try:
            new_length = headers.non_negative_int("Upload-Length", request.headers.get("Upload-Length"))
            ck = request.headers.get("Upload-Checksum")
            expected = checksum.parse(ck) if ck is not None else None
        except (headers.HeaderError, checksum.ChecksumHeaderError) as e:
            return problem(400, "bad-header", str(e))
        if new_length is not None and new_length > self.s.max_upload_bytes:
            return problem(413, "upload-too-large", f"Upload-Length exceeds the maximum of {self.s.max_upload_bytes} bytes")
        if expected is not None:
            return await self._receive_checksummed(request, upload_id, offset, expected, new_length)
        return await self._receive_streamed(request, upload_id, offset, new_length)

    async def _receive_checksummed(self, request, upload_id, offset, expected, new_length):
        cap = self.s.checksum_patch_max_bytes
        if request.content_length is not None and request.content_length > cap:
            return problem(413, "checksummed-patch-too-large",
                           f"a PATCH with Upload-Checksum may carry at most {cap} bytes; send smaller chunks",
                           headers={"Upload-Checksum-Max-Size": str(cap)})
        tenant = self.tenant(request)
        try:
            async with self.admission.turn(request.content_length or cap, tenant,
                                           self.progress(upload_id, offset)) as turn:
                body = await turn.read(self._read_whole(request, upload_id, cap), arrived(request))
                if isinstance(body, web.Response):
                    return body
                algo, digest = expected
                if not checksum.matches(algo, digest, body):
                    return problem(460, "checksum-mismatch",
                                   f"the {algo} of the {len(body)} bytes received does not match Upload-Checksum; "
                                   "nothing was stored, send the chunk again")
                step = self.s.entry_bytes
                crc = checksum.crc32c(body)
                if len(body) <= step:  # the usual case: one entry, one CRC pass
                    pieces = [(crc, body)] if body else []
                else:
                    pieces = [(checksum.crc32c(body[i:i + step]), body[i:i + step]) for i in range(0, len(body), step)]
                record = f"{len(body)}:{crc}"
                turn.read_done()
                res = await self.store.append(upload_id, offset, pieces, tenant=tenant, actor=self.actor(request),
                                              patch_start=offset, record=record, new_length=new_length,
                                              buffer_limit=self.admission.buffer.partition_limit,
                                              token_hash=self.token_hash(request), patch_bytes=len(body),
                                              max_bytes=self.s.max_upload_bytes)
        except Refused as e:
            return self.refused(e)
        except BodyStalled:
            return self.stalled(offset, "nothing of this chunk was stored")
        if res.outcome == "conflict" and res.record == record:
            return res.offset  # a retry of a PATCH we already took
        if res.outcome != "ok":
            return append_refusal(res, upload_id)
        self.committed(upload_id, len(body), res.offset)
        return res.offset

    async def _read_whole(self, request, upload_id, cap) -> bytes | web.Response:
        if request.content_length is not None:
            try:  # the usual case: one join, no intermediate buffer
                return await request.content.readexactly(request.content_length)
            except (ConnectionError, asyncio.IncompleteReadError, OSError, ValueError, RuntimeError) as e:
                log.debug("checksummed PATCH interrupted", extra={"upload": upload_id, "error": repr(e)})
                return problem(400, "body-incomplete", "the body ended early; nothing was stored, resume from HEAD")
        buf = bytearray()
        try:
            while True:
                chunk = await request.content.read(min(1 << 20, cap + 1 - len(buf)))
                if not chunk:
                    break
                buf += chunk
                if len(buf) > cap:
                    return problem(413, "checksummed-patch-too-large",
                                   f"a PATCH with Upload-Checksum may carry at most {cap} bytes; send smaller chunks")
        except (ConnectionError, asyncio.IncompleteReadError, OSError, ValueError, RuntimeError) as e:
            # An unverifiable partial body counts for nothing.
            # debug: the refusal itself is logged once, at info, by the errors middleware
            log.debug("checksummed PATCH interrupted", extra={"upload": upload_id, "error": repr(e)})
            return problem(400, "body-incomplete", "the body ended early; nothing was stored, resume from HEAD")
        return bytes(buf)

    async def _receive_streamed(self, request, upload_id, offset, new_length):
        total = request.content_length  # None for chunked bodies
        step = self.s.entry_bytes
        pos, received, crc_all, first = offset, 0, 0, True
        interrupted = stalled = False
        # The same for every piece of this PATCH.
        tenant, actor, token_hash = self.tenant(request), self.actor(request), self.token_hash(request)
        while True:
            want = step if total is None else min(step, total - received)
            try:
                async with self.admission.turn(max(want, 1), tenant, self.progress(upload_id, pos)) as turn:
                    parts: list[bytes] = []
                    try:
                        piece, eof, interrupted = await turn.read(self._read_piece(request, want, parts),
                                                                  arrived(request))
                    except BodyStalled:
                        # Commit what did arrive of this piece: the 408 says it is kept.
                        piece, eof, interrupted, stalled = b"".join(parts), True, True, True
                    piece_crc = checksum.crc32c(piece)
                    # CRC of the whole PATCH so far; with one piece it is the piece's own.
                    crc_all = piece_crc if received == 0 else checksum.crc32c(piece, crc_all)
                    received += len(piece)
                    last = eof or interrupted or (total is not None and received >= total)
                    record = f"{received}:{crc_all}" if last and not interrupted else ""
                    turn.read_done()
                    res = await self.store.append(
                        upload_id, pos, [(piece_crc, piece)] if piece else [], tenant=tenant, actor=actor,
                        patch_start=offset, record=record, new_length=new_length if first else None,
                        buffer_limit=self.admission.buffer.partition_limit, token_hash=token_hash,
                        patch_bytes=total, max_bytes=self.s.max_upload_bytes)
            except Refused as e:
                # Nothing of this piece was committed; what came before it was. The client resumes from HEAD.
                refusal = self.refused(e)
                refusal.headers["Upload-Offset"] = str(pos)
                return refusal
            if res.outcome != "ok":
                if res.outcome == "conflict" and first and res.record:
                    return await self._maybe_duplicate(request, res, received, crc_all, last, upload_id)
                return append_refusal(res, upload_id)
            pos, first = res.offset, False
            self.committed(upload_id, len(piece), pos)
            if last:
                break
        if stalled:
            return self.stalled(pos, f"every byte that arrived is kept (up to offset {pos})")
        if interrupted:
            log.info("PATCH interrupted; kept what arrived", extra={"upload": upload_id, "offset": pos})
        return pos

    async def _read_piece(self, request: web.Request, want: int,
                          parts: list[bytes] | None = None) -> tuple[bytes, bool, bool]:
        """Up to `want` bytes: (bytes, at_eof, interrupted). What has been read so far is in
        `parts` (given: the caller's), so a read given up midway still has it.

        Asked for at most the read-ahead (`read_buffer_bytes`) at a time: aiohttp's read(n) raises
        the body's read-ahead to 2 x n for the rest of the request, so one read(entry_bytes) would
        let every PATCH waiting for its next piece hold 2 MiB in the process instead of a few
        KiB, and thousands of them the gateway's memory."""
        if want <= 0:
            return b"", True, False
        parts = [] if parts is None else parts
        got = 0
        step = self.s.read_buffer_bytes
        try:
            while got < want:
                chunk = await request.content.read(min(want - got, step))
                if not chunk:
                    return b"".join(parts), True, False
                parts.append(chunk)
                got += len(chunk)
        except asyncio.CancelledError:
            raise
        except Exception:  # connection reset, payload error: keep what arrived
            return b"".join(parts), True, True
        return parts[0] if len(parts) == 1 else b"".join(parts), False, False

    async def _maybe_duplicate(self, request, res: Appended, received: int, crc_all: int, last: bool,
                               upload_id: str) -> int | web.Response:
        """The offset is behind us and a PATCH was accepted at this offset before:
        read the rest and compare length and CRC. Same bytes: answer success."""
        length_s, _, crc_s = res.record.partition(":")
        total = request.content_length
        if total is not None and str(total) != length_s:
            return append_refusal(res, upload_id)
        while not last:
            piece, eof, interrupted = await self._read_piece(request, self.s.entry_bytes)
            if interrupted:
                return append_refusal(res, upload_id)
            received += len(piece)
            crc_all = checksum.crc32c(piece, crc_all)
            last = eof or (total is not None and received >= total)
            if received > int(length_s):
                break
        if f"{received}:{crc_all}" == res.record:
            return res.offset
        return append_refusal(res, upload_id)

    # --- termination ----------------------------------------------------

    async def delete(self, request: web.Request, upload_id: str) -> web.Response:
        state = await self.load(request, upload_id)
        if state is None:
            return self.not_found(upload_id)
        outcome = await self.store.terminate(upload_id, self.actor(request))
        if outcome == "ok":
            log.info("upload terminated", extra={"upload": upload_id})
            return web.Response(status=204, headers={"Tus-Resumable": TUS_VERSION})
        if outcome == "notfound":
            return self.not_found(upload_id)
        return ErrUploadImmutable("this upload is complete; accepted files are never deleted or overwritten")


def arrived(request: web.Request) -> Callable[[], int]:
    """How many bytes of the request's body have arrived so far (for the stall watch)."""
    content = request.content
    return lambda: content.total_bytes


def _encoded_body(request: web.Request) -> web.Response | None:
    """A refusal for a compressed body. aiohttp would decompress it while Upload-Offset and
    Content-Length count the bytes on the wire, so the stored bytes would not be the file's."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    transfer = {t.strip().lower() for t in request.headers.get("Transfer-Encoding", "").split(",")} - {"", "chunked"}
    if (encoding and encoding != "identity") or transfer:
        return problem(415, "encoded-body",
                       "send the file's bytes as they are, without Content-Encoding or a Transfer-Encoding "
                       "other than chunked: tus offsets count the bytes of the file")
    return None


LOST_REASON = "buffer-lost-acknowledged-bytes"


def status_body(state: UploadState) -> dict:
    """What the status endpoint reports. Keep your local copy until state is 'stored'."""
    return {
        "id": state.id, "state": state.state, "reason": state.reason or None,
        "length": state.length if state.length >= 0 else None,
        "bytes_received": state.offset, "bytes_stored": state.stored,
        "sha256": state.sha256 or None, "metadata": state.metadata or None, "window": state.window or None,
        # Times (server clock): ISO 8601 in UTC for people, `<name>_ms` (epoch ms) for programs.
        **stamped(created_at=state.created_at, received_at=state.received_at or None,
                  stored_at=state.stored_at or None,
                  expires_at=(state.expires_at or None) if state.state == RECEIVING else None),
        "safe_to_delete_local_copy": state.state == STORED and state.concat != "partial",
        # The buffer came back from a crash without bytes it had acknowledged (gateway/witness.py):
        # the client must send them again, from `bytes_received`.
        **({"reason": LOST_REASON, "lost": {"acknowledged_offset": state.lost_acked,
                                            **stamped(found_at=state.lost_at or None),
                                            "resume_from": state.offset}}
           if state.lost_acked > state.offset else {}),
        # A partial of a concatenation (tus-js-client's parallelUploads) is a part, not a file:
        # it is not validated or receipted, and its final says when the file is safe.
        **({"part_of": state.final_of or None} if state.concat == "partial" else {}),
    }


def receipt_payload(state: UploadState) -> ReceiptPayload:
    try:
        filename = decode_metadata(state.metadata).get("filename", b"")
    except ValueError:
        filename = b""
    # The name's bytes as sent: a name that is not UTF-8 is kept (as filename_b64), not replaced.
    return payload_for(tenant=state.tenant, upload_id=state.id, filename=filename, size=state.length,
                       sha256=state.sha256, created_at=state.created_at, completed_at=state.received_at,
                       stored_at=state.stored_at, window=state.window)
