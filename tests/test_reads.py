"""A connection waiting for its turn holds a few KiB in the gateway, not a whole chunk
(gateway/reads.py), and what it sends arrives byte for byte. A refused request's body is
dropped in large reads, and the connection then serves the next request as any other."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import threading
import time
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web

from buffer import keys
from gateway import reads
from gateway.app import TUS as TUS_HANDLER
from tests.conftest import Gateway, create, make_settings
from unggah.config import ConfigError, load

KiB = 1024
READ_BUFSIZE = 16 * KiB
BODY = os.urandom(1024 * KiB)


@contextlib.asynccontextmanager
async def served(app: web.Application, read_chunk_bytes: int):
    """`app` on the gateway's listener (gateway/reads.py) on a free port: yields the port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    listener = await reads.listen(runner, "127.0.0.1", 0, read_chunk_bytes)
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        listener.close()
        await runner.cleanup()


async def held_while_waiting(read_chunk_bytes: int) -> tuple[int, str]:
    """Body bytes the process held for a request whose handler had not read yet, and the
    sha256 of what the handler then read."""
    held: dict[str, int] = {}
    turn = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        await turn.wait()  # waiting for its turn, as in admission
        held["bytes"] = request.content.total_bytes
        return web.Response(text=hashlib.sha256(await request.read()).hexdigest())

    app = web.Application(client_max_size=len(BODY) + 1, handler_args={"read_bufsize": READ_BUFSIZE})
    app.router.add_post("/", handler)
    answer: list[bytes] = []
    async with served(app, read_chunk_bytes) as port:
        def client() -> None:
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)
                answer.append(s.recv(4096))

        sender = threading.Thread(target=client)
        sender.start()
        # Hold the loop, as a busy gateway does, so the socket fills up before it is read.
        time.sleep(0.3)
        await asyncio.sleep(0.3)  # let the loop read what it will (and pause the connection)
        turn.set()
        await asyncio.to_thread(sender.join, 10)
    head, _, digest = answer[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return held["bytes"], digest.decode()


async def test_a_waiting_request_holds_a_few_reads_not_its_whole_body():
    held, digest = await held_while_waiting(16 * KiB)
    # aiohttp pauses the connection once it holds more than 2 x read_bufsize: one read past that at most.
    assert held <= 2 * READ_BUFSIZE + 16 * KiB, f"held {held} bytes of a waiting body"
    assert digest == hashlib.sha256(BODY).hexdigest()


async def test_without_the_cap_the_loop_hands_over_more_than_that():
    # The contrast that shows the first test can fail: the loop's own read size.
    held, digest = await held_while_waiting(0)
    assert held > 2 * READ_BUFSIZE + 16 * KiB
    assert digest == hashlib.sha256(BODY).hexdigest()


class CountedReads(reads.BoundedReads):
    """The gateway's protocol, noting the size of every read it is given."""

    __slots__ = ("sizes",)

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.sizes: list[int] = []

    def buffer_updated(self, nbytes: int) -> None:
        self.sizes.append(nbytes)
        super().buffer_updated(nbytes)


async def refused_then_served(drain: bool) -> tuple[list[int], int, bytes, bytes]:
    """On one keep-alive connection: a POST refused unread (503), then a POST that waits for
    its turn and is read. The reads of the refused body, the bytes the second request held
    while waiting, and both answers' heads (the second's with its body's sha256)."""
    turn = asyncio.Event()
    held: dict[str, int] = {}

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=503, headers={"Retry-After": "1"})

    async def echo(request: web.Request) -> web.Response:
        await turn.wait()
        held["bytes"] = request.content.total_bytes
        return web.Response(text=hashlib.sha256(await request.read()).hexdigest())

    app = web.Application(client_max_size=len(BODY) + 1, handler_args={"read_bufsize": READ_BUFSIZE})
    app.router.add_post("/refuse", refuse)
    app.router.add_post("/echo", echo)
    if drain:
        app.on_response_prepare.append(reads.drain_refused_body)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    view, drains = memoryview(bytearray(16 * KiB)), reads.Drains(reads.DRAIN_READ_BYTES, reads.DRAINS_AT_ONCE)
    protocols: list[CountedReads] = []

    def factory() -> CountedReads:
        protocols.append(CountedReads(runner.server(), view, drains))
        return protocols[-1]

    listener = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    requests = [b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (path, len(BODY)) + BODY
                for path in (b"/refuse", b"/echo")]
    heads: list[bytes] = []

    def client() -> None:
        with socket.create_connection(("127.0.0.1", port)) as s, s.makefile("rb") as f:
            for request in requests:
                s.sendall(request)
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    head += f.readline()
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                heads.append(head + f.read(length))

    sender = threading.Thread(target=client)
    sender.start()
    try:
        # The second request's body fills the socket while its handler waits for its turn.
        for _ in range(200):
            if len(heads) == 1:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        turn.set()
        await asyncio.to_thread(sender.join, 10)
    finally:
        listener.close()
        await runner.cleanup()
    assert len(protocols) == 1, "the refusal closed the connection"
    refused_reads, got = [], 0
    for size in protocols[0].sizes:  # the reads that carried the first request
        if got >= len(requests[0]):
            break
        refused_reads.append(size)
        got += size
    return refused_reads, held["bytes"], heads[0], heads[1]


