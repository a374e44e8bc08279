"""Test harness: a real Valkey started by the session, the real gateway on a free
port, real processes we can SIGKILL. No fakes."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from buffer.connection import connect
from gateway import reads
from gateway.app import build_app
from unggah import config, processes
from unggah.processes import free_port
from unggah.valkey import EmbeddedCluster, EmbeddedValkey

# UNGGAH_TEST_CLUSTER=1: the session's Valkey is a local cluster (3 primaries x 1 replica), and
# every settings made for it name it a cluster. The suites that run so are listed in
# tests/cluster_suites.txt (`./dev test-cluster`); the rest start single servers of their own.
CLUSTER = os.environ.get("UNGGAH_TEST_CLUSTER") == "1"
_session_url = ""

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def pytest_configure(config):
    # A run stopped by SIGTERM (a CI timeout, `kill`) tears down as Ctrl-C does: the session's
    # Valkey runs in its own session (unggah/valkey.py), so without teardown it would outlive us.
    signal.signal(signal.SIGTERM, _interrupted)


@pytest.fixture(scope="session")
def valkey(tmp_path_factory):
    """One Valkey for the session (AOF everysec); tests that kill it start their own."""
    global _session_url
    if CLUSTER:
        server = EmbeddedCluster(tmp_path_factory.mktemp("cluster"), appendfsync="everysec", maxmemory="512mb").start()
    else:
        server = EmbeddedValkey(tmp_path_factory.mktemp("valkey"), appendfsync="everysec", maxmemory="1gb").start()
    _session_url = server.url
    yield server
    server.stop()


@pytest.fixture
async def r(valkey):
    """A client on the session Valkey, emptied before the test."""
    client = connect(valkey.url, cluster=CLUSTER)
    await client.flushall()  # on a cluster: on every primary
    yield client
    await client.aclose()


def make_settings(tmp_path: Path, redis_url: str, **overrides) -> config.Settings:
    base = dict(redis_url=redis_url, state_dir=str(tmp_path / "state"), partitions=4, auth="off",
                ingest_claim_idle_ms=1000, ingest_block_ms=200, ingest_max_deliveries=3)
    if CLUSTER and redis_url == _session_url:
        base.update(redis_cluster=True, wait_replicas=1)
    base.update(overrides)
    return config.load(env={}, **base)


@pytest.fixture
def settings(tmp_path, valkey, r):
    return make_settings(tmp_path, valkey.url)


class Gateway:
    """The gateway app served in-process on a free port."""

    def __init__(self, settings: config.Settings, clock=None, results=None) -> None:
        self.settings = settings
        self.clock = clock
        self.results = results  # a ResultsReader other than the settings' own
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.files = self.url + "/files/"
        self.app: web.Application | None = None
        self.runner: web.AppRunner | None = None
        self.listener: asyncio.AbstractServer | None = None

    async def start(self) -> "Gateway":
        kw = {"clock": self.clock} if self.clock else {}
        if self.results is not None:
            kw["results"] = self.results
        self.app = build_app(self.settings, connect(self.settings.redis_url, cluster=self.settings.redis_cluster), **kw)
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        # The listener `unggah serve` uses (bounded reads), not web.TCPSite.
        self.listener = await reads.listen(self.runner, "127.0.0.1", self.port, self.settings.read_chunk_bytes,
                                           reads.doors_for(self.settings))
        return self

    async def stop(self) -> None:
        if self.listener:
            self.listener.close()
        if self.runner:
            await self.runner.cleanup()


@pytest.fixture
async def gateway(settings):
    gw = await Gateway(settings).start()
    yield gw
    await gw.stop()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


TUS = {"Tus-Resumable": "1.0.0"}
OCTET = {"Tus-Resumable": "1.0.0", "Content-Type": "application/offset+octet-stream"}


async def create(http: aiohttp.ClientSession, gw: Gateway, length: int | None, **headers) -> str:
    h = dict(TUS)
    if length is not None:
        h["Upload-Length"] = str(length)
    h.update({k.replace("_", "-"): v for k, v in headers.items()})
    async with http.post(gw.files, headers=h) as resp:
        assert resp.status == 201, await resp.text()
        return resp.headers["Location"]


async def patch(http: aiohttp.ClientSession, url: str, offset: int, data: bytes, **headers):
    h = dict(OCTET, **{"Upload-Offset": str(offset)})
    h.update({k.replace("_", "-"): v for k, v in headers.items()})
    async with http.patch(url, data=data, headers=h) as resp:
        await resp.read()
        return resp


async def head(http: aiohttp.ClientSession, url: str):
    async with http.head(url, headers=TUS) as resp:
        return resp


async def status(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.get(url + "/status") as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        await asyncio.sleep(interval)


def child_env(settings: config.Settings) -> dict[str, str]:
    """Environment for a child process (gateway, ingester, CLI) with these settings."""
    return processes.environment(settings)


class GatewayProcess:
    """`unggah serve` as a real child process: its own event loop, as in production."""

    def __init__(self, settings: config.Settings) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.files = self.url + "/files/"
        Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
        self.proc = processes.start(processes.command("serve"), log=Path(settings.state_dir) / "gateway.log",
                                    env=processes.environment(settings, UNGGAH_PORT=str(self.port)))

    async def wait_ready(self, timeout: float = 20.0) -> "GatewayProcess":
        async with aiohttp.ClientSession() as http:
            async def ready():
                try:
                    async with http.get(self.url + "/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False
            await wait_for(ready, timeout)
        return self

    def stop(self) -> None:
        processes.stop(self.proc, timeout=20)


@pytest.fixture
async def ingester(settings):
    """One ingester running in the test's event loop."""
    from stores.blobs import LocalBlobStore
    from ingest.worker import Ingester

    client = connect(settings.redis_url, retry=False, cluster=settings.redis_cluster)  # as `unggah ingest` connects
    ing = Ingester(settings, "test.ingest-0", client, LocalBlobStore(settings.blob_path))
    task = asyncio.create_task(ing.run())
    yield ing
    ing.stopping.set()
    await asyncio.wait_for(task, 30)
    await client.aclose()


