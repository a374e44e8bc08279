"""Admission control: fairness between tenants, completion first, and overload that
never turns into timeouts."""

from __future__ import annotations

import asyncio
import os
import time
from urllib.parse import urlsplit

import aiohttp
import pytest

from buffer import keys
from gateway.admission import SLOW_READ, ByteBudget, FairGate, Refused
from gateway.app import TUS as TUS_HANDLER
from gateway.problems import retry_after
from tests.conftest import OCTET, TUS, Gateway, create, make_settings, patch
from unggah.config import ConfigError, load


async def test_completion_first_within_a_tenant():
    gate = FairGate(slots=1, queue_limit=100, max_wait=5)
    await gate.acquire("a", 0.0, in_progress=False)  # the slot is taken
    order = []

    async def waiter(progress):
        await gate.acquire("a", progress, in_progress=False)
        order.append(progress)
        gate.release("a")

    tasks = [asyncio.create_task(waiter(p)) for p in (0.1, 0.9, 0.5, 0.0)]
    await asyncio.sleep(0.05)
    gate.release("a")
    await asyncio.gather(*tasks)
    assert order == [0.9, 0.5, 0.1, 0.0]


async def test_a_piece_that_waited_long_goes_before_a_nearly_done_newcomer():
    """Ageing: a waiter gains one unit of priority per max_wait waited, so an upload that
    just started is not starved by uploads nearly done, however many keep arriving."""
    now = [0.0]
    for waited, first in ((5.0, "old"), (1.0, "new")):  # priority 0 + waited / 5 against 0.9
        gate = FairGate(slots=1, queue_limit=100, max_wait=5, clock=lambda: now[0])
        now[0] = 0.0
        await gate.acquire("a", 0.5, in_progress=True)  # the slot is taken
        old = asyncio.create_task(gate.acquire("a", 0.0, in_progress=True))
        await asyncio.sleep(0.01)
        now[0] = waited
        new = asyncio.create_task(gate.acquire("a", 0.9, in_progress=True))
        await asyncio.sleep(0.01)
        gate.release("a")
        await asyncio.sleep(0.01)
        assert (old.done(), new.done()) == ((True, False) if first == "old" else (False, True)), waited
        for t in (old, new):
            t.cancel()
        await asyncio.gather(old, new, return_exceptions=True)


async def test_a_waiter_that_gives_up_is_forgotten_and_the_order_of_the_rest_holds():
    gate = FairGate(slots=1, queue_limit=100, max_wait=5, target_wait=0.05)
    await gate.acquire("a", 0.0, in_progress=True)
    waiting = {p: asyncio.create_task(gate.acquire("a", p, in_progress=True)) for p in (0.2, 0.9, 0.6, 0.4)}
    await asyncio.sleep(0)
    waiting.pop(0.9).cancel()  # its client went away
    await asyncio.sleep(0.01)
    assert gate.n_waiting == 3
    # It no longer counts ahead of a newcomer at 0.5: with 15 ms per piece, one ahead (0.6) fits
    # the newcomer's 37.5 ms (target 50 ms x 0.75), two would not.
    gate.release_interval = 0.015
    assert gate.shed("a", 0.5) is None
    assert gate.shed("a", 0.3) is not None  # two ahead of it (0.6, 0.4): refused
    order = []
    for _ in range(3):
        gate.release("a")
        await asyncio.sleep(0.01)
        order += [p for p, t in waiting.items() if t.done() and p not in order]
    assert order == [0.6, 0.4, 0.2]
    gate.release("a")
    assert gate.n_waiting == 0 and gate.inflight == 0


async def test_when_the_queue_is_long_new_uploads_are_refused_before_nearly_done_ones():
    gate = FairGate(slots=1, queue_limit=4, max_wait=5)
    await gate.acquire("a", 0.0, in_progress=False)
    waiters = [asyncio.create_task(gate.acquire("a", 0.5, in_progress=False)) for _ in range(2)]
    await asyncio.sleep(0.01)
    # Two waiting: a request just starting (progress 0) may only use half the queue...
    with pytest.raises(Refused) as refused:
        await gate.acquire("a", 0.0, in_progress=False)
    assert refused.value.retry_after >= 1
    # ...one nearly done still gets a place.
    near_done = asyncio.create_task(gate.acquire("a", 0.95, in_progress=False))
    await asyncio.sleep(0.01)
    assert not near_done.done()
    for t in waiters + [near_done]:
        t.cancel()


