"""Every bad input gets the status the protocol names, a problem+json body that
says what was wrong, and changes nothing in the buffer."""

from __future__ import annotations

import asyncio
import base64
import hashlib

import pytest

from tests.conftest import OCTET, TUS, create, patch


async def snapshot(r) -> dict:
    """Every key with its full contents: the buffer as a value we can compare."""
    out = {}
    for key in sorted(await r.keys("*")):
        if key.endswith(b":audit"):
            continue  # the audit trail records refusals; it is not the buffer
        t = (await r.type(key)).decode()
        if t == "hash":
            out[key] = await r.hgetall(key)
        elif t == "stream":
            out[key] = await r.xrange(key)
        elif t == "string":
            out[key] = await r.get(key)
        else:
            out[key] = t
    return out


async def expect_problem(resp, status: int, reason: str | None = None):
    body = await resp.read()
    assert resp.status == status, body
    assert resp.headers["Content-Type"].startswith("application/problem+json"), resp.headers
    import orjson
    doc = orjson.loads(body)
    assert doc["status"] == status and doc["detail"]
    if reason:
        assert doc["reason"] == reason, doc
    return doc


@pytest.fixture
async def upload(gateway, http):
    url = await create(http, gateway, 10)
    assert (await patch(http, url, 0, b"abcd")).status == 204
    return url


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
    ("concat garbage", {"Upload-Length": "5", "Upload-Concat": "whole"}, 400, "bad-header"),
    ("final of unknown", {"Upload-Concat": "final;/files/0-00000000000000000000000000000000"}, 400, "bad-partial"),
    ("final with length", {"Upload-Length": "5", "Upload-Concat": "final;/files/x"}, 400, "bad-header"),
    ("long idempotency key", {"Upload-Length": "5", "Idempotency-Key": "k" * 300}, 400, "bad-header"),
]


@pytest.mark.parametrize("name,headers,status,reason", CREATE_CASES, ids=[c[0] for c in CREATE_CASES])
async def test_bad_creation(gateway, http, r, name, headers, status, reason):
    before = await snapshot(r)
    async with http.post(gateway.files, headers=dict(TUS, **headers)) as resp:
        await expect_problem(resp, status, reason)
    assert await snapshot(r) == before


async def test_creation_body_with_wrong_content_type(gateway, http, r):
    before = await snapshot(r)
    h = dict(TUS, **{"Upload-Length": "3", "Content-Type": "text/plain"})
    async with http.post(gateway.files, data=b"abc", headers=h) as resp:
        await expect_problem(resp, 415, "unsupported-media-type")
    assert await snapshot(r) == before


def _patch_cases():
    good = hashlib.sha1(b"efg").digest()
    return [
        ("wrong content type", {"Content-Type": "text/plain", "Upload-Offset": "4"}, b"efg", 415, "unsupported-media-type"),
        ("no offset", {"Upload-Offset": None}, b"efg", 400, "missing-offset"),
        ("negative offset", {"Upload-Offset": "-4"}, b"efg", 400, "bad-header"),
        ("non-numeric offset", {"Upload-Offset": "four"}, b"efg", 400, "bad-header"),
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
    before = await snapshot(r)
    h = dict(OCTET)
    for k, v in headers.items():
        if v is None:
            h.pop(k, None)
        else:
            h[k] = v
    async with http.patch(upload, data=body, headers=h) as resp:
        doc = await expect_problem(resp, status, reason)
        if status == 409:
            assert resp.headers["Upload-Offset"] == "4" and doc["offset"] == 4
    assert await snapshot(r) == before


async def test_unknown_upload_and_malformed_ids(gateway, http, r):
    before = await snapshot(r)
    for uid in ["0-" + "0" * 32, "nonsense", "99-" + "a" * 32, "0-" + "g" * 32, "..%2f..%2fetc"]:
        async with http.head(gateway.files + uid, headers=TUS) as resp:
            assert resp.status == 404
        async with http.patch(gateway.files + uid, data=b"x", headers=dict(OCTET, **{"Upload-Offset": "0"})) as resp:
            await expect_problem(resp, 404, "upload-not-found")
        async with http.delete(gateway.files + uid, headers=TUS) as resp:
            await expect_problem(resp, 404)
        async with http.get(gateway.files + uid + "/status") as resp:
            await expect_problem(resp, 404)
    assert await snapshot(r) == before


async def test_unknown_route_and_method(gateway, http, r):
    before = await snapshot(r)
    async with http.get(gateway.url + "/nowhere") as resp:
        await expect_problem(resp, 404, "not-found")
    async with http.put(gateway.files, headers=TUS) as resp:
        await expect_problem(resp, 405, "method-not-allowed")
    async with http.request("PROPFIND", gateway.files + "0-" + "0" * 32, headers=TUS) as resp:
        await expect_problem(resp, 405, "method-not-allowed")
    assert await snapshot(r) == before


async def test_oversized_headers_are_refused(gateway, http, r):
    before = await snapshot(r)
    async with http.post(gateway.files, headers=dict(TUS, **{"Upload-Length": "5", "Upload-Metadata": "a " + "Q" * 20000})) as resp:
        assert resp.status in (400, 431)
    assert await snapshot(r) == before


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
    from tests.conftest import create as _create  # noqa: F401
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
