"""Every bad input gets the status the protocol names, a problem+json body that
says what was wrong, and changes nothing in the buffer."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path

import pytest

import orjson

from tests.conftest import OCTET, TUS, Gateway, GatewayProcess, create, make_settings, patch


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


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


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


async def raw_exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request written as bytes (headers no client library would send), one answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return int(lines[0].split()[1]), headers, body
    finally:
        writer.close()


@pytest.mark.parametrize("header", [b"Idempotency-Key: k\xff", b"X-HTTP-Method-Override: \xff",
                                    b"X-Anything: \xc3\x28"])
async def test_a_header_that_is_not_utf8_is_refused_clearly(gateway, r, header):
    before = await snapshot(r)
    status, headers, body = await raw_exchange(gateway.port, b"POST /files/ HTTP/1.1\r\nHost: x\r\n"
                                               b"Tus-Resumable: 1.0.0\r\nUpload-Length: 5\r\n" + header +
                                               b"\r\nContent-Length: 0\r\n\r\n")
    assert status == 400 and headers["content-type"].startswith("application/problem+json")
    doc = orjson.loads(body)
    assert doc["reason"] == "bad-header" and "UTF-8" in doc["detail"]
    assert await snapshot(r) == before


async def test_a_token_that_is_not_utf8_is_refused_as_any_bad_token(tmp_path, valkey, r):
    gw = await Gateway(make_settings(tmp_path, valkey.url, auth="tokens")).start()
    try:
        status, headers, body = await raw_exchange(gw.port, b"GET /files/0-abc/status HTTP/1.1\r\nHost: x\r\n"
                                                   b"Tus-Resumable: 1.0.0\r\nAuthorization: Bearer ung_\xff\r\n\r\n")
        assert status == 400
    finally:
        await gw.stop()


async def test_only_a_plain_request_id_is_echoed(gateway):
    _, headers, _ = await raw_exchange(gateway.port, b"OPTIONS /files/ HTTP/1.1\r\nHost: x\r\n"
                                       b"X-Request-Id: trace-1234.abc\r\n\r\n")
    assert headers["x-request-id"] == "trace-1234.abc"
    _, headers, _ = await raw_exchange(gateway.port, b"OPTIONS /files/ HTTP/1.1\r\nHost: x\r\n"
                                       b"X-Request-Id: <script>\r\n\r\n")
    assert headers["x-request-id"] != "<script>" and len(headers["x-request-id"]) == 16


def test_a_log_line_survives_text_that_is_not_utf8():
    """aiohttp hands a header's bytes that are not UTF-8 on as surrogates; the line that reports
    the request must still be written, with those bytes shown escaped."""
    import logging

    from unggah.logs import JsonFormatter
    record = logging.LogRecord("unggah.gateway", logging.INFO, __file__, 1, "request refused", None, None)
    record.method = "\udcff"
    line = orjson.loads(JsonFormatter().format(record))
    assert line["msg"] == "request refused" and line["method"] == "\\udcff"


async def test_malformed_http_is_one_info_line_not_an_error_with_a_traceback(settings):
    """A real `unggah serve`: malformed requests (anyone can send them) must not flood its log
    with error-level tracebacks."""
    gw = await GatewayProcess(settings).wait_ready()
    try:
        for request in (b"GET /files/ HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
                        b"POST /files/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"):
            status, _, _ = await raw_exchange(gw.port, request)
            assert status == 400
    finally:
        gw.stop()
    lines = [orjson.loads(line) for line in (Path(settings.state_dir) / "gateway.log").read_bytes().splitlines()
             if line.startswith(b"{")]
    refused = [line for line in lines if line["msg"] == "malformed HTTP request refused"]
    assert len(refused) == 2 and all(line["level"] == "info" and "exc" not in line for line in refused)
    assert not [line for line in lines if line["level"] == "error"]


@pytest.mark.parametrize("declared", [hashlib.sha256(b"hello").hexdigest().upper(),
                                      base64.b64encode(hashlib.sha256(b"hello").digest()).decode()],
                         ids=["hex", "base64"])
async def test_a_well_formed_declared_sha256_is_accepted_at_creation(gateway, http, declared):
    meta = "sha256 " + b64(declared.encode())
    async with http.post(gateway.files, headers=dict(TUS, **{"Upload-Length": "5", "Upload-Metadata": meta})) as resp:
        assert resp.status == 201
