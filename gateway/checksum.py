"""tus checksum extension: the algorithms we verify, by their tus names.

The digest in `Upload-Checksum: <algorithm> <base64>` is the raw digest
bytes, base64-encoded; crc32c is the 4-byte big-endian CRC.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Callable

import crc32c as _crc32c


def crc32c(data: bytes, value: int = 0) -> int:
    return _crc32c.crc32c(data, value)


def _crc32c_digest(data: bytes) -> bytes:
    return crc32c(data).to_bytes(4, "big")


ALGORITHMS: dict[str, Callable[[bytes], bytes]] = {
    "sha1": lambda b: hashlib.sha1(b).digest(),
    "sha256": lambda b: hashlib.sha256(b).digest(),
    "md5": lambda b: hashlib.md5(b).digest(),
    "crc32c": _crc32c_digest,
}

SUPPORTED = ",".join(ALGORITHMS)


class ChecksumHeaderError(ValueError):
    pass


def parse(header: str) -> tuple[str, bytes]:
    """`sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=` -> ("sha1", digest bytes)."""
    parts = header.strip().split(" ")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise ChecksumHeaderError("Upload-Checksum must be '<algorithm> <base64 digest>'")
    algo = parts[0].lower()
    if algo not in ALGORITHMS:
        raise ChecksumHeaderError(f"checksum algorithm {parts[0]!r} is not supported; use one of {SUPPORTED}")
    try:
        digest = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise ChecksumHeaderError("the Upload-Checksum digest is not valid base64") from None
    return algo, digest


def matches(algo: str, expected: bytes, data: bytes) -> bool:
    return ALGORITHMS[algo](data) == expected
