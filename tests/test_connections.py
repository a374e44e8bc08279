"""What comes before a request: the HTTP parser's own errors answer as problem+json, a
request head must come in time, idle connections are closed, and connections without a
valid token are bounded (gateway/reads.py)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from buffer.tenants import TenantStore
from tests.conftest import Gateway, make_settings


async def raw(gw: Gateway, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `data` on a new connection and read the answer (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 10)
        return status, headers, body
    finally:
        writer.close()


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Seconds until the server closes the connection (EOF); fails after `seconds`."""
    t0 = time.monotonic()
    while await asyncio.wait_for(reader.read(1024), seconds):
        pass
    return time.monotonic() - t0


@pytest.fixture
async def gw(tmp_path, valkey, r):
    g = await Gateway(make_settings(tmp_path, valkey.url, max_header_bytes=4096)).start()
    yield g
    await g.stop()


@pytest.mark.parametrize("request_bytes, status, reason", [
    (b"POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 5\r\n"
     b"Upload-Metadata: filename " + b"QUFB" * 25_000 + b"\r\n\r\n", 431, "headers-too-large"),
    (b"GET /files/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431, "headers-too-large"),
    (b"POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 5\r\n"
     b"Content-Length: abc\r\n\r\n", 400, "bad-content-length"),
    (b"POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 5\r\n"
     b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", None, None),
    (b"NOT-HTTP\r\n\r\n", 400, "bad-request"),
])
async def test_the_http_parsers_own_errors_are_problems_that_say_what_was_wrong_and_change_nothing(
        gw, r, request_bytes, status, reason):
    before = await r.dbsize()
    got, headers, body = await raw(gw, request_bytes)
    if status is None:  # a bad chunk size: the parser's, or the app's body error; either way a 4xx problem
        assert 400 <= got < 500, (got, body[:200])
    else:
        assert got == status, (got, body[:200])
    assert headers["content-type"].startswith("application/problem+json"), headers
    problem = json.loads(body)
    assert problem["detail"], problem
    if reason:
        assert problem["reason"] == reason == headers["unggah-reason"]
        assert "nothing was changed" in problem["detail"]
    assert await r.dbsize() == before, "a refused request changed something"


async def test_options_advertises_the_longest_header_the_gateway_reads(gw, http):
    async with http.options(gw.files) as resp:
        assert resp.headers["Unggah-Max-Header-Bytes"] == "4096"


async def test_a_request_head_that_trickles_in_is_cut_at_the_header_timeout(tmp_path, valkey, r):
    gw = await Gateway(make_settings(tmp_path, valkey.url, header_timeout_seconds=1.0)).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"POST /files/ HTTP/1.1\r\nHost: x\r\n")

        async def trickle():
            for i in range(40):
                await asyncio.sleep(0.2)
                writer.write(f"X-Slow-{i}: a\r\n".encode())

        t = asyncio.create_task(trickle())
        took = await closed_within(reader, 5)
        t.cancel()
        assert took < 2.5, f"a trickled head was held {took:.1f} s"
        writer.close()
    finally:
        await gw.stop()


async def test_an_idle_connection_is_closed_after_the_idle_timeout_and_a_busy_one_is_not(tmp_path, valkey, http):
    gw = await Gateway(make_settings(tmp_path, valkey.url, idle_timeout_seconds=1.0)).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        took = await closed_within(reader, 5)
        assert took < 2.5, f"an idle connection was held {took:.1f} s"
        writer.close()
        # A connection that keeps sending requests stays open across the timeout.
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        for _ in range(6):
            writer.write(b"OPTIONS /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n\r\n")
            await writer.drain()
            assert b" 204 " in await asyncio.wait_for(reader.readline(), 5)
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            await asyncio.sleep(0.4)
        writer.close()
    finally:
        await gw.stop()


async def test_connections_without_a_valid_token_are_bounded_and_a_token_frees_its_place(tmp_path, valkey, r):
    settings = make_settings(tmp_path, valkey.url, auth="tokens", max_unauthenticated_connections=5)
    store = TenantStore(r)
    await store.add("pair-a", "Paslon A")
    token, _ = await store.issue("pair-a", "op")
    gw = await Gateway(settings).start()
    held = []
    try:
        for _ in range(5):
            held.append(await asyncio.open_connection("127.0.0.1", gw.port))
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        assert await closed_within(reader, 2) < 1, "a sixth tokenless connection was kept"
        writer.close()
        # One of the five shows a valid token: its place is free for a newcomer.
        r0, w0 = held[0]
        w0.write((f"HEAD /files/nope HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
                  f"Authorization: Bearer {token}\r\n\r\n").encode())
        await w0.drain()
        assert b" 404 " in await asyncio.wait_for(r0.readline(), 5)
        status, _, _ = await raw(gw, b"OPTIONS /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n\r\n")
        assert status == 204
    finally:
        for _, w in held:
            w.close()
        await gw.stop()


async def test_a_wrong_setting_for_the_doors_is_refused_with_its_name(tmp_path):
    from unggah.config import ConfigError, load
    with pytest.raises(ConfigError, match="max_header_bytes"):
        load(env={"UNGGAH_MAX_HEADER_BYTES": "10"})
    with pytest.raises(ConfigError, match="idle_timeout_seconds"):
        load(env={"UNGGAH_IDLE_TIMEOUT_SECONDS": "0"})
