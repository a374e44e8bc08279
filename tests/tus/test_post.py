"""POST: what we promise about creating an upload (creation, creation-with-upload, defer-length,
Idempotency-Key), and every bad creation refused with its reason, changing nothing."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import pytest

from tests.conftest import OCTET, TUS, Gateway, all_keys, create, head, make_settings, patch
from tests.tus.request import b64, expect_problem, headers_of, refused, snapshot


async def test_creation_with_upload(gateway, http):
    h = dict(OCTET, **{"Upload-Length": "6"})
    async with http.post(gateway.files, data=b"abcdef", headers=h) as resp:
        assert resp.status == 201
        assert resp.headers["Upload-Offset"] == "6"
        url = resp.headers["Location"]
    assert (await head(http, url)).headers["Upload-Offset"] == "6"


async def test_defer_length(gateway, http):
    url = await create(http, gateway, None, Upload_Defer_Length="1")
    resp = await head(http, url)
    assert resp.headers["Upload-Defer-Length"] == "1" and "Upload-Length" not in resp.headers
    assert (await patch(http, url, 0, b"abc")).status == 204
    resp = await patch(http, url, 3, b"de", Upload_Length="5")
    assert resp.status == 204 and resp.headers["Upload-Offset"] == "5"
    resp = await head(http, url)
    assert resp.headers["Upload-Length"] == "5"
    # Once set, the length cannot change.
    assert (await patch(http, url, 5, b"", Upload_Length="6")).status == 400


CREATE_CASES = [
    ("no length", {}, 400, "missing-length"),
    ("negative length", {"Upload-Length": "-1"}, 400, "bad-header"),
    ("non-numeric length", {"Upload-Length": "ten"}, 400, "bad-header"),
    ("float length", {"Upload-Length": "1.5"}, 400, "bad-header"),
    ("huge length", {"Upload-Length": "99999999999999999999999"}, 400, "bad-header"),
    ("length and defer", {"Upload-Length": "5", "Upload-Defer-Length": "1"}, 400, "bad-header"),
    ("defer not 1", {"Upload-Defer-Length": "2"}, 400, "bad-header"),
    ("too large", {"Upload-Length": str(2**40)}, 413, "upload-too-large"),
    ("metadata not base64", {"Upload-Length": "5", "Upload-Metadata": "filename %%%"}, 400, "bad-header"),
    ("metadata key with space", {"Upload-Length": "5", "Upload-Metadata": "a b c"}, 400, "bad-header"),
    ("metadata repeated key", {"Upload-Length": "5", "Upload-Metadata": "a YQ==,a Yg=="}, 400, "bad-header"),
    # A declared checksum that cannot be one fails at creation, not after the last byte.
    ("sha256 not hex nor base64", {"Upload-Length": "5", "Upload-Metadata": "sha256 " + b64(b"xyz" * 22)}, 400,
     "bad-header"),
    ("sha256 of 31 bytes", {"Upload-Length": "5", "Upload-Metadata": "sha256 " + b64(b64(bytes(31)).encode())}, 400,
     "bad-header"),
    ("sha256 hex of 63 digits", {"Upload-Length": "5", "Upload-Metadata": "sha256 " + b64(b"a" * 63)}, 400,
     "bad-header"),
    ("checksum sha256 not base64", {"Upload-Length": "5", "Upload-Metadata": "checksum " + b64(b"sha256 %%%")}, 400,
     "bad-header"),
    ("concat garbage", {"Upload-Length": "5", "Upload-Concat": "whole"}, 400, "bad-header"),
    ("final of unknown", {"Upload-Concat": "final;/files/0-00000000000000000000000000000000"}, 400, "bad-partial"),
    ("final with length", {"Upload-Length": "5", "Upload-Concat": "final;/files/x"}, 400, "bad-header"),
    ("long idempotency key", {"Upload-Length": "5", "Idempotency-Key": "k" * 300}, 400, "bad-header"),
    ("final of something not a URL", {"Upload-Concat": "final;http://[::1/files/a"}, 400, "bad-header"),
]


@pytest.mark.parametrize("name,headers,status,reason", CREATE_CASES, ids=[c[0] for c in CREATE_CASES])
async def test_bad_creation(gateway, http, r, name, headers, status, reason):
    await refused(http, r, "POST", gateway.files, headers_of(TUS, headers), b"", status, reason)


async def test_creation_body_with_wrong_content_type(gateway, http, r):
    before = await snapshot(r)
    h = dict(TUS, **{"Upload-Length": "3", "Content-Type": "text/plain"})
    async with http.post(gateway.files, data=b"abc", headers=h) as resp:
        await expect_problem(resp, 415, "unsupported-media-type")
    assert await snapshot(r) == before


async def test_creation_with_a_body_that_would_be_refused_creates_nothing(gateway, http, r):
    """A creation-with-upload whose body cannot be taken (too long for its Upload-Length, or a
    malformed Upload-Checksum) is refused before the upload exists."""
    before = await snapshot(r)
    h = dict(OCTET, **{"Upload-Length": "3"})
    h.pop("Upload-Offset", None)
    async with http.post(gateway.files, data=b"abcdef", headers=h) as resp:
        await expect_problem(resp, 413, "exceeds-length")
        assert "Location" not in resp.headers
    async with http.post(gateway.files, data=b"abc", headers=dict(h, **{"Upload-Checksum": "zz AAAA"})) as resp:
        await expect_problem(resp, 400, "bad-header")
        assert "Location" not in resp.headers
    assert await snapshot(r) == before


async def test_a_deferred_length_upload_cannot_outgrow_the_maximum(tmp_path, valkey, r, http):
    settings = make_settings(tmp_path, valkey.url, max_upload_bytes=100_000)
    gw = await Gateway(settings).start()
    try:
        url = await create(http, gw, None, Upload_Defer_Length="1")
        before = await snapshot(r)
        async with http.patch(url, data=b"x" * 120_000, headers=dict(OCTET, **{"Upload-Offset": "0"})) as resp:
            await expect_problem(resp, 413, "upload-too-large")
        assert await snapshot(r) == before
        assert (await patch(http, url, 0, b"x" * 100_000)).status == 204
    finally:
        await gw.stop()


@pytest.mark.parametrize("declared", [hashlib.sha256(b"hello").hexdigest().upper(),
                                      base64.b64encode(hashlib.sha256(b"hello").digest()).decode()],
                         ids=["hex", "base64"])
async def test_a_well_formed_declared_sha256_is_accepted_at_creation(gateway, http, declared):
    meta = "sha256 " + b64(declared.encode())
    async with http.post(gateway.files, headers=dict(TUS, **{"Upload-Length": "5", "Upload-Metadata": meta})) as resp:
        assert resp.status == 201


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
    uploads = [k for k in await all_keys(r, "unggah:*:up:*")]
    assert len(uploads) == 1


async def test_idempotency_key_with_a_different_request_is_422(gateway, http, r):
    h = dict(TUS, **{"Upload-Length": "5", "Idempotency-Key": "k1"})
    async with http.post(gateway.files, headers=h) as resp:
        assert resp.status == 201
    h["Upload-Length"] = "6"
    async with http.post(gateway.files, headers=h) as resp:
        assert resp.status == 422
        assert (await resp.json())["reason"] == "idempotency-key-reused"
    assert len(await all_keys(r, "unggah:*:up:*")) == 1


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
    assert len(await all_keys(r, "unggah:*:up:*")) == 1