async def test_a_refused_body_is_dropped_in_large_reads_and_the_connection_serves_the_next_request():
    refused_reads, held, refused, served = await refused_then_served(drain=True)
    assert refused.startswith(b"HTTP/1.1 503")
    assert served.startswith(b"HTTP/1.1 200") and served.endswith(hashlib.sha256(BODY).hexdigest().encode())
    # Most of the refused megabyte came in reads of up to 256 KiB, not 16 KiB ones.
    assert max(refused_reads) > 64 * KiB, refused_reads
    assert len(refused_reads) < len(BODY) // (64 * KiB), refused_reads
    # Then reads were small again: the next request held no more than any waiting one.
    assert held <= 2 * READ_BUFSIZE + 16 * KiB, f"held {held} bytes of a waiting body"


async def test_without_the_drain_a_refused_body_comes_in_small_reads():
    # The contrast that shows the test above can fail.
    refused_reads, _, refused, served = await refused_then_served(drain=False)
    assert refused.startswith(b"HTTP/1.1 503") and served.startswith(b"HTTP/1.1 200")
    assert max(refused_reads) <= 16 * KiB


@pytest.mark.parametrize("value", ["-1", "100"])
def test_a_read_chunk_below_1024_is_refused_with_the_setting_named(value):
    with pytest.raises(ConfigError, match="read_chunk_bytes"):
        load(env={"UNGGAH_READ_CHUNK_BYTES": value})


