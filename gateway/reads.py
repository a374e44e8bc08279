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

The connection layer is also where what precedes any request is bounded (`Doors`): a
request head must be complete within `header_timeout_seconds` of its first byte, and only
`max_unauthenticated_connections` connections may be open that have not yet shown a valid
token; beyond that a new connection is closed at once. With aiohttp's keep-alive timeout
(`idle_timeout_seconds`) that keeps a crowd of idle, slow or tokenless connections from
holding the gateway. Errors of the HTTP parser itself (a header too large, a bad
Content-Length) are answered as problem+json like every other refusal (`ProblemHandler`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

import orjson
from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler

from gateway.problems import TUS_VERSION

log = logging.getLogger("unggah.reads")


class Drains:
    """What the connections of one listener share to drop refused bodies: a large buffer, and
    how many of them may be reading into it. Each large read is handed to aiohttp whole and
    held until its lingering read drops it, so the count bounds that memory (`limit` x
    `len(view)`) however many requests are refused at once; the others drain in small reads."""

    def __init__(self, read_bytes: int, limit: int) -> None:
        self.view = memoryview(bytearray(read_bytes))
        self.limit = limit
        self.active = 0


class Doors:
    """What the connections of one listener share to bound what comes before a request: how
    long a request head may take, and how many connections may be open without a valid token."""

    def __init__(self, header_timeout: float = 0, max_unproven: int = 1 << 30) -> None:
        self.header_timeout = header_timeout
        self.max_unproven = max_unproven
        self.unproven = 0
        self.turned_away = 0  # connections closed at once because too many were unproven


# After a parse error the rest of what the client sends is read and dropped this long before
# the connection is closed: closing with unread bytes makes the kernel reset the connection,
# and the client would lose the answer that says what was wrong.
LINGER_AFTER_ERROR = 2.0


class ProblemHandler(RequestHandler):
    """aiohttp's request handler, with its own parse errors answered as problem+json (reason,
    what was wrong, what to do) instead of text/plain. `after_parse_error` (set by the
    connection layer) is told, so that it drops what follows and closes the connection
    once the client has had time to read the answer."""

    after_parse_error: Callable[[], None] | None = None
    refused_by_parser = False

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status == 500 or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        text = str(exc or message or "")
        if isinstance(exc, http_exceptions.LineTooLong) or "too long" in text.lower() or "too many headers" in text.lower():
            status, reason = 431, "headers-too-large"
            detail = (f"a request line or header is longer than {self.max_field_size} bytes, or there are more than "
                      f"{self.max_headers} headers (Upload-Metadata counts: keep file names and metadata under "
                      "that, see Unggah-Max-Header-Bytes in the OPTIONS answer)")
        elif isinstance(exc, http_exceptions.ContentLengthError) or "content-length" in text.lower():
            reason, detail = "bad-content-length", "the Content-Length header is not a single non-negative number"
        elif isinstance(exc, http_exceptions.TransferEncodingError) or "chunk" in text.lower():
            reason, detail = "bad-chunked-encoding", "the chunked body is not valid chunked encoding"
        else:
            reason, detail = "bad-request", "the request is not valid HTTP/1.1"
        # One info line: anyone can send these, and they are the client's fault.
        log.info("malformed HTTP request refused", extra={"reason": reason, "error": text[:300]})
        body = {"type": f"https://unggah.invalid/problems/{reason}", "title": reason.replace("-", " "),
                "status": status, "reason": reason, "detail": f"{detail}; nothing was changed ({text[:200]})"}
        resp = web.Response(status=status, body=orjson.dumps(body), content_type="application/problem+json",
                            headers={"Tus-Resumable": TUS_VERSION, "Unggah-Reason": reason, "Cache-Control": "no-store"})
        resp.force_close()
        self.refused_by_parser = True
        if self.after_parse_error is not None:
            self.after_parse_error()  # what the client still sends is dropped from now on
        return resp

    async def finish_response(self, request, resp, start_time):
        """Once a parse error's answer is written, wait LINGER_AFTER_ERROR (what arrives is
        being dropped meanwhile) before aiohttp closes the connection: closed with bytes
        unread, it would be reset, and the client would lose the answer."""
        done = await super().finish_response(request, resp, start_time)
        if self.refused_by_parser:
            await asyncio.sleep(LINGER_AFTER_ERROR)
        return done


class BoundedReads(asyncio.BufferedProtocol):
    """aiohttp's protocol for one connection, fed at most len(buffer) bytes per read.

    The buffers are shared by every connection of a listener: the loop fills one and calls
    buffer_updated before it reads any other socket, and the bytes are copied out there.
    It also keeps the connection's doors (Doors): the head timer and whether the connection
    has shown a valid token yet."""

    __slots__ = ("inner", "view", "drains", "draining", "_last", "doors", "proven", "awaiting_head",
                 "_head_timer", "transport", "discarding")

    def __init__(self, inner: asyncio.Protocol, view: memoryview, drains: Drains, doors: Doors | None = None) -> None:
        self.inner = inner
        self.view = view
        self.drains = drains
        self.draining = 0  # bytes of a refused body still to come, read in large pieces
        self._last = view
        self.doors = doors or Doors()  # none: nothing before a request is bounded
        self.proven = False
        self.awaiting_head = True  # the next bytes start a request head
        self._head_timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.BaseTransport | None = None
        self.discarding = False  # after a parse error: what arrives is dropped until we close

    def linger(self) -> None:
        """The parser refused this connection's request: what follows is dropped (aiohttp
        closes the connection after LINGER_AFTER_ERROR, ProblemHandler.finish_response)."""
        self.discarding = True
        self.head_done()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def head_done(self) -> None:
        """The request's head is parsed (it reached the application)."""
        self.awaiting_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def request_done(self) -> None:
        """The application answered: the connection's next bytes are the next request's head."""
        self.awaiting_head = True

    def vouch(self) -> None:
        """A request on this connection showed a valid token."""
        if not self.proven:
            self.proven = True
            self.doors.unproven -= 1

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.awaiting_head and self.transport is not None:
            log.info("connection closed: its request head took too long",
                     extra={"seconds": self.doors.header_timeout})
            self._close()

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
        if self.discarding:
            return
        if self.draining:
            self.draining -= nbytes
            if self.draining <= 0:
                self._drained()
        elif self.awaiting_head and self._head_timer is None and self.doors.header_timeout > 0:
            self._head_timer = asyncio.get_running_loop().call_later(self.doors.header_timeout, self._head_too_slow)
        self.inner.data_received(bytes(self._last[:nbytes]))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.doors.unproven += 1
        self.inner.connection_made(transport)
        if self.doors.unproven > self.doors.max_unproven:
            # Too many connections without a valid token: this one is closed before anything is
            # read, so a crowd of them costs a file descriptor for an instant, not memory.
            self.doors.turned_away += 1
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.draining:
            self._drained()
        if not self.proven:
            self.doors.unproven -= 1
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self.transport = None
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
    protocol = connection(request)
    if protocol is not None:
        # What is still to come: then reads are small again, so the next request on this
        # connection waits for its turn holding a few KiB, as any other. A chunked body has no
        # length: one large read, then small ones.
        length = request.content_length
        protocol.drain(length - request.content.total_bytes if length else DRAIN_READ_BYTES)


def doors_for(settings) -> Doors:
    return Doors(settings.header_timeout_seconds, settings.max_unauthenticated_connections)


def connection(request: web.BaseRequest) -> BoundedReads | None:
    """The connection layer of `request`, when it came through `listen`'s listener."""
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    return protocol if isinstance(protocol, BoundedReads) else None


def vouch(request: web.BaseRequest) -> None:
    """`request` showed a valid token: its connection no longer counts as unauthenticated."""
    if (c := connection(request)) is not None:
        c.vouch()


@web.middleware
async def track_heads(request: web.Request, handler):
    """Outermost middleware: a request that reaches the app has a complete head (its timer
    stops); once it is answered, the connection's next bytes start the next head."""
    c = connection(request)
    if c is not None:
        c.head_done()
    try:
        return await handler(request)
    finally:
        if c is not None:
            c.request_done()


async def listen(runner: web.AppRunner, host: str, port: int, read_chunk_bytes: int,
                 doors: Doors | None = None, reuse_port: bool = False) -> asyncio.AbstractServer:
    """Serve `runner`'s app on host:port through BoundedReads (reads of at most
    `read_chunk_bytes`, 0: the loop's own size) and `doors` (default: none bounded).
    `reuse_port`: SO_REUSEPORT, so other processes that set it too listen on the same port.

    Stands in for web.TCPSite (same backlog), so the caller closes the listener itself
    before runner.cleanup()."""
    server = runner.server
    assert server is not None, "runner.setup() first"
    loop = asyncio.get_running_loop()
    view = memoryview(bytearray(read_chunk_bytes or DRAIN_READ_BYTES))
    drains = Drains(max(read_chunk_bytes, DRAIN_READ_BYTES), DRAINS_AT_ONCE)
    # The handler aiohttp's Server would make (server() does exactly this, with the same
    # arguments: the app's handler_args and the runner's), but the one that answers its own
    # parse errors as problem+json.
    kwargs = server._kwargs

    def factory() -> asyncio.BaseProtocol:
        handler = ProblemHandler(server, loop=loop, **kwargs)
        protocol = BoundedReads(handler, view, drains, doors)
        handler.after_parse_error = protocol.linger
        return protocol
    return await loop.create_server(factory, host, port, backlog=128, reuse_port=reuse_port or None)
