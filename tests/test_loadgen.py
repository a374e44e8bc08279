"""The tus load generator against a small in-process tus-like sink that counts
what it really received, so the generator's own counts can be checked."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import json
import os
import struct
import time

import aiohttp
import crc32c
import pytest
from aiohttp import web

from loadtest import tusload, wiretime
from loadtest.tusload import LoadConfig, run_load

KiB = 1024


class Sink:
    """tus 1.0 core + creation, in memory, with scripted misbehaviour:

    - every `refuse_every`-th PATCH: 503 + Retry-After: 0 (nothing stored);
    - PATCH number `half_write_at`: store half the body, answer 500 without
      Retry-After (like a server that died mid-body), so the retry hits 409;
    - PATCH number `lock_at`: 423 + Retry-After: 1;
    - every PATCH waits `delay` seconds first.
    """

    def __init__(self, *, refuse_every=0, half_write_at=0, lock_at=0, delay=0.0):
        self.refuse_every = refuse_every
        self.half_write_at = half_write_at
        self.lock_at = lock_at
        self.delay = delay
        self.uploads: dict[str, list[int]] = {}  # id -> [offset, length]
        self.patches = 0
        self.counts: dict[str, int] = {}
        self.ok_bytes = 0  # bytes of PATCHes answered 204
        self.bad_checksums = 0
        self.patch_times: list[float] = []

    def count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def completed(self) -> int:
        return sum(1 for off, length in self.uploads.values() if off == length)

    def reply(self, method: str, status: int, **headers) -> web.Response:
        self.count(f"{method} {status}")
        return web.Response(status=status, headers={"Tus-Resumable": "1.0.0", **headers})

    async def post(self, request: web.Request) -> web.Response:
        uid = str(len(self.uploads) + 1)
        self.uploads[uid] = [0, int(request.headers["Upload-Length"])]
        return self.reply("POST", 201, Location=f"/files/{uid}")

    async def head(self, request: web.Request) -> web.Response:
        off, length = self.uploads[request.match_info["uid"]]
        return self.reply("HEAD", 200, **{"Upload-Offset": str(off), "Upload-Length": str(length)})

    async def patch(self, request: web.Request) -> web.Response:
        self.patches += 1
        n = self.patches
        self.patch_times.append(time.monotonic())
        body = await request.read()
        if self.delay:
            await asyncio.sleep(self.delay)
        up = self.uploads[request.match_info["uid"]]
        assert request.headers["Content-Type"] == "application/offset+octet-stream"
        if self.refuse_every and n % self.refuse_every == 0:
            return self.reply("PATCH", 503, **{"Retry-After": "0"})
        if n == self.lock_at:
            return self.reply("PATCH", 423, **{"Retry-After": "1"})
        if int(request.headers["Upload-Offset"]) != up[0]:
            return self.reply("PATCH", 409)
        algo, _, digest = request.headers.get("Upload-Checksum", "").partition(" ")
        want = {"crc32c": lambda b: crc32c.crc32c(b).to_bytes(4, "big"),
                "sha1": lambda b: hashlib.sha1(b).digest()}.get(algo)
        if want and base64.b64decode(digest) != want(body):
            self.bad_checksums += 1
            return self.reply("PATCH", 460)
        if n == self.half_write_at:
            up[0] += len(body) // 2
            return self.reply("PATCH", 500)
        up[0] += len(body)
        assert up[0] <= up[1]
        self.ok_bytes += len(body)
        return self.reply("PATCH", 204, **{"Upload-Offset": str(up[0])})


async def serve(sink: Sink):
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/files/", sink.post)
    app.router.add_route("HEAD", "/files/{uid}", sink.head)
    app.router.add_patch("/files/{uid}", sink.patch)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}/files/"


async def test_counts_refusals_conflicts_and_completes_uploads():
    sink = Sink(refuse_every=3, half_write_at=5)
    runner, url = await serve(sink)
    try:
        r = await run_load(LoadConfig(url=url, concurrency=3, chunk=64 * KiB, upload_size=512 * KiB,
                                      max_uploads=6, duration=20, warmup=0, checksum="crc32c"))
    finally:
        await runner.cleanup()
    assert r.errors == {}
    assert sink.bad_checksums == 0
    assert r.uploads_created == 6 and r.uploads_completed == 6 == sink.completed()
    # Every response the sink sent is counted once, under the right method and status.
    assert r.statuses == sink.counts
    assert r.chunks == sink.counts["PATCH 204"]
    assert r.bytes == sink.ok_bytes == 6 * 512 * KiB - 32 * KiB  # the half-written 32 KiB went in the 500
    assert r.refusals == sink.counts["PATCH 503"] + sink.counts["PATCH 500"] > 0
    assert sink.counts["PATCH 503"] == sink.patches // 3
    # The retry after the half-write hit 409; one HEAD found the new offset and the upload went on.
    assert r.conflicts == sink.counts["PATCH 409"] == 1
    assert sink.counts["HEAD 200"] == 1
    assert r.chunks_per_s > 0 and r.p50_ms > 0 and r.p99_ms >= r.p50_ms


async def test_the_generator_reports_how_late_its_own_loop_ran():
    """Every latency the generator reports includes its own queueing; it says how much. Here
    its loop (shared with the in-process sink) is held for 60 ms four times in a second."""
    runner, url = await serve(Sink())
    loop = asyncio.get_running_loop()
    for at in (0.2, 0.45, 0.7, 0.95):
        loop.call_later(at, time.sleep, 0.06)
    try:
        r = await run_load(LoadConfig(url=url, concurrency=2, chunk=16 * KiB, upload_size=256 * KiB,
                                      duration=1.2, warmup=0))
    finally:
        await runner.cleanup()
    assert r.loop_lag_p99_ms >= 40, r.loop_lag_p99_ms


async def test_sha1_checksum_and_retry_after_is_honoured():
    sink = Sink(lock_at=2)
    runner, url = await serve(sink)
    try:
        r = await run_load(LoadConfig(url=url, concurrency=1, chunk=64 * KiB, upload_size=256 * KiB,
                                      max_uploads=1, duration=10, warmup=0, checksum="sha1"))
    finally:
        await runner.cleanup()
    assert r.statuses == {"POST 201": 1, "PATCH 204": 4, "PATCH 423": 1}
    assert sink.bad_checksums == 0 and sink.completed() == 1
    assert r.refusals == 1 and r.uploads_completed == 1 and r.errors == {}
    # PATCH 3 is the retry of the refused PATCH 2: at least the 1 s Retry-After later.
    assert sink.patch_times[2] - sink.patch_times[1] >= 0.95
    # Chunk latency includes the wait: the refused chunk took over a second.
    assert r.max_ms >= 950


async def test_open_loop_counts_queueing_from_the_schedule():
    """Offer 40 chunks/s to one upload on a server that takes 50 ms each (20/s):
    the schedule slips, and latency measured from the schedule must grow far past
    the 50 ms service time. A generator that waited for answers before scheduling
    (coordinated omission) would report about 50 ms."""
    sink = Sink(delay=0.05)
    runner, url = await serve(sink)
    try:
        opened = await run_load(LoadConfig(url=url, concurrency=1, chunk=16 * KiB, upload_size=1024 * KiB,
                                           rate=40, duration=1.5, warmup=0))
        closed = await run_load(LoadConfig(url=url, concurrency=1, chunk=16 * KiB, upload_size=1024 * KiB,
                                           duration=1.0, warmup=0))
    finally:
        await runner.cleanup()
    assert opened.mode == "open 40/s" and opened.offered_rate == 40
    assert 15 <= opened.chunks_per_s <= 22
    assert opened.p99_ms > 400 and opened.p50_ms > 150
    assert opened.backlog > 10  # about 60 due, about 30 sent
    assert closed.p99_ms < 200


async def test_open_loop_keeps_the_offered_rate_when_the_server_keeps_up():
    sink = Sink()
    runner, url = await serve(sink)
    try:
        r = await run_load(LoadConfig(url=url, concurrency=4, chunk=16 * KiB, upload_size=64 * KiB,
                                      rate=100, duration=1.5, warmup=0.3))
    finally:
        await runner.cleanup()
    assert 85 <= r.chunks_per_s <= 110
    assert r.backlog <= 4
    assert r.uploads_completed >= 30


async def test_connection_errors_are_counted_not_raised():
    # Nothing listens on a freshly freed port.
    from unggah.processes import free_port
    r = await run_load(LoadConfig(url=f"http://127.0.0.1:{free_port()}/files/", concurrency=2,
                                  duration=0.5, warmup=0))
    assert r.chunks == 0 and r.errors.get("connection", 0) >= 2


def test_cli_json(capsys):
    async def go():
        sink = Sink()
        runner, url = await serve(sink)
        try:
            await asyncio.to_thread(tusload.main, ["--url", url, "-c", "2", "--chunk", "32k",
                                                   "--upload-size", "64k", "--max-uploads", "4",
                                                   "--duration", "5", "--warmup", "0",
                                                   "-H", "Authorization: Bearer x", "--json"])
        finally:
            await runner.cleanup()
    asyncio.run(go())
    out = json.loads(capsys.readouterr().out)
    assert out["uploads_completed"] == 4 and out["chunks"] == 8
    assert out["statuses"] == {"PATCH 204": 8, "POST 201": 4}


def test_helpers():
    assert tusload.parse_size("256k") == 256 * KiB
    assert tusload.parse_size("8MiB") == 8 * 1024 * KiB
    assert tusload.parse_size("1000") == 1000
    assert tusload.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert tusload.percentile([float(i) for i in range(1, 101)], 0.99) == 99.0
    assert tusload.percentile([], 0.99) == 0.0
    assert tusload.retry_after({"Retry-After": "3"}, 0.5) == 3.0
    assert tusload.retry_after({}, 0.5) == 0.5
    later = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8 <= tusload.retry_after({"Retry-After": later}, 0.0) <= 10
    p = tusload.Payloads(64, "crc32c")
    body, digest = p.get(3, 10)
    assert len(body) == 10 and p.get(3, 10)[0] is body  # cached, not regenerated
    assert digest == "crc32c " + base64.b64encode(crc32c.crc32c(body).to_bytes(4, "big")).decode()


def test_wire_times_pair_each_answer_with_its_request(tmp_path):
    """loadtest/wiretime reads a pcap: per connection, each answer's first packet is paired with
    the oldest unanswered request's first packet; other traffic is ignored."""
    def packet(t: float, sport: int, dport: int, payload: bytes) -> bytes:
        tcp = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, 0x18, 65535, 0, 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, bytes([127, 0, 0, 1]),
                         bytes([127, 0, 0, 1])) + tcp
        frame = bytes(12) + b"\x08\x00" + ip  # Ethernet, as Linux's lo
        sec, usec = int(t), round((t - int(t)) * 1e6)
        return struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame

    gw = 8080
    pcap = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + b"".join([
        packet(10.000, 40001, gw, b"PATCH /files/a HTTP/1.1"),
        packet(10.001, 40002, gw, b"PATCH /files/b HTTP/1.1"),
        packet(10.002, 40001, gw, b"x" * 20),  # body bytes: not a request
        packet(10.004, gw, 40002, b"HTTP/1.1 503 Service Unavailable"),
        packet(10.007, gw, 40001, b"HTTP/1.1 204 No Content"),
        packet(10.010, 40001, gw, b"PATCH /files/a HTTP/1.1"),
        packet(10.012, gw, 40001, b"HTTP/1.1 503 Service Unavailable"),
        packet(10.020, gw, 40003, b"HTTP/1.1 204 No Content"),  # no request seen: ignored
    ])
    path = tmp_path / "x.pcap"
    path.write_bytes(pcap)
    times = {status: [round(t * 1000, 3) for t in ts] for status, ts in wiretime.answer_times(path, gw).items()}
    assert times == {503: [3.0, 2.0], 204: [7.0]}
    # A window on the request's time: only the last request was sent from 10.005 on.
    assert {s: len(ts) for s, ts in wiretime.answer_times(path, gw, since=10.005).items()} == {503: 1}


@pytest.mark.skipif(os.geteuid() != 0 or wiretime.available() is not None,
                    reason="needs tcpdump and root (./dev test installs tcpdump)")
async def test_wire_capture_times_real_answers(tmp_path):
    """A real capture on loopback: five refused PATCHes, five answer times, none lost when the
    capture stops right after them."""
    app = web.Application()

    async def refuse(request):
        return web.Response(status=503, headers={"Retry-After": "1"})

    app.router.add_route("PATCH", "/files/x", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    path = tmp_path / "x.pcap"
    try:
        with wiretime.capture(port, path):
            async with aiohttp.ClientSession() as http:
                for _ in range(5):
                    async with http.patch(f"http://127.0.0.1:{port}/files/x", data=b"y" * 300_000) as resp:
                        assert resp.status == 503
    finally:
        await runner.cleanup()
    times = wiretime.answer_times(path, port)
    assert set(times) == {503} and len(times[503]) == 5
    assert all(0 < t < 1 for t in times[503])