async def wait_stored(http, url: str, timeout: float = 30.0) -> dict:
    async def done():
        async with http.get(url + "/status") as resp:
            if resp.status == 503:  # the buffer is restarting: poll again, as a client would
                return None
            assert resp.status == 200, await resp.text()
            st = await resp.json()
        return st if st["state"] in ("stored", "failed") else None
    return await wait_for(done, timeout)


async def all_keys(r, pattern: str = "*") -> list[bytes]:
    """KEYS on every primary: a cluster client sends KEYS to one node only, which would make
    a test of "nothing changed" pass on the keys it never saw."""
    if CLUSTER:
        return await r.keys(pattern, target_nodes=r.PRIMARIES)
    return await r.keys(pattern)


async def buffer_empty(r) -> bool:
    """No entry left in any partition stream and every byte counter at zero."""
    for key in await all_keys(r, "unggah:*:stream"):
        if await r.xlen(key):
            return False
    for key in await all_keys(r, "unggah:*:bytes"):
        if int(await r.get(key) or 0):
            return False
    return True


class IngesterProcess:
    """`unggah ingest` as a real child process, so tests can SIGKILL it."""

    def __init__(self, settings: config.Settings, name: str) -> None:
        self.name = name
        self.proc = processes.start(processes.command("ingest", "--name", name), env=processes.environment(settings),
                                    log=Path(settings.state_dir) / f"{name}.log")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def freeze(self) -> None:
        """SIGSTOP, returning once the process is stopped (a signal is delivered asynchronously)."""
        import signal
        import time
        self.proc.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "Tt":
            if time.monotonic() > deadline:
                raise AssertionError(f"ingester {self.name} did not stop on SIGSTOP")
            time.sleep(0.0005)

    def thaw(self) -> None:
        import signal
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        processes.stop(self.proc)


@pytest.fixture
def ingester_procs(settings):
    Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
    started: list[IngesterProcess] = []

    def start(name: str) -> IngesterProcess:
        p = IngesterProcess(settings, name)
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()