async def test_a_new_request_predicted_to_wait_past_the_target_is_refused_on_arrival():
    """Refusal is decided from the predicted wait before queueing: it takes no time, while a
    request already under way with the same queue ahead of it waits for its turn."""
    gate = FairGate(slots=1, queue_limit=1000, max_wait=5, target_wait=0.05)
    await gate.acquire("a", 0.0, in_progress=False)
    gate.release_interval = 0.02  # the queue drains a piece every 20 ms
    waiters = [asyncio.create_task(gate.acquire("a", 0.5, in_progress=False)) for _ in range(2)]
    await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    with pytest.raises(Refused) as refused:  # 3 x 20 ms > 25 ms, half the target for a new upload
        await gate.acquire("a", 0.0, in_progress=False)
    assert time.perf_counter() - t0 < 0.005 and refused.value.reason == "gateway-busy"
    under_way = asyncio.create_task(gate.acquire("a", 0.0, in_progress=True))
    await asyncio.sleep(0.01)
    assert not under_way.done(), "a piece of a request under way is never refused: it waits"
    for t in waiters + [under_way]:
        t.cancel()


async def test_byte_budget_answers_new_requests_at_once_and_lets_pieces_under_way_wait():
    budget = ByteBudget(100)
    assert await budget.reserve(80, timeout=0)
    assert not await budget.reserve(30, timeout=0), "no room now: a new request is told at once"
    waiting = asyncio.create_task(budget.reserve(30, timeout=5))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    budget.free(80)
    assert await waiting and budget.used == 30
    assert not await budget.reserve(90, timeout=0.01), "a wait that runs out leaves nothing reserved"
    assert budget.used == 30 and not [w for w in budget._waiters if not w[1].done()]


async def test_a_request_let_in_on_arrival_waits_instead_of_being_refused_later():
    gate = FairGate(slots=1, queue_limit=1000, max_wait=5, target_wait=0.05)
    await gate.acquire("a", 0.0, in_progress=False)
    gate.release_interval = 1.0  # anyone new would be refused now...
    assert gate.shed("a", 0.0) is not None
    admitted = asyncio.create_task(gate.acquire("a", 0.0, in_progress=False, admitted=True))
    await asyncio.sleep(0.01)
    assert not admitted.done(), "...but a request admission already let in queues for its turn"
    gate.release("a")
    await asyncio.wait_for(admitted, 1)


async def test_a_held_turn_is_given_when_the_hold_ends_even_if_the_loop_timer_fires_early():
    """A pair ahead of another waits at most ANTICIPATE for it, then is served, with no other
    event to wake the gate. uvloop schedules a timer from the time cached at the start of its
    loop turn, so the wake-up can come before the hold is over by the gate's clock; here the
    gate's clock runs at half speed to make that happen every time."""
    start = time.monotonic()
    gate = FairGate(slots=4, queue_limit=100, max_wait=5, clock=lambda: start + (time.monotonic() - start) / 2)
    await gate.acquire("a", 0.5, in_progress=False)
    gate.release("a")  # pair a: active, served once
    for _ in range(2):
        await gate.acquire("b", 0.5, in_progress=False)
        gate.release("b")  # pair b: served twice, so its next turn is held for a
    t0 = time.perf_counter()
    await asyncio.wait_for(gate.acquire("b", 0.5, in_progress=False), 1.0)
    assert time.perf_counter() - t0 < 0.1, "the held turn was given only by the wait's own timeout"


