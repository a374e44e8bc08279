"""PATCH: what we promise about appending (offsets, checksums, expiry, bounded entries, replays
that append nothing), and every bad append refused with its reason, changing nothing."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import os
import time

import crc32c
import pytest

from buffer import keys
from tests.conftest import OCTET, create, head, patch
from tests.tus.request import b64, entries_bytes, expect_problem, headers_of, refused, snapshot


async def test_create_head_patch_roundtrip(gateway, http, r):
    url = await create(http, gateway, 10, Upload_Metadata="filename " + b64(b"daftar.csv"))
    upload_id = url.rsplit("/", 1)[1]
    p, token = upload_id.split("-")
    assert len(token) == 32 and int(p) < gateway.settings.partitions  # 128 random bits + partition
    resp = await head(http, url)
    assert resp.status == 200
    assert resp.headers["Upload-Offset"] == "0" and resp.headers["Upload-Length"] == "10"
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Upload-Metadata"] == "filename " + b64(b"daftar.csv")
    resp = await patch(http, url, 0, b"01234")
    assert resp.status == 204 and resp.headers["Upload-Offset"] == "5"
    resp = await patch(http, url, 5, b"56789")
    assert resp.status == 204 and resp.headers["Upload-Offset"] == "10"
    # The stream holds the two data entries (finalisation is queued once the ingesters stored them).
    entries = await r.xrange(keys.stream(int(p)))
    assert [e[1][b"k"] for e in entries] == [b"d", b"d"]
    assert b"".join(e[1][b"d"] for e in entries[:2]) == b"0123456789"
    assert int(await r.get(keys.buffered_bytes(int(p)))) == 10


async def test_expiration_header_and_expired_upload(gateway, http, r):
    url = await create(http, gateway, 10)
    resp = await head(http, url)
    expires = email.utils.parsedate_to_datetime(resp.headers["Upload-Expires"]).timestamp()
    assert abs(expires - (time.time() + gateway.settings.upload_ttl_seconds)) < 5
    upload_id = url.rsplit("/", 1)[1]
    await r.hset(keys.upload(int(upload_id.split("-")[0]), upload_id), "expires_at", int(time.time() * 1000) - 1)
    assert (await head(http, url)).status == 410
    assert (await patch(http, url, 0, b"abc")).status == 410


async def test_checksum_each_algorithm(gateway, http):
    data = os.urandom(1000)
    digests = {"sha1": hashlib.sha1(data).digest(), "sha256": hashlib.sha256(data).digest(),
               "md5": hashlib.md5(data).digest(), "crc32c": crc32c.crc32c(data).to_bytes(4, "big")}
    for algo, digest in digests.items():
        url = await create(http, gateway, 1000)
        resp = await patch(http, url, 0, data, Upload_Checksum=f"{algo} {b64(digest)}")
        assert resp.status == 204, algo
        bad = await create(http, gateway, 1000)
        resp = await patch(http, bad, 0, data[:-1] + b"!", Upload_Checksum=f"{algo} {b64(digest)}")
        assert resp.status == 460, algo
        assert (await head(http, bad)).headers["Upload-Offset"] == "0"


async def test_long_patch_is_committed_in_bounded_entries(gateway, http, r):
    size = 3 * gateway.settings.entry_bytes + 123
    data = os.urandom(size)
    url = await create(http, gateway, size)
    resp = await patch(http, url, 0, data)
    assert resp.status == 204 and resp.headers["Upload-Offset"] == str(size)
    p = int(url.rsplit("/", 1)[1].split("-")[0])
    entries = [e for e in await r.xrange(keys.stream(p)) if e[1][b"k"] == b"d"]
    assert len(entries) == 4
    assert max(len(e[1][b"d"]) for e in entries) <= gateway.settings.entry_bytes
    assert b"".join(e[1][b"d"] for e in entries) == data


def _patch_cases():
    good = hashlib.sha1(b"efg").digest()
    return [
        ("wrong content type", {"Content-Type": "text/plain", "Upload-Offset": "4"}, b"efg", 415, "unsupported-media-type"),
        ("no offset", {"Upload-Offset": None}, b"efg", 400, "missing-offset"),
        ("negative offset", {"Upload-Offset": "-4"}, b"efg", 400, "bad-header"),
        ("non-numeric offset", {"Upload-Offset": "four"}, b"efg", 400, "bad-header"),
        ("superscript digit offset", {"Upload-Offset": "\u00b2"}, b"efg", 400, "bad-header"),
        ("offset of 5000 digits", {"Upload-Offset": "4" * 5000}, b"efg", 400, "bad-header"),
        ("offset of 401 digits", {"Upload-Offset": "1" + "0" * 400}, b"efg", 400, "bad-header"),
        ("gzip body", {"Upload-Offset": "4", "Content-Encoding": "gzip"}, b"efg", 415, "encoded-body"),
        ("offset behind", {"Upload-Offset": "2"}, b"efg", 409, "offset-mismatch"),
        ("offset ahead", {"Upload-Offset": "5"}, b"efg", 409, "offset-mismatch"),
        ("offset past length", {"Upload-Offset": "11"}, b"e", 409, "offset-mismatch"),
        ("body past length", {"Upload-Offset": "4"}, b"efghijklmn", 413, "exceeds-length"),
        ("unknown checksum algorithm", {"Upload-Offset": "4", "Upload-Checksum": "sha3 AAAA"}, b"efg", 400, "bad-header"),
        ("checksum not base64", {"Upload-Offset": "4", "Upload-Checksum": "sha1 !!!"}, b"efg", 400, "bad-header"),
        ("checksum header malformed", {"Upload-Offset": "4", "Upload-Checksum": "sha1"}, b"efg", 400, "bad-header"),
        ("checksum mismatch", {"Upload-Offset": "4", "Upload-Checksum": "sha1 " + base64.b64encode(good).decode()},
         b"xyz", 460, "checksum-mismatch"),
        ("wrong tus version", {"Upload-Offset": "4", "Tus-Resumable": "2.0.0"}, b"efg", 412, "unsupported-tus-version"),
        ("length change", {"Upload-Offset": "4", "Upload-Length": "12"}, b"efg", 400, "length-fixed"),
    ]


@pytest.mark.parametrize("name,headers,body,status,reason", _patch_cases(), ids=[c[0] for c in _patch_cases()])
async def test_bad_patch(gateway, http, r, upload, name, headers, body, status, reason):
    doc, answer = await refused(http, r, "PATCH", upload, headers_of(OCTET, headers), body, status, reason)
    if status == 409:
        assert answer["Upload-Offset"] == "4" and doc["offset"] == 4


async def test_patch_after_completion(gateway, http, r):
    url = await create(http, gateway, 3)
    assert (await patch(http, url, 0, b"abc")).status == 204
    before = await snapshot(r)
    resp = await patch(http, url, 3, b"more")
    assert resp.status == 403
    assert await snapshot(r) == before


async def test_checksummed_patch_over_the_cap(gateway, http, r):
    cap = gateway.settings.checksum_patch_max_bytes
    url = await create(http, gateway, cap + 10)
    before = await snapshot(r)
    data = b"\0" * (cap + 1)
    digest = base64.b64encode(hashlib.sha1(data).digest()).decode()
    resp = await patch(http, url, 0, data, Upload_Checksum="sha1 " + digest)
    assert resp.status == 413
    assert await snapshot(r) == before


async def test_truncated_checksummed_body_stores_nothing(gateway, r):
    """A checksummed PATCH whose body stops early cannot be verified: nothing counts."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        url = await create(http, gateway, 100)
    before = await snapshot(r)
    path = url.split("127.0.0.1:" + str(gateway.port))[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    digest = base64.b64encode(hashlib.sha1(b"x" * 100).digest()).decode()
    writer.write((f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
                  f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
                  f"Upload-Checksum: sha1 {digest}\r\nContent-Length: 100\r\n\r\n").encode() + b"x" * 40)
    await writer.drain()
    writer.close()
    await asyncio.sleep(0.3)
    assert await snapshot(r) == before


async def test_a_body_longer_than_the_upload_is_refused_whole(gateway, http, r):
    """The body is known (Content-Length) to overrun the upload: none of it is taken, not the
    first entries of it before the refusal."""
    size = gateway.settings.entry_bytes * 3 // 2
    url = await create(http, gateway, size)
    before = await snapshot(r)
    async with http.patch(url, data=b"x" * (gateway.settings.entry_bytes * 2),
                          headers=dict(OCTET, **{"Upload-Offset": "0"})) as resp:
        await expect_problem(resp, 413, "exceeds-length")
    assert await snapshot(r) == before


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
    assert entries_bytes(await r.xrange(keys.stream(p))) == b"abcdef"


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
        assert entries_bytes(entries) == winner
        assert (await head(http, url)).headers["Upload-Offset"] == "65536"
