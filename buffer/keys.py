"""The Redis key layout, in one place.

Every key of one partition carries the hash tag `{pN}`, so each Lua script
touches a single slot and the same code runs on Redis Cluster. An upload id
starts with its partition, so no lookup is needed to find an upload's keys.

    unggah:{p3}:stream         chunk entries waiting for an ingester (consumer group "ingest")
    unggah:{p3}:bytes          bytes currently buffered in the stream (our own counter)
    unggah:{p3}:dead           dead-letter stream
    unggah:{p3}:errors         last processing error per pending entry id (shown when dead-lettered)
    unggah:{p3}:completed      events for uploads that reached a final state
    unggah:{p3}:up:<id>        upload state hash (see messages.UploadState)
    unggah:{p3}:rec:<id>       accepted PATCHes: start offset -> "length:crc32c" (duplicate replay)
    unggah:{p3}:idem:<digest>  Idempotency-Key record for upload creation (its owner while in flight)
    unggah:{p3}:owners         sorted set: gateway boot id -> end of its lease (ms, the server's clock),
                               kept by each gateway that has a creation in flight in this partition
    unggah:{p3}:audit          audit events of this partition, waiting to be chained to disk
    unggah:{p3}:revoked        hashes of revoked tokens, checked by APPEND (written to every partition)

Global keys (single-key commands only, so they may live in any slot):

    unggah:tenants             hash: tenant id -> JSON (name, created_at)
    unggah:token:<sha256>      hash: an access token's tenant, role, name, times (the token itself is never stored)
    unggah:tokens              set of token hashes, for listing
"""

from __future__ import annotations

import hashlib
import re
import secrets

GROUP = "ingest"
PREFIX = "unggah"
# The most partitions a deployment may have (unggah.config checks it). A revocation is written
# to every one of them, so it reaches a gateway whatever its partition count.
MAX_PARTITIONS = 1024

# Partition (decimal), a dash, 32 hex digits: 128 random bits.
_ID = re.compile(r"^(\d{1,4})-([0-9a-f]{32})$")


def new_upload_id(partition: int) -> str:
    return f"{partition}-{secrets.token_hex(16)}"


def partition_of(upload_id: str, partitions: int) -> int | None:
    """The partition an id names, or None when the id is malformed or out of range."""
    m = _ID.match(upload_id)
    if not m:
        return None
    p = int(m.group(1))
    return p if p < partitions else None


def random_partition(partitions: int) -> int:
    return secrets.randbelow(partitions)


def partition_for_key(scope: str, key: str, partitions: int) -> int:
    """Idempotency keys pick a fixed partition, so the key record and the upload share a slot."""
    h = hashlib.blake2b(f"{scope}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") % partitions


def _tag(p: int) -> str:
    return f"{PREFIX}:{{p{p}}}"


def stream(p: int) -> str:
    return f"{_tag(p)}:stream"


def buffered_bytes(p: int) -> str:
    return f"{_tag(p)}:bytes"


def dead(p: int) -> str:
    return f"{_tag(p)}:dead"


def errors(p: int) -> str:
    return f"{_tag(p)}:errors"


def audit(p: int) -> str:
    return f"{_tag(p)}:audit"


def revoked(p: int) -> str:
    return f"{_tag(p)}:revoked"


def completed(p: int) -> str:
    return f"{_tag(p)}:completed"


def upload(p: int, upload_id: str) -> str:
    return f"{_tag(p)}:up:{upload_id}"


def lost(p: int, upload_id: str) -> str:
    """A tombstone: this upload was acknowledged, then lost with the buffer (AckWitness)."""
    return f"{_tag(p)}:lost:{upload_id}"


def records(p: int, upload_id: str) -> str:
    return f"{_tag(p)}:rec:{upload_id}"


def owners(p: int) -> str:
    """The live owners of in-flight creations in partition `p` (see scripts.CREATE)."""
    return f"{_tag(p)}:owners"


def idempotency(p: int, scope: str, key: str) -> str:
    digest = hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()[:32]
    return f"{_tag(p)}:idem:{digest}"


TENANTS = f"{PREFIX}:tenants"
TOKENS = f"{PREFIX}:tokens"


def token(token_hash: str) -> str:
    return f"{PREFIX}:token:{token_hash}"