async def test_read_slots_bound_bodies_read_at_once_and_append_slots_bound_commits_too():
    """A piece that has read its body gives its read slot to the next piece while Redis
    commits it (so commits still group); it keeps its append slot until the commit is done."""
    gate = FairGate(slots=2, queue_limit=100, max_wait=5, read_slots=1)
    await gate.acquire("a", 0.5, False)
    second = asyncio.create_task(gate.acquire("a", 0.5, False))
    await asyncio.sleep(0.01)
    assert not second.done(), "two bodies read at once with one read slot"
    gate.read_done()  # the first piece is read; its commit is under way
    await asyncio.wait_for(second, 1)
    gate.read_done()
    third = asyncio.create_task(gate.acquire("a", 0.5, False))
    await asyncio.sleep(0.01)
    assert not third.done(), "a third piece let in while both append slots are committing"
    gate.release("a", reading=False)
    await asyncio.wait_for(third, 1)
    gate.release("a", reading=False)
    gate.release("a")  # the third gives both its slots back
    assert gate.inflight == gate.reading == 0


async def test_a_slow_client_gives_its_slot_back_while_its_body_trickles_in_and_nothing_stays_held(
        tmp_path, valkey, http):
    """One slot, read slot included: a PATCH whose body trickles in for longer than SLOW_READ
    lets another upload's PATCH through meanwhile; once both are done the gate holds nothing."""
    gw = await Gateway(make_settings(tmp_path, valkey.url, append_slots=1, append_read_slots=1)).start()
    writer = None
    try:
        slow_url, fast_url = await create(http, gw, 100), await create(http, gw, 100)
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write((f"PATCH {urlsplit(slow_url).path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
                      "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
                      "Content-Length: 100\r\n\r\n").encode() + b"x" * 10)
        await writer.drain()
        await asyncio.sleep(SLOW_READ + 0.2)
        # With the slot still held this would wait out append_max_wait_ms and get a 503.
        resp = await asyncio.wait_for(patch(http, fast_url, 0, b"y" * 100), 5)
        assert resp.status == 204 and resp.headers["Upload-Offset"] == "100"
        writer.write(b"x" * 90)
        await writer.drain()
        assert b" 204 " in await asyncio.wait_for(reader.readline(), 5)
        gate = gw.app[TUS_HANDLER].admission.gate
        assert (gate.inflight, gate.reading, sum(gate.per_tenant.values())) == (0, 0, 0)
    finally:
        if writer:
            writer.close()
        await gw.stop()


async def test_stalled_bodies_are_given_up_and_their_memory_goes_back(tmp_path, valkey, http):
    """Clients that send a PATCH head, a byte of the body and then nothing (a dead mobile
    link, or on purpose) hold the memory reserved for their bodies: four checksummed PATCHes
    can take all of it, and every other pair is refused. After body_idle_seconds without a
    byte each is answered 408 (and its connection closed), and the memory is free again."""
    cap = 1 << 20  # the byte budget is then 4 x cap: four stalled checksummed PATCHes fill it
    settings = make_settings(tmp_path, valkey.url, entry_bytes=4096, checksum_patch_max_bytes=cap,
                             body_idle_seconds=1.0)
    gw = await Gateway(settings).start()
    stalled = []
    try:
        urls = [await create(http, gw, cap) for _ in range(5)]
        for url in urls[:4]:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write((f"PATCH {urlsplit(url).path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
                          "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
                          f"Upload-Checksum: sha1 {'A' * 27}=\r\nContent-Length: {cap}\r\n\r\n").encode() + b"x")
            await writer.drain()
            stalled.append((reader, writer))
        for reader, _ in stalled:
            assert b" 408 " in await asyncio.wait_for(reader.readline(), 10)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert b"Connection: close" in head and b"Upload-Offset: 0" in head
        assert gw.app[TUS_HANDLER].admission.bytes.used == 0
        resp = await patch(http, urls[4], 0, b"y" * 10)
        assert resp.status == 204
        async with http.head(urls[0], headers=TUS) as resp:
            assert resp.headers["Upload-Offset"] == "0"  # nothing of a stalled body was stored
    finally:
        for _, writer in stalled:
            writer.close()
        await gw.stop()


def test_read_slots_below_one_are_refused_with_the_setting_named():
    with pytest.raises(ConfigError, match="append_read_slots"):
        load(env={"UNGGAH_APPEND_READ_SLOTS": "0"})


