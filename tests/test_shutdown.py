"""Graceful shutdown with real processes and SIGTERM.

Gateway: readiness turns false first, new uploads are refused (503 shutting-down),
the PATCH in flight completes, the process exits 0; a PATCH slower than the
grace period is cut at the bound and keeps the entries it committed.
Ingester: SIGTERM mid-drain exits 0 promptly, every byte is either stored or
still in the buffer, and a restart under the same name stores everything.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from buffer import keys
from tests.conftest import OCTET, TUS, Gateway, child_env, create, make_settings, patch, wait_for, wait_stored
from unggah import processes
from unggah.processes import free_port

ENTRY = 64 * 1024


class GatewayProcess:
    def __init__(self, settings, **env_extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.files = self.url + "/files/"
        env = child_env(settings)
        env.update({"UNGGAH_HOST": "127.0.0.1", "UNGGAH_PORT": str(self.port), **env_extra})
        Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
        self.log = Path(settings.state_dir) / f"gateway-{self.port}.log"
        self.proc = processes.start(processes.command("serve"), env=env, log=self.log)

    async def ready(self, http: aiohttp.ClientSession, timeout: float = 20.0) -> None:
        async def up():
            assert self.proc.poll() is None, self.log.read_text()
            try:
                async with http.get(self.url + "/readyz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False
        await wait_for(up, timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def shutdown_settings(tmp_path, valkey, r):
    return make_settings(tmp_path, valkey.url, entry_bytes=ENTRY)


async def slow_body(chunks: int, size: int, pause: float, sent: list[int]):
    for i in range(chunks):
        piece = bytes([i % 251]) * size
        sent[0] += len(piece)
        yield piece
        await asyncio.sleep(pause)


async def body_sent(sent: list[int], at_least: int) -> None:
    async def enough():
        return sent[0] >= at_least
    await wait_for(enough, 10)


async def offset_of(r, upload_id: str, partitions: int) -> int:
    p = keys.partition_of(upload_id, partitions)
    return int(await r.hget(keys.upload(p, upload_id), "offset") or 0)


async def test_sigterm_drains_inflight_patch_then_exits_0(shutdown_settings, http, r):
    gw = GatewayProcess(shutdown_settings)
    try:
        await gw.ready(http)
        chunks, size = 20, 32 * 1024  # 640 KiB over ~2 s
        url = await create(http, gw, chunks * size)
        sent = [0]

        async def long_patch():
            async with http.patch(url, headers={**OCTET, "Upload-Offset": "0"},
                                  data=slow_body(chunks, size, 0.1, sent)) as resp:
                return resp.status, resp.headers.get("Upload-Offset")

        task = asyncio.create_task(long_patch())
        await body_sent(sent, 3 * size)
        gw.proc.send_signal(signal.SIGTERM)

        async def not_ready():
            async with http.get(gw.url + "/readyz") as resp:
                return resp.status == 503
        await wait_for(not_ready, 5)
        async with http.get(gw.url + "/healthz") as resp:
            assert resp.status == 200
        async with http.post(gw.files, headers={**TUS, "Upload-Length": "10"}) as resp:
            assert resp.status == 503
            assert resp.headers["Unggah-Reason"] == "shutting-down"
            assert int(resp.headers["Retry-After"]) > 0
            assert (await resp.json())["reason"] == "shutting-down"
        assert not task.done(), "the PATCH should still be in flight while the gateway drains"

        status, offset = await asyncio.wait_for(task, 15)
        assert (status, offset) == (204, str(chunks * size))
        t0 = time.monotonic()
        rc = await asyncio.to_thread(gw.proc.wait, 10)
        assert rc == 0, gw.log.read_text()
        assert time.monotonic() - t0 < 5
        assert await offset_of(r, url.rsplit("/", 1)[1], shutdown_settings.partitions) == chunks * size
        assert '"shutting down' in gw.log.read_text()
    finally:
        gw.kill()


async def test_patch_slower_than_grace_is_cut_at_the_bound(shutdown_settings, http, r):
    gw = GatewayProcess(shutdown_settings, UNGGAH_SHUTDOWN_GRACE_SECONDS="1.5")
    try:
        await gw.ready(http)
        url = await create(http, gw, 100 * ENTRY)
        sent = [0]

        async def endless_patch():
            try:
                async with http.patch(url, headers={**OCTET, "Upload-Offset": "0"},
                                      data=slow_body(100, ENTRY // 2, 0.05, sent)) as resp:
                    return resp.status
            except aiohttp.ClientError as e:
                return e

        task = asyncio.create_task(endless_patch())
        await body_sent(sent, 4 * ENTRY)
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(gw.proc.wait, 15)
        elapsed = time.monotonic() - t0
        assert rc == 0, gw.log.read_text()
        assert 1.4 < elapsed < 6, elapsed  # grace 1.5 s, then one last second, then exit
        await asyncio.wait_for(task, 10)
        kept = await offset_of(r, url.rsplit("/", 1)[1], shutdown_settings.partitions)
        assert kept >= 4 * ENTRY and kept % ENTRY == 0  # whole entries committed before the cut
        assert "grace period over" in gw.log.read_text()
    finally:
        gw.kill()


def start_ingester(settings, name: str, metrics_port: int) -> subprocess.Popen:
    return processes.start(processes.command("ingest", "--name", name, "--metrics-port", str(metrics_port)),
                           env=child_env(settings), log=Path(settings.state_dir) / f"{name}.log")


async def ingest_bytes(http: aiohttp.ClientSession, port: int) -> float:
    try:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            text = await resp.text()
    except aiohttp.ClientError:
        return -1
    for line in text.splitlines():
        if line.startswith("unggah_ingest_bytes_total "):
            return float(line.split()[1])
    return -1


@pytest.fixture
async def gateway_small(shutdown_settings):
    gw = await Gateway(shutdown_settings).start()
    yield gw
    await gw.stop()


async def test_ingester_sigterm_leaves_nothing_half_done(shutdown_settings, gateway_small, http, r):
    s = shutdown_settings
    Path(s.state_dir).mkdir(parents=True, exist_ok=True)
    uploads = {}
    for n in range(4):
        data = os.urandom(2 * 1024 * 1024)
        url = await create(http, gateway_small, len(data))
        for off in range(0, len(data), 512 * 1024):
            assert (await patch(http, url, off, data[off:off + 512 * 1024])).status == 204
        uploads[url] = data
    total = sum(len(d) for d in uploads.values())

    port = free_port()
    proc = start_ingester(s, "sigterm-0", port)
    try:
        async def draining():
            return await ingest_bytes(http, port) > 0
        await wait_for(draining, 20, interval=0.01)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(proc.wait, 20)
        assert rc == 0
        assert time.monotonic() - t0 < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Nothing half done: each upload's bytes are either stored or still buffered.
    stored = buffered = 0
    for url in uploads:
        st = await (await http.get(url + "/status")).json()
        stored += st["bytes_stored"]
    for p in range(s.partitions):
        buffered += int(await r.get(keys.buffered_bytes(p)) or 0)
    assert stored + buffered == total

    proc = start_ingester(s, "sigterm-0", free_port())
    try:
        for url, data in uploads.items():
            st = await wait_stored(http, url)
            assert st["state"] == "stored" and st["sha256"] == hashlib.sha256(data).hexdigest()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0

