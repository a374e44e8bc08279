"""Retries never duplicate or overwrite: replayed appends, racing appends, Idempotency-Key."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os

from buffer import keys
from tests.conftest import OCTET, TUS, create, head, patch


def _entries_bytes(entries) -> bytes:
    return b"".join(e[1][b"d"] for e in entries if e[1][b"k"] == b"d")


async def test_duplicate_append_is_answered_and_appends_nothing(gateway, http, r):
    url = await create(http, gateway, 8)
    p = int(url.rsplit("/", 1)[1].split("-")[0])
    assert (await patch(http, url, 0, b"abcd")).status == 204
    assert (await patch(http, url, 4, b"ef")).status == 204
    before = await r.xrange(keys.stream(p))
    # The client did not see our answer to the first PATCH and sends it again.
    resp = await patch(http, url, 0, b"abcd")
    assert resp.status == 204 and resp.headers["Upload-Offset"] == "6"
    # Same with a checksum header.
    digest = base64.b64encode(hashlib.sha1(b"ef").digest()).decode()
    resp = await patch(http, url, 4, b"ef", Upload_Checksum="sha1 " + digest)
    assert resp.status == 204 and resp.headers["Upload-Offset"] == "6"
    assert await r.xrange(keys.stream(p)) == before
    # Different bytes at an accepted offset are a conflict, never an overwrite.
    resp = await patch(http, url, 0, b"abcX")
    assert resp.status == 409 and resp.headers["Upload-Offset"] == "6"
    resp = await patch(http, url, 0, b"abc")
    assert resp.status == 409
    assert _entries_bytes(await r.xrange(keys.stream(p))) == b"abcdef"


async def test_duplicate_of_a_long_streamed_patch(gateway, http, r):
    size = 2 * gateway.settings.entry_bytes + 5
    data = os.urandom(size)
    url = await create(http, gateway, size + 1)
    assert (await patch(http, url, 0, data)).status == 204
    resp = await patch(http, url, 0, data)
    assert resp.status == 204 and resp.headers["Upload-Offset"] == str(size)
    tampered = data[:-1] + bytes([data[-1] ^ 1])
    assert (await patch(http, url, 0, tampered)).status == 409


async def test_two_concurrent_appends_at_the_same_offset(gateway, http, r):
    """Exactly one wins; the loser gets 409; the buffer holds the winner's bytes only."""
    for _ in range(10):
        url = await create(http, gateway, 2 * 65536)
        p = int(url.rsplit("/", 1)[1].split("-")[0])
        a, b = os.urandom(65536), os.urandom(65536)
        ra, rb = await asyncio.gather(patch(http, url, 0, a), patch(http, url, 0, b))
        assert sorted([ra.status, rb.status]) == [204, 409]
        winner = a if ra.status == 204 else b
        entries = [e for e in await r.xrange(keys.stream(p)) if e[1][b"u"] == url.rsplit("/", 1)[1].encode()]
        assert _entries_bytes(entries) == winner
        assert (await head(http, url)).headers["Upload-Offset"] == "65536"


async def test_idempotency_key_replays_creation(gateway, http, r):
    h = dict(TUS, **{"Upload-Length": "5", "Idempotency-Key": "batch-7-file-3"})
    async with http.post(gateway.files, headers=h) as first:
        assert first.status == 201
        url = first.headers["Location"]
    await patch(http, url, 0, b"ab")
    async with http.post(gateway.files, headers=h) as again:
        assert again.status == 201
        assert again.headers["Location"] == url
        assert again.headers["Upload-Offset"] == "2"  # where to resume
    uploads = [k for k in await r.keys("unggah:*:up:*")]
    assert len(uploads) == 1


async def test_idempotency_key_with_a_different_request_is_422(gateway, http, r):
    h = dict(TUS, **{"Upload-Length": "5", "Idempotency-Key": "k1"})
    async with http.post(gateway.files, headers=h) as resp:
        assert resp.status == 201
    h["Upload-Length"] = "6"
    async with http.post(gateway.files, headers=h) as resp:
        assert resp.status == 422
        assert (await resp.json())["reason"] == "idempotency-key-reused"
    assert len(await r.keys("unggah:*:up:*")) == 1


async def test_idempotency_key_in_flight_is_409(gateway, http, r):
    """While the first creation-with-upload is still receiving its body, a retry gets 409."""
    path = "/files/"
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write((f"POST {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 100\r\n"
                  "Idempotency-Key: slow-1\r\nContent-Type: application/offset+octet-stream\r\n"
                  "Content-Length: 100\r\n\r\n").encode() + b"x" * 10)
    await writer.drain()
    await asyncio.sleep(0.3)
    h = dict(OCTET, **{"Upload-Length": "100", "Idempotency-Key": "slow-1"})
    async with http.post(gateway.files, data=b"x" * 100, headers=h) as resp:
        assert resp.status == 409
        assert resp.headers["Retry-After"]
    writer.write(b"x" * 90)
    await writer.drain()
    line = await reader.readline()
    assert b"201" in line
    writer.close()
    async with http.post(gateway.files, data=b"x" * 100, headers=h) as resp:
        assert resp.status == 201 and resp.headers["Upload-Offset"] == "100"
    assert len(await r.keys("unggah:*:up:*")) == 1