async def test_tenants_take_turns_whatever_their_number_of_waiters():
    gate = FairGate(slots=2, queue_limit=100, max_wait=5)
    await gate.acquire("big", 0.5, False)
    await gate.acquire("big", 0.5, False)
    granted = []

    async def one(tenant):
        await gate.acquire(tenant, 0.5, False)
        granted.append(tenant)

    tasks = [asyncio.create_task(one("big")) for _ in range(6)] + [asyncio.create_task(one("small"))]
    await asyncio.sleep(0.01)
    gate.release("big")
    await asyncio.sleep(0.01)
    assert granted == ["small"], "the tenant with one operator goes before the tenant that already holds slots"
    for t in tasks:
        t.cancel()


async def test_one_operator_gets_a_fair_share_of_slots_against_eight():
    """The gate's share under contention: every piece costs the same slot time here, so the
    single operator's share of grants is its share of append capacity."""
    gate = FairGate(slots=16, queue_limit=1000, max_wait=10)
    grants = {"many": 0, "one": 0}
    stop = asyncio.get_running_loop().time() + 1.5

    async def operator(tenant):
        while asyncio.get_running_loop().time() < stop:
            await gate.acquire(tenant, 0.5, in_progress=False)
            try:
                await asyncio.sleep(0.002)  # reading and committing a piece
                grants[tenant] += 1
            finally:
                gate.release(tenant)
            await asyncio.sleep(0)  # the client sends its next request at once

    await asyncio.gather(*[operator("many") for _ in range(8)], operator("one"))
    share = grants["one"] / (grants["one"] + grants["many"])
    assert share >= 0.40, f"the single operator got {share:.0%} of the slots ({grants})"


def test_retry_after_is_spread_between_once_and_twice_the_pause():
    assert {retry_after(1) for _ in range(200)} == {"1", "2"}
    assert {int(retry_after(5)) for _ in range(500)} == set(range(5, 11))


async def test_overload_at_three_times_capacity_sheds_politely(tmp_path, valkey, r):
    """Many more uploaders than the gateway admits: every refusal is a 503 with a spread
    Retry-After, answered at once; no request times out; every upload that was started completes."""
    settings = make_settings(tmp_path, valkey.url, append_slots=1, append_queue=6, append_max_wait_ms=500)
    gw = await Gateway(settings).start()
    chunk = os.urandom(64 * 1024)
    refusals, refusal_times, completed, started, retry_afters = [], [], [], [], []
    try:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async def uploader():
                size = 16 * len(chunk)
                while True:
                    async with http.post(gw.files, headers=dict(TUS, **{"Upload-Length": str(size)})) as resp:
                        if resp.status == 201:
                            url = resp.headers["Location"]
                            break
                        assert resp.status == 503 and resp.headers["Retry-After"]
                        await asyncio.sleep(0.05)
                started.append(url)
                off = 0
                while off < size:
                    t0 = time.monotonic()
                    async with http.patch(url, data=chunk, headers=dict(OCTET, **{"Upload-Offset": str(off)})) as resp:
                        if resp.status == 204:
                            off = int(resp.headers["Upload-Offset"])
                            continue
                        assert resp.status == 503, resp.status
                        retry_afters.append(int(resp.headers["Retry-After"]))
                        refusals.append(resp.headers["Unggah-Reason"])
                        refusal_times.append(time.monotonic() - t0)
                        if "Upload-Offset" in resp.headers:
                            off = int(resp.headers["Upload-Offset"])
                    # Honour Retry-After, scaled down so the test stays short.
                    await asyncio.sleep(0.05)
                completed.append(url)

            await asyncio.gather(*[uploader() for _ in range(48)])
    finally:
        await gw.stop()
    assert refusals, "the gateway was never overloaded: raise the number of uploaders"
    assert len(completed) == len(started) == 48
    refusal_times.sort()
    assert set(refusals) <= {"gateway-busy", "queue-timeout", "gateway-memory"}
    # Retry-After is spread (1 or 2 s for a busy gateway), so uploaders refused together
    # do not all come back together.
    assert set(retry_afters) <= {1, 2, 3, 4} and min(retry_afters) >= 1
    if len(retry_afters) >= 20:
        assert len(set(retry_afters)) > 1, f"every refusal said Retry-After {retry_afters[0]}"


async def _hgetall_calls(r) -> int:
    stats = await r.info("commandstats")
    return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))


