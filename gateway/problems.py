"""Errors as RFC 9457 problem details: what was wrong, and what the client should do.

`reason` is the machine-readable code; clients and the load-test report
group refusals by it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import orjson
from aiohttp import web

TUS_VERSION = "1.0.0"


def problem(status: int, reason: str, detail: str, *, headers: dict[str, str] | None = None,
            title: str | None = None, **extra: object) -> web.Response:
    body = {"type": f"https://unggah.invalid/problems/{reason}", "title": title or reason.replace("-", " "),
            "status": status, "reason": reason, "detail": detail, **extra}
    # The reason also travels as a header, so proxies, load generators and metrics
    # can classify a refusal without parsing the body.
    h = {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store", "Unggah-Reason": reason}
    if headers:
        h.update(headers)
    return web.Response(status=status, body=orjson.dumps(body),
                        content_type="application/problem+json", headers=h)


@dataclass(frozen=True)
class ProblemType:
    """One kind of refusal, declared once below: its status, reason code and title. Calling it
    with the detail (what was wrong here, and what to do) makes the response."""

    status: int
    reason: str
    title: str

    def __call__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: object) -> web.Response:
        return problem(self.status, self.reason, detail, headers=headers, title=self.title, **extra)


# ---- the protocol handler's refusals: every outcome of CREATE, APPEND and TERMINATE that is not
# a success has one of these (tests/test_problems.py holds the scripts' outcomes against them).

ErrUnauthorized = ProblemType(401, "unauthorized", "The token is missing, unknown or revoked")
ErrUploadNotFound = ProblemType(404, "upload-not-found", "No such upload")
ErrOffsetMismatch = ProblemType(409, "offset-mismatch", "Upload-Offset is not the upload's offset")
ErrFinalImmutable = ProblemType(403, "final-upload-immutable", "A final upload cannot be appended to")
ErrUploadComplete = ProblemType(403, "upload-complete", "The upload is complete")
ErrUploadFailed = ProblemType(403, "upload-failed", "The upload failed")
ErrUploadImmutable = ProblemType(403, "upload-immutable", "A complete upload is never deleted")
ErrUploadExpired = ProblemType(410, "upload-expired", "The upload expired before it was complete")
ErrUploadGone = ProblemType(410, "upload-gone", "The upload of this Idempotency-Key was terminated")
ErrExceedsLength = ProblemType(413, "exceeds-length", "The body goes past Upload-Length")
ErrUploadTooLarge = ProblemType(413, "upload-too-large", "The upload would be larger than the maximum")
ErrLengthFixed = ProblemType(400, "length-fixed", "Upload-Length cannot change")
ErrLengthTooSmall = ProblemType(400, "length-too-small", "Upload-Length is smaller than what was sent")
ErrIdempotencyKeyReused = ProblemType(422, "idempotency-key-reused", "The Idempotency-Key belongs to another upload")
ErrIdempotencyKeyInFlight = ProblemType(409, "idempotency-key-in-flight",
                                        "The first request with this Idempotency-Key is still running")
ErrBufferFull = ProblemType(503, "buffer-full", "The upload buffer is full")
ErrInternal = ProblemType(500, "internal", "Internal error")


def retry_after(seconds: int) -> str:
    """A Retry-After for a refusal under load: `seconds` to twice that, at random. Clients
    refused together (a burst, or everyone after a Redis blip) would otherwise all come
    back together exactly that much later, as a burst that is refused again together."""
    return str(seconds + random.randrange(seconds + 1))
