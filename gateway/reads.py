"""How much of a request body the gateway takes off a socket at once.

The event loop reads up to 256,000 bytes (uvloop; asyncio 256 KiB) from each readable
socket per turn and hands them to aiohttp whole; aiohttp pauses a connection only once
its buffer is past twice `read_bufsize`. So a connection waiting for its turn in
admission held a whole chunk in the process, not the few KiB `read_buffer_bytes`
promises, and with thousands of connections near the deadline that is hundreds of MB.

Reading through a buffer of our own (asyncio.BufferedProtocol) caps each read at
`read_chunk_bytes`: a waiting connection then holds at most 2 x read_bufsize plus one read,
and the rest of its body stays in the kernel under TCP flow control until its turn.

A refused request's body is the exception: the client sends it anyway (tus clients do not
wait for 100-continue), and aiohttp reads and drops it to keep the connection. Small reads
made that cost as much as the refusal itself, so such a body is read in large pieces
(`drain_refused_body`), by a bounded number of connections at once (`Drains`).
"""

from __future__ import annotations

import asyncio

from aiohttp import web


class Drains:
    """What the connections of one listener share to drop refused bodies: a large buffer, and
    how many of them may be reading into it. Each large read is handed to aiohttp whole and
    held until its lingering read drops it, so the count bounds that memory (`limit` x
    `len(view)`) however many requests are refused at once; the others drain in small reads."""

    def __init__(self, read_bytes: int, limit: int) -> None:
        self.view = memoryview(bytearray(read_bytes))
        self.limit = limit
        self.active = 0


class BoundedReads(asyncio.BufferedProtocol):
    """aiohttp's protocol for one connection, fed at most len(buffer) bytes per read.

    The buffers are shared by every connection of a listener: the loop fills one and calls
    buffer_updated before it reads any other socket, and the bytes are copied out there."""

    __slots__ = ("inner", "view", "drains", "draining", "_last")

    def __init__(self, inner: asyncio.Protocol, view: memoryview, drains: Drains) -> None:
        self.inner = inner
        self.view = view
        self.drains = drains
        self.draining = 0  # bytes of a refused body still to come, read in large pieces
        self._last = view

    def drain(self, nbytes: int) -> None:
        """Read the next `nbytes` (the rest of a refused body) in large pieces, if the
        listener's drains allow one more."""
        if nbytes > 0 and not self.draining and self.drains.active < self.drains.limit:
            self.drains.active += 1
            self.draining = nbytes

    def _drained(self) -> None:
        self.draining = 0
        self.drains.active -= 1

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.draining:
            # No further than the refused body: what follows it is the next request's.
            self._last = self.drains.view[:self.draining]
        else:
            self._last = self.view
        return self._last

    def buffer_updated(self, nbytes: int) -> None:
        if self.draining:
            self.draining -= nbytes
            if self.draining <= 0:
                self._drained()
        self.inner.data_received(bytes(self._last[:nbytes]))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.draining:
            self._drained()
        self.inner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


# A refused body is read in pieces of this size, by at most DRAINS_AT_ONCE connections of a
# listener at a time (4 MiB held at most); see Drains.
DRAIN_READ_BYTES = 256 * 1024
DRAINS_AT_ONCE = 16


async def drain_refused_body(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: an answer other than success to a request whose body is not read
    yet means aiohttp will read it only to drop it. Let its connection read the rest in large
    pieces."""
    if response.status < 300 or not request.body_exists or request.content.is_eof():
        return
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    if isinstance(protocol, BoundedReads):
        # What is still to come: then reads are small again, so the next request on this
        # connection waits for its turn holding a few KiB, as any other. A chunked body has no
        # length: one large read, then small ones.
        length = request.content_length
        protocol.drain(length - request.content.total_bytes if length else DRAIN_READ_BYTES)


async def listen(runner: web.AppRunner, host: str, port: int, read_chunk_bytes: int) -> asyncio.AbstractServer:
    """Serve `runner`'s app on host:port; `read_chunk_bytes` 0 leaves reads to the loop.

    Stands in for web.TCPSite (same backlog), so the caller closes the listener itself
    before runner.cleanup()."""
    server = runner.server
    assert server is not None, "runner.setup() first"
    if read_chunk_bytes > 0:
        view = memoryview(bytearray(read_chunk_bytes))
        drains = Drains(max(read_chunk_bytes, DRAIN_READ_BYTES), DRAINS_AT_ONCE)

        def factory() -> asyncio.BaseProtocol:
            return BoundedReads(server(), view, drains)
    else:
        factory = server
    return await asyncio.get_running_loop().create_server(factory, host, port, backlog=128)