async def test_under_overload_a_known_token_is_refused_without_a_round_trip_and_a_revoked_one_changes_nothing(
        tmp_path, valkey, r):
    """When admission sheds, a request whose token this gateway confirmed recently is answered
    from memory (no token lookup in Redis); a request that is let in always has its token
    confirmed, so a revoked token still changes nothing."""
    from buffer.tenants import TenantStore
    from gateway.app import TUS as TUS_KEY
    settings = make_settings(tmp_path, valkey.url, auth="tokens", append_slots=1)
    tenants = TenantStore(r)
    await tenants.add("pair-a", "Paslon A")
    token, principal = await tenants.issue("pair-a", "Budi")
    auth = {"Authorization": f"Bearer {token}"}
    gw = await Gateway(settings).start()
    gate = gw.app[TUS_KEY].admission.gate
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(gw.files, headers=dict(TUS, **auth, **{"Upload-Length": "6"})) as resp:
                assert resp.status == 201
                url = resp.headers["Location"]
            await gate.acquire("pair-a", 0.5, in_progress=False)  # the only slot is busy...
            gate.release_interval = 10.0  # ...and the queue drains slowly: anything new is shed
            before = await _hgetall_calls(r)
            async with http.patch(url, data=b"abc", headers=dict(OCTET, **auth, **{"Upload-Offset": "0"})) as resp:
                assert resp.status == 503 and resp.headers["Unggah-Reason"] == "gateway-busy"
                assert int(resp.headers["Retry-After"]) >= 1
            assert await _hgetall_calls(r) == before, "a shed request needs no token lookup"

            await tenants.revoke(principal.token_hash[:12])
            gate.release("pair-a")
            gate.release_interval = 0.0
            async with http.patch(url, data=b"abc", headers=dict(OCTET, **auth, **{"Upload-Offset": "0"})) as resp:
                assert resp.status == 401, "a request that is let in has its token confirmed"
        upload_id = url.rsplit("/", 1)[1]
        assert await r.hget(keys.upload(gw.app[TUS_KEY].store.partition(upload_id), upload_id), "offset") == b"0"
    finally:
        await gw.stop()


async def test_a_refused_request_leaves_no_garbage_for_the_collector(tmp_path, valkey, r):
    """Under overload most requests are refused. A refusal raised from a local variable made a
    reference cycle (the exception's traceback holds the frame, the frame holds the exception)
    that kept the whole request alive until a garbage collection found it. Refusals must be
    freed by reference counting alone: gateway busy, buffer full (appends) and buffer high
    (creations)."""
    import gc

    from aiohttp import web
    settings = make_settings(tmp_path, valkey.url, append_slots=1)
    gw = await Gateway(settings).start()
    tus = gw.app[TUS_HANDLER]
    gate, watch = tus.admission.gate, tus.admission.buffer
    try:
        async with aiohttp.ClientSession() as http:
            url = await create(http, gw, 100)
            await gate.acquire("public", 0.5, in_progress=False)  # the only slot is busy...
            gate.release_interval = 10.0  # ...and the queue drains slowly: anything new is shed
            gc.collect()
            gc.disable()
            gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds stays in gc.garbage
            try:
                for _ in range(5):
                    resp = await patch(http, url, 0, b"abc")
                    assert resp.status == 503 and resp.headers["Unggah-Reason"] == "gateway-busy"
                for p in range(settings.partitions):
                    await r.set(keys.buffered_bytes(p), 1 << 40)
                deadline = time.monotonic() + 5
                while watch.fill < watch.budget:
                    assert time.monotonic() < deadline, "the gateway never saw the buffer full"
                    await asyncio.sleep(0.05)
                for _ in range(5):
                    resp = await patch(http, url, 0, b"abc")
                    assert resp.status == 503 and resp.headers["Unggah-Reason"] == "buffer-full"
                    async with http.post(gw.files, headers=dict(TUS, **{"Upload-Length": "6"})) as resp:
                        assert resp.status == 503 and resp.headers["Unggah-Reason"] == "buffer-high"
                gc.collect()
                cyclic = [type(o).__name__ for o in gc.garbage if isinstance(o, (Refused, web.BaseRequest))]
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
                gc.enable()
            assert cyclic == []
    finally:
        await gw.stop()
