"""Every bad input gets the status the protocol names, a problem+json body that
says what was wrong, and changes nothing in the buffer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from tests.conftest import TUS, Gateway, GatewayProcess, make_settings
from tests.tus.request import expect_problem, snapshot


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
