"""A connection waiting for its turn holds a few KiB in the gateway, not a whole chunk
(gateway/reads.py), and what it sends arrives byte for byte."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time

import pytest
from aiohttp import web

from gateway import reads
from unggah.config import ConfigError, load

KiB = 1024
READ_BUFSIZE = 16 * KiB
BODY = os.urandom(1024 * KiB)


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
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    listener = await reads.listen(runner, "127.0.0.1", 0, read_chunk_bytes)
    port = listener.sockets[0].getsockname()[1]
    answer: list[bytes] = []

    def client() -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)
            answer.append(s.recv(4096))

    sender = threading.Thread(target=client)
    sender.start()
    try:
        # Hold the loop, as a busy gateway does, so the socket fills up before it is read.
        time.sleep(0.3)
        await asyncio.sleep(0.3)  # let the loop read what it will (and pause the connection)
        turn.set()
        await asyncio.to_thread(sender.join, 10)
    finally:
        listener.close()
        await runner.cleanup()
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


@pytest.mark.parametrize("value", ["-1", "100"])
def test_a_read_chunk_below_1024_is_refused_with_the_setting_named(value):
    with pytest.raises(ConfigError, match="read_chunk_bytes"):
        load(env={"UNGGAH_READ_CHUNK_BYTES": value})
