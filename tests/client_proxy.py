"""A small aiohttp reverse proxy for client tests: it sits between the client and the
real gateway, records every request (method, path, Upload-Offset, body length, time,
the answer) and lets a test misbehave on purpose: refuse the first PATCHes with
503 + Retry-After, flip a byte in a PATCH body, slow requests down, or add signed
receipts to status answers."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import aiohttp
from aiohttp import web

from unggah.processes import free_port

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding"}


@dataclass
class Seen:
    method: str
    path: str
    offset: int | None
    length: int
    t: float
    headers: dict[str, str]
    status: int = 0


@dataclass
class Proxy:
    upstream: str  # http://127.0.0.1:PORT
    port: int = field(default_factory=free_port)
    seen: list[Seen] = field(default_factory=list)
    # (Seen, body) -> a response to answer instead of forwarding, or None
    intercept: Callable[[Seen, bytes], web.Response | None] | None = None
    # (Seen, body) -> the body to forward (e.g. with a byte flipped)
    mutate: Callable[[Seen, bytes], bytes] | None = None
    # (Seen, JSON answer of a status request) -> JSON to return
    on_status: Callable[[Seen, dict], dict] | None = None
    extra_routes: dict[str, Callable[[web.Request], Awaitable[web.Response]]] = field(default_factory=dict)
    delay: float = 0.0  # seconds before forwarding each PATCH

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def patches(self, since: int = 0) -> list[Seen]:
        return [s for s in self.seen[since:] if s.method == "PATCH"]

    async def start(self) -> "Proxy":
        self.session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=64 << 20)
        for path, handler in self.extra_routes.items():
            app.router.add_get(path, handler)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()
        await self.session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        off = request.headers.get("Upload-Offset")
        s = Seen(request.method, request.path, int(off) if off and off.isdigit() else None, len(body),
                 time.monotonic(), dict(request.headers))
        self.seen.append(s)
        if self.intercept:
            resp = self.intercept(s, body)
            if resp is not None:
                s.status = resp.status
                return resp
        if self.delay and request.method == "PATCH":
            await asyncio.sleep(self.delay)
        if self.mutate:
            body = self.mutate(s, body)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        headers["Host"] = f"127.0.0.1:{self.port}"  # so Location points back at the proxy
        async with self.session.request(request.method, self.upstream + request.path_qs, headers=headers,
                                        data=body if body else None, allow_redirects=False) as up:
            data = await up.read()
            s.status = up.status
            out_headers = {k: v for k, v in up.headers.items() if k.lower() not in HOP}
            if self.on_status and request.path.endswith("/status") and up.status == 200:
                import orjson
                data = orjson.dumps(self.on_status(s, orjson.loads(data)))
            return web.Response(status=up.status, body=data if request.method != "HEAD" else None,
                                headers=out_headers)
