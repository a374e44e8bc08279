"""How much of a request body the gateway takes off a socket at once.

The event loop reads up to 256,000 bytes (uvloop; asyncio 256 KiB) from each readable
socket per turn and hands them to aiohttp whole; aiohttp pauses a connection only once
its buffer is past twice `read_bufsize`. So a connection waiting for its turn in
admission held a whole chunk in the process, not the few KiB `read_buffer_bytes`
promises, and with thousands of connections near the deadline that is hundreds of MB.

Reading through a buffer of our own (asyncio.BufferedProtocol) caps each read at
`read_chunk_bytes`: a waiting connection then holds at most 2 x read_bufsize plus one read,
and the rest of its body stays in the kernel under TCP flow control until its turn.
"""

from __future__ import annotations

import asyncio

from aiohttp import web


class BoundedReads(asyncio.BufferedProtocol):
    """aiohttp's protocol for one connection, fed at most len(buffer) bytes per read.

    The buffer is shared by every connection of a listener: the loop fills it and calls
    buffer_updated before it reads any other socket, and the bytes are copied out there."""

    __slots__ = ("inner", "view")

    def __init__(self, inner: asyncio.Protocol, view: memoryview) -> None:
        self.inner = inner
        self.view = view

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        self.inner.data_received(bytes(self.view[:nbytes]))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


async def listen(runner: web.AppRunner, host: str, port: int, read_chunk_bytes: int) -> asyncio.AbstractServer:
    """Serve `runner`'s app on host:port; `read_chunk_bytes` 0 leaves reads to the loop.

    Stands in for web.TCPSite (same backlog), so the caller closes the listener itself
    before runner.cleanup()."""
    server = runner.server
    assert server is not None, "runner.setup() first"
    if read_chunk_bytes > 0:
        view = memoryview(bytearray(read_chunk_bytes))

        def factory() -> asyncio.BaseProtocol:
            return BoundedReads(server(), view)
    else:
        factory = server
    return await asyncio.get_running_loop().create_server(factory, host, port, backlog=128)
