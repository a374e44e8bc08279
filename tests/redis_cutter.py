"""A TCP proxy in front of a real Valkey that loses one reply on purpose.

Armed with a test on a command's bytes, it lets the next matching command reach Valkey
(which runs it), drops Valkey's reply if it carries data, and closes the connection: what
a client sees when Valkey dies or the network breaks with a reply in flight. Everything
else is forwarded untouched. Clients with one command in flight per connection only
(redis-py outside pipelines), so a reply belongs to the command before it.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable
from urllib.parse import urlsplit

NIL_ARRAY = b"*-1\r\n"  # RESP2: a read that found nothing


class ReplyCutter:
    def __init__(self, upstream_url: str) -> None:
        u = urlsplit(upstream_url)
        self.upstream = (u.hostname, u.port)
        self.match: Callable[[bytes], bool] | None = None
        self.on_cut: Callable[[], Awaitable[None]] | None = None
        self.cuts = 0
        self._tasks: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def arm(self, match: Callable[[bytes], bool], on_cut: Callable[[], Awaitable[None]] | None = None) -> None:
        """Cut the reply to the next command for which `match(command bytes)` holds, if that
        reply carries data; `on_cut` runs after Valkey answered and before the client's
        connection closes."""
        self.match, self.on_cut = match, on_cut

    async def start(self) -> "ReplyCutter":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())
        ur, uw = await asyncio.open_connection(*self.upstream)
        watched = asyncio.Event()  # the command in flight on this connection is the armed one

        async def upstream() -> None:
            while data := await cr.read(1 << 16):
                if self.match is not None and self.match(data):
                    self.match = None
                    watched.set()
                uw.write(data)
                await uw.drain()

        async def downstream() -> None:
            while data := await ur.read(1 << 16):
                if watched.is_set():
                    watched.clear()
                    if not data.startswith(NIL_ARRAY):
                        self.cuts += 1
                        if self.on_cut is not None:
                            await self.on_cut()
                        return  # the reply is dropped; closing both ends below
                cw.write(data)
                await cw.drain()

        pumps = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in pumps:
                t.cancel()
            for w in (cw, uw):
                w.transport.abort()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._tasks.discard(asyncio.current_task())
