"""HTTP under the client: one aiohttp session, the bearer token on every request,
every request counted for the retry budget, network failures as values."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit, urlunsplit

import aiohttp
import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from client.retry import RetryBudget

TUS = "1.0.0"
USER_AGENT = "unggah-push/0.1 (tus 1.0)"


@dataclass(frozen=True)
class Endpoints:
    creation: str  # tus creation URL, e.g. http://host:8080/files/
    base: str  # where /progress and /receipts/public-key live

    @classmethod
    def from_server(cls, server: str) -> "Endpoints":
        """`http://host:8080` -> creation `http://host:8080/files/`; a URL with a path is the
        creation URL itself (another tus server's endpoint, or ours behind a prefix)."""
        if "://" not in server:
            server = "http://" + server
        u = urlsplit(server)
        path = u.path
        if path in ("", "/"):
            creation_path, base_path = "/files/", ""
        else:
            creation_path = path
            stripped = path.rstrip("/")
            base_path = stripped[: -len("/files")] if stripped.endswith("/files") else ""
        creation = urlunsplit((u.scheme, u.netloc, creation_path, "", ""))
        base = urlunsplit((u.scheme, u.netloc, base_path, "", "")).rstrip("/")
        return cls(creation, base)

    def resolve(self, location: str) -> str:
        return urljoin(self.creation, location)


@dataclass
class Resp:
    status: int  # 0: no answer (network error or timeout)
    headers: CIMultiDictProxy[str] | CIMultiDict[str] = field(default_factory=CIMultiDict)
    body: bytes = b""
    error: str = ""  # what went wrong on the network

    @property
    def reason(self) -> str:
        """The server's machine-readable reason (Unggah-Reason or problem+json `reason`), if any."""
        r = self.headers.get("Unggah-Reason")
        if r:
            return r
        if self.body[:1] == b"{" and "json" in self.headers.get("Content-Type", ""):
            try:
                data = orjson.loads(self.body)
                if isinstance(data, dict) and isinstance(data.get("reason"), str):
                    return data["reason"]
            except orjson.JSONDecodeError:
                pass
        return ""

    @property
    def detail(self) -> str:
        if self.body[:1] == b"{" and "json" in self.headers.get("Content-Type", ""):
            try:
                data = orjson.loads(self.body)
                if isinstance(data, dict) and isinstance(data.get("detail"), str):
                    return data["detail"]
            except orjson.JSONDecodeError:
                pass
        return ""

    def describe(self) -> str:
        if self.status == 0:
            return f"no answer ({self.error})"
        s = f"HTTP {self.status}"
        if self.reason:
            s += f" {self.reason}"
        if self.detail:
            s += f": {self.detail}"
        return s

    def json(self):
        return orjson.loads(self.body)


class Http:
    def __init__(self, token: str | None = None, budget: RetryBudget | None = None, *,
                 limit: int = 16, connect_timeout: float = 15.0, read_timeout: float = 60.0) -> None:
        self.token = token
        self.budget = budget or RetryBudget()
        self.limit = limit
        self.timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout)
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "Http":
        conn = aiohttp.TCPConnector(limit=self.limit, limit_per_host=self.limit)
        self.session = aiohttp.ClientSession(connector=conn, timeout=self.timeout, auto_decompress=True,
                                             headers={"User-Agent": USER_AGENT})
        return self

    async def __aexit__(self, *exc) -> None:
        if self.session is not None:
            await self.session.close()

    def headers(self, extra: dict[str, str] | None = None, tus: bool = True) -> dict[str, str]:
        h: dict[str, str] = {}
        if tus:
            h["Tus-Resumable"] = TUS
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        if extra:
            h.update(extra)
        return h

    async def send(self, method: str, url: str, headers: dict[str, str] | None = None, body: bytes | None = None,
                   *, tus: bool = True, count: bool = True) -> Resp:
        assert self.session is not None
        if count:
            self.budget.request()
        try:
            async with self.session.request(method, url, headers=self.headers(headers, tus), data=body,
                                            allow_redirects=method in ("GET", "HEAD")) as r:
                data = await r.read()
                return Resp(r.status, r.headers, data)
        except asyncio.TimeoutError:
            return Resp(0, error="timed out")
        except aiohttp.ClientConnectorError as e:
            return Resp(0, error=f"cannot connect: {e.os_error or e}")
        except aiohttp.ClientError as e:
            return Resp(0, error=f"{type(e).__name__}: {e}")
        except OSError as e:
            return Resp(0, error=f"{type(e).__name__}: {e}")