class Received(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()

    def data_received(self, data: bytes) -> None:
        self.data += data


def test_only_so_many_connections_drain_in_large_reads_at_once():
    """Each large read is held until aiohttp drops it: the listener bounds how many
    connections read that way at once, and a connection gives its place back when its refused
    body is in, or when it is gone."""
    drains = reads.Drains(256 * KiB, limit=1)
    view = memoryview(bytearray(16 * KiB))
    first, second = (reads.BoundedReads(Received(), view, drains) for _ in range(2))
    first.drain(300 * KiB)
    second.drain(300 * KiB)
    assert len(first.get_buffer(-1)) == 256 * KiB and len(second.get_buffer(-1)) == 16 * KiB

    def receive(protocol: reads.BoundedReads, nbytes: int) -> None:
        buffer = protocol.get_buffer(-1)
        buffer[:nbytes] = os.urandom(nbytes)
        protocol.buffer_updated(nbytes)

    receive(first, 256 * KiB)
    assert len(first.get_buffer(-1)) == 44 * KiB  # no further than the refused body
    receive(first, 44 * KiB)
    assert len(first.get_buffer(-1)) == 16 * KiB and drains.active == 0  # the body is in: the place is free
    assert len(first.inner.data) == 300 * KiB
    second.drain(100 * KiB)
    assert len(second.get_buffer(-1)) == 100 * KiB
    second.connection_lost(None)
    assert drains.active == 0


async def test_the_gateway_drops_refused_chunks_and_keeps_serving_the_connection(tmp_path, valkey, r):
    """Buffer full: every PATCH is refused on arrival with its 256 KiB chunk unread. The gateway
    has the drain installed, answers each with Retry-After, drops the chunks and goes on to the
    next request on the same connection."""
    gw = await Gateway(make_settings(tmp_path, valkey.url)).start()
    try:
        assert reads.drain_refused_body in gw.app.on_response_prepare
        async with aiohttp.ClientSession() as http:
            path = urlsplit(await create(http, gw, 1 << 20)).path
        for p in range(gw.settings.partitions):
            await r.set(keys.buffered_bytes(p), 1 << 40)
        watch = gw.app[TUS_HANDLER].admission.buffer
        deadline = time.monotonic() + 5
        while watch.fill < watch.budget:
            assert time.monotonic() < deadline, "the gateway never saw the buffer full"
            await asyncio.sleep(0.05)
        chunk = os.urandom(256 * KiB)
        patch = (f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
                 "Content-Type: application/offset+octet-stream\r\n"
                 f"Content-Length: {len(chunk)}\r\n\r\n").encode() + chunk
        head = f"HEAD {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n\r\n".encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            for _ in range(3):
                writer.write(patch)
                answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After:" in answer, answer
                length = int(answer.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
                await reader.readexactly(length)
            writer.write(head)
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert answer.startswith(b"HTTP/1.1 200") and b"Upload-Offset: 0\r\n" in answer, answer
        finally:
            writer.close()
    finally:
        await gw.stop()


async def read_ahead_after_a_piece(read_piece) -> tuple[int, int]:
    """The body's read-ahead limits (aiohttp's low and high water) once `read_piece(request,
    1 MiB)` has read the first piece of a 3 MiB body: what the request then holds in the
    process while it waits for its next turn."""
    limits: list[tuple[int, int]] = []

    async def handler(request: web.Request) -> web.Response:
        await read_piece(request, 1024 * KiB)
        limits.append(request.content.get_read_buffer_limits())
        await request.read()
        return web.Response()

    app = web.Application(client_max_size=4 << 20, handler_args={"read_bufsize": READ_BUFSIZE})
    app.router.add_post("/", handler)
    async with served(app, 16 * KiB) as port, aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{port}/", data=os.urandom(3 << 20)) as resp:
            assert resp.status == 200
    return limits[0]


async def test_a_patch_waiting_for_its_next_piece_holds_a_few_reads_not_a_piece(tmp_path, valkey, r):
    """aiohttp's read(n) raises a body's read-ahead to 2 x n for the rest of the request; read in
    pieces of entry_bytes, every PATCH between two turns would hold 2 MiB in the gateway."""
    gw = await Gateway(make_settings(tmp_path, valkey.url, read_buffer_bytes=READ_BUFSIZE)).start()
    try:
        low, high = await read_ahead_after_a_piece(gw.app[TUS_HANDLER]._read_piece)
    finally:
        await gw.stop()
    assert (low, high) == (READ_BUFSIZE, 2 * READ_BUFSIZE)


async def test_one_read_of_a_whole_piece_would_raise_the_read_ahead_to_twice_the_piece():
    # The contrast that shows the test above can fail: aiohttp's behaviour it guards against.
    async def read_at_once(request: web.Request, want: int) -> bytes:
        return await request.content.read(want)

    low, high = await read_ahead_after_a_piece(read_at_once)
    assert high == 2 * 1024 * KiB
