"""Every message the gateway and the ingesters exchange through Redis, as msgspec Structs.

Hashes and stream entries are flat string maps; `from_fields` turns one into its
Struct (msgspec converts the numeric strings).
Field names are short on stream entries because they are repeated per entry.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Literal

import msgspec

# Upload lifecycle, as the status endpoint reports it.
RECEIVING = "receiving"
STORED = "stored"
FAILED = "failed"
TERMINATED = "terminated"
# The start of the reason of an upload failed by a dead letter: it is held, not finished,
# and `unggah dead replay` brings it back (see PARK in buffer/scripts.py).
DEAD_LETTER = "dead-letter:"


def held(state: str, reason: str) -> bool:
    """Failed by a dead letter, so not for good: a replay may still bring the upload back."""
    return state == FAILED and reason.startswith(DEAD_LETTER)

UploadStateName = Literal["receiving", "stored", "failed", "terminated"]


class UploadState(msgspec.Struct, kw_only=True):
    """The upload state hash `unggah:{pN}:up:<id>`."""

    id: str
    tenant: str
    length: int  # -1 while deferred (Upload-Defer-Length)
    offset: int = 0  # bytes accepted into the buffer
    stored: int = 0  # bytes durably written by the ingesters
    state: UploadStateName = RECEIVING
    reason: str = ""
    metadata: str = ""  # the Upload-Metadata header as sent
    concat: Literal["", "partial", "final"] = ""
    parts: str = ""  # final uploads: space-separated partial ids, in order
    final_of: str = ""  # partial uploads: the final that includes them
    created_at: int = 0  # ms since the epoch, server clock
    expires_at: int = 0  # ms; 0 = never
    received_at: int = 0  # ms when offset reached length
    stored_at: int = 0
    sha256: str = ""  # hex, once stored
    window: str = ""  # the registration window the upload was created in
    finq: int = 0  # 1 once its finalisation entry (a final's: its assembly entry) has been queued
    # Set when the buffer came back from a crash without bytes it had acknowledged (AckWitness):
    # the offset that had been acknowledged, and when the loss was found.
    lost_acked: int = 0
    lost_at: int = 0

    @property
    def complete(self) -> bool:
        return self.length >= 0 and self.offset == self.length


def decode_hash(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def from_fields(raw: dict[bytes, bytes] | dict[str, str], cls: type[msgspec.Struct]):
    fields = decode_hash(raw) if raw and isinstance(next(iter(raw)), bytes) else raw
    return msgspec.convert(fields, cls, strict=False)


# Stream entry kinds.
DATA = "d"  # bytes of an upload at an offset
FIN = "f"  # every byte is stored: finalise (checksum, move, mark stored)
CONCAT = "c"  # assemble a concatenation final from its stored partials
DROP = "x"  # the upload was terminated: remove its partial file


class Entry(msgspec.Struct, kw_only=True):
    """One stream entry as the ingester sees it (data is kept out: it can be MiBs)."""

    entry_id: str
    k: str
    u: str
    o: int = 0
    c: int = 0  # crc32c of the data, checked again before the write
    n: int = 0  # data length


class CompletedEvent(msgspec.Struct, kw_only=True):
    """Appended to `unggah:{pN}:completed` when an upload reaches stored or failed."""

    u: str
    tenant: str
    state: str
    length: int
    sha256: str = ""
    reason: str = ""
    metadata: str = ""
    at: int = 0


class DeadLetter(msgspec.Struct, kw_only=True):
    """A dead-letter entry: the original entry's fields plus why it was given up."""

    orig: str  # original stream entry id
    k: str
    u: str
    o: int = 0
    c: int = 0
    reason: str
    deliveries: int
    at: int


_META_KEY = re.compile(r"^[\x21-\x2b\x2d-\x7e]+$")  # printable ASCII, no space or comma


class MetadataError(ValueError):
    pass


def declared_sha256(meta: dict[str, bytes]) -> str | None:
    """The whole-file sha256 a client declared in its metadata, as lower-case hex, or None.

    Either `sha256` (64 hex digits, or the base64 of the 32-byte digest) or `checksum`
    ("sha256 <base64>"). Raises MetadataError for anything else: the gateway checks it at
    creation, because an unreadable checksum would otherwise fail the upload only after
    every byte was sent."""
    raw = meta.get("sha256")
    if raw is None and meta.get("checksum", b"").lower().startswith(b"sha256 "):
        raw = meta["checksum"][7:]
    if raw is None:
        return None
    text = raw.decode("ascii", errors="replace").strip()
    if len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text):
        return text.lower()
    try:
        digest = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 32:
        raise MetadataError(f"Upload-Metadata declares a sha256 that is not one: {text[:80]!r}; send the file's "
                            "SHA-256 as 64 hex digits or as the base64 of its 32 bytes, or leave it out")
    return digest.hex()


def decode_metadata(value: str | None) -> dict[str, bytes]:
    """tus Upload-Metadata, `filename d29ybGQ=,is_confidential` -> {"filename": b"world", ...}.

    Stored verbatim in the upload state; gateway and ingesters both read it.
    """
    out: dict[str, bytes] = {}
    if not value or not value.strip():
        return out
    for pair in value.split(","):
        parts = pair.strip().split(" ")
        key = parts[0]
        if not key or len(parts) > 2 or not _META_KEY.match(key):
            raise MetadataError("Upload-Metadata must be comma-separated 'key base64value' pairs; "
                                f"bad pair {pair.strip()[:60]!r}")
        if key in out:
            raise MetadataError(f"Upload-Metadata repeats the key {key!r}")
        try:
            out[key] = base64.b64decode(parts[1], validate=True) if len(parts) == 2 else b""
        except (binascii.Error, ValueError):
            raise MetadataError(f"Upload-Metadata value for {key!r} is not valid base64") from None
    return out
