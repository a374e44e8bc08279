"""Admission control: fairness between tenants, completion first, work in progress that
waits instead of being refused, and load shed only at creation under sustained overload."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from urllib.parse import urlsplit

import aiohttp
import pytest

from buffer import keys
from gateway.admission import RATE_WINDOW, SLOW_READ, UPLOAD_IDLE, ByteBudget, CreationGate, FairGate, Refused
from gateway.app import TUS as TUS_HANDLER
from gateway.problems import retry_after
from tests.conftest import OCTET, TUS, Gateway, create, make_settings, patch
from unggah.config import ConfigError, load

MiB = 1 << 20


async def test_completion_first_within_a_tenant():
    gate = FairGate(slots=1, queue_limit=100, max_wait=5)
    await gate.acquire("a", 0.0)  # the slot is taken
    order = []

    async def waiter(progress):
        await gate.acquire("a", progress)
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
        await gate.acquire("a", 0.5)  # the slot is taken
        old = asyncio.create_task(gate.acquire("a", 0.0))
        await asyncio.sleep(0.01)
        now[0] = waited
        new = asyncio.create_task(gate.acquire("a", 0.9))
        await asyncio.sleep(0.01)
        gate.release("a")
        await asyncio.sleep(0.01)
        assert (old.done(), new.done()) == ((True, False) if first == "old" else (False, True)), waited
        for t in (old, new):
            t.cancel()
        await asyncio.gather(old, new, return_exceptions=True)


async def test_a_waiter_that_gives_up_is_forgotten_and_the_order_of_the_rest_holds():
    gate = FairGate(slots=1, queue_limit=100, max_wait=5)
    await gate.acquire("a", 0.0)
    waiting = {p: asyncio.create_task(gate.acquire("a", p)) for p in (0.2, 0.9, 0.6, 0.4)}
    await asyncio.sleep(0)
    waiting.pop(0.9).cancel()  # its client went away
    await asyncio.sleep(0.01)
    assert gate.n_waiting == 3
    gate.release_interval = 0.015
    assert gate.predicted_wait() == pytest.approx(3 * 0.015), "the one that left no longer counts"
    order = []
    for _ in range(3):
        gate.release("a")
        await asyncio.sleep(0.01)
        order += [p for p, t in waiting.items() if t.done() and p not in order]
    assert order == [0.6, 0.4, 0.2]
    gate.release("a")
    assert gate.n_waiting == 0 and gate.inflight == 0


async def test_a_piece_predicted_to_wait_long_waits_for_its_turn_and_is_never_refused():
    """Being busy is no reason to refuse work a client has started: a standard client
    spends one of its four retries on every refusal. A piece behind a long queue waits."""
    gate = FairGate(slots=1, queue_limit=1000, max_wait=5)
    await gate.acquire("a", 0.0)
    gate.release_interval = 1.0  # the queue drains a piece a second: a long predicted wait
    waiters = [asyncio.create_task(gate.acquire("a", 0.0)) for _ in range(50)]
    await asyncio.sleep(0.01)
    assert gate.predicted_wait() == pytest.approx(50.0)
    assert not any(t.done() for t in waiters), "a waiter was refused (or let in) instead of waiting"
    for _ in range(51):
        gate.release("a")
        await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(*waiters), 1)  # every one got its turn, none raised
    assert gate.inflight == 0 and gate.n_waiting == 0


async def test_only_a_queue_at_its_memory_bound_refuses_a_piece():
    gate = FairGate(slots=1, queue_limit=3, max_wait=5)
    await gate.acquire("a", 0.5)
    waiters = [asyncio.create_task(gate.acquire("a", 0.5)) for _ in range(3)]
    await asyncio.sleep(0.01)
    with pytest.raises(Refused) as refused:
        await gate.acquire("a", 0.99)
    assert refused.value.reason == "gateway-queue-full" and refused.value.retry_after >= 1
    assert not any(t.done() for t in waiters)
    for t in waiters:
        t.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)


async def test_a_waiting_piece_is_refused_only_after_max_wait():
    gate = FairGate(slots=1, queue_limit=10, max_wait=0.2)
    await gate.acquire("a", 0.5)
    t0 = time.monotonic()
    with pytest.raises(Refused) as refused:
        await gate.acquire("a", 0.5)
    assert refused.value.reason == "queue-timeout" and time.monotonic() - t0 >= 0.19
    assert gate.n_waiting == 0


async def test_byte_budget_waiters_get_memory_in_turn_and_a_wait_that_runs_out_reserves_nothing():
    budget = ByteBudget(100)
    assert await budget.reserve(80, timeout=0)
    assert not await budget.reserve(30, timeout=0), "no room now and no wait asked: no"
    waiting = asyncio.create_task(budget.reserve(30, timeout=5))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    budget.free(80)
    assert await waiting and budget.used == 30
    assert not await budget.reserve(90, timeout=0.01), "a wait that runs out leaves nothing reserved"
    assert budget.used == 30 and not [w for w in budget._waiters if not w[1].done()]


async def test_a_creation_is_let_in_at_once_while_the_gateway_keeps_up():
    gate = FairGate(slots=1, queue_limit=100, max_wait=5)
    creations = CreationGate(gate, target=0.5, hold=5)
    await asyncio.wait_for(creations.admit(MiB), 0.1)
    assert creations.n_held == 0


@contextlib.asynccontextmanager
async def backlog(waiting: int, interval: float, hold: float = 5.0):
    """A one-slot gate with its slot taken and `waiting` pieces queued, draining a piece every
    `interval` seconds by its estimate, and a creation gate (target 0.5 s) woken by its releases."""
    gate = FairGate(slots=1, queue_limit=100, max_wait=5)
    creations = CreationGate(gate, target=0.5, hold=hold)
    gate.on_release = creations.wake
    await gate.acquire("a", 0.5)
    waiters = [asyncio.create_task(gate.acquire("a", 0.5)) for _ in range(waiting)]
    await asyncio.sleep(0.01)
    gate.release_interval = interval
    try:
        yield gate, creations
    finally:
        for t in waiters:
            t.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


async def test_a_creation_is_held_while_the_backlog_is_long_and_let_in_as_it_drains():
    async with backlog(4, 0.2) as (gate, creations):  # 4 x 0.2 s: 0.8 s, above the 0.5 s target
        held = asyncio.create_task(creations.admit(MiB))
        await asyncio.sleep(0.01)
        assert not held.done() and creations.n_held == 1
        gate.release("a")  # 3 waiting: 0.6 s, still above
        await asyncio.sleep(0.01)
        assert not held.done()
        gate.release("a")  # 2 waiting: 0.4 s, under the target: the held creation goes in
        await asyncio.wait_for(held, 1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def measured(rate: float, target: float = 0.5, hold: float = 5.0) -> tuple[FairGate, CreationGate, Clock]:
    """An idle append gate and a creation gate that has measured `rate` bytes/s."""
    clock = Clock()
    gate = FairGate(slots=1, queue_limit=100, max_wait=5, clock=clock)
    creations = CreationGate(gate, target=target, hold=hold, clock=clock)
    creations.rate = rate
    return gate, creations, clock


async def test_a_whole_upload_counts_as_work_to_come_from_its_creation_until_its_bytes_are_committed():
    """A 4 MiB whole-file PATCH is one piece in the append queue at a time; counted by the
    bytes it still has to send, two such uploads at 10 MiB/s are 0.8 s of work, so a third
    is held (target 0.5 s) until enough of theirs is committed, and is let in then."""
    _, creations, _ = measured(rate=10 * MiB)
    for upload_id in ("a", "b"):
        await asyncio.wait_for(creations.admit(4 * MiB), 0.1)  # 0 s, then 0.4 s: under the target
        creations.created(4 * MiB, upload_id, 4 * MiB)
    assert creations.predicted_wait() == pytest.approx(0.8)
    third = asyncio.create_task(creations.admit(4 * MiB))
    await asyncio.sleep(0.01)
    assert not third.done() and creations.n_held == 1
    creations.committed("a", 2 * MiB, 2 * MiB)  # 6 MiB to come: 0.6 s
    await asyncio.sleep(0.01)
    assert not third.done()
    creations.committed("a", 2 * MiB, 0)  # a is complete: 0.4 s
    await asyncio.wait_for(third, 1)
    assert creations.predicted_wait() == pytest.approx(0.8), "the third's bytes count from the moment it is let in"


async def test_held_creations_are_let_in_in_arrival_order_as_the_work_drains():
    _, creations, _ = measured(rate=10 * MiB)
    await creations.admit(8 * MiB)
    creations.created(8 * MiB, "big", 8 * MiB)
    order = []

    async def create(i):
        await creations.admit(2 * MiB)
        order.append(i)

    held = [asyncio.create_task(create(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    assert order == []
    creations.committed("big", 4 * MiB, 4 * MiB)  # 0.4 s to come: room for one 2 MiB upload
    await asyncio.sleep(0.01)
    assert order == [0]
    creations.committed("big", 2 * MiB, 2 * MiB)  # 0.4 s with the first's: room for one more
    await asyncio.sleep(0.01)
    assert order == [0, 1]
    for t in held:
        t.cancel()
    await asyncio.gather(*held, return_exceptions=True)
    assert creations.n_held == 0


async def test_an_upload_that_makes_no_progress_stops_counting_as_work_to_come():
    _, creations, clock = measured(rate=MiB)
    await creations.admit(10 * MiB)
    creations.created(10 * MiB, "paused", 10 * MiB)
    assert creations.predicted_wait() == pytest.approx(10.0)
    clock.now += UPLOAD_IDLE + 1
    assert creations.predicted_wait() == 0.0, "a paused client's bytes held new uploads back"
    creations.committed("paused", MiB, 9 * MiB)  # it came back
    assert creations.predicted_wait() == pytest.approx(9.0)


async def test_the_commit_rate_is_measured_only_while_pieces_wait_for_slots():
    """Without waiters the gateway commits what clients send, not what it can: a few slow
    uploads must not make it look slow. A saturated window sets the rate."""
    gate, creations, clock = measured(rate=None)
    for _ in range(3):  # idle: nothing waits
        clock.now += RATE_WINDOW / 2
        creations.committed("slow", 1000, MiB)
    assert creations.rate is None
    await gate.acquire("a", 0.5)
    waiter = asyncio.create_task(gate.acquire("a", 0.5))
    await asyncio.sleep(0.01)
    clock.now += RATE_WINDOW / 2
    creations.committed("fast", 3 * MiB, MiB)  # window start: saturated from here
    clock.now += RATE_WINDOW
    creations.committed("fast", 4 * MiB, 0)
    assert creations.rate == pytest.approx(4 * MiB / RATE_WINDOW)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)


async def test_a_slow_reader_set_aside_still_counts_as_waiting_and_its_hand_back_is_not_a_commit():
    clock = Clock()
    gate = FairGate(slots=1, queue_limit=100, max_wait=5, clock=clock)
    gate.release_interval = 0.1
    await gate.acquire("a", 0.5)
    gate.step_aside("a")
    assert gate.inflight == 0 and gate.predicted_wait() == pytest.approx(0.1)
    clock.now += 0.001
    await gate.acquire("b", 0.5)
    gate.release("b")  # failed before its commit: not measured
    assert gate.release_interval == 0.1
    gate.come_back()
    assert gate.predicted_wait() == 0.0


class Fill:
    """A buffer watch's numbers without Redis: what the buffer holds, its high watermark."""

    def __init__(self, high: int) -> None:
        self.fill, self.high = 0, high


async def test_a_creation_is_held_while_the_buffer_and_the_work_admitted_would_pass_the_high_watermark():
    """The ingesters are behind: the buffer holds 6 MiB of a 10 MiB high watermark, and an
    upload admitted has 4 MiB still to send. A new upload is held, not refused, and let in
    once the ingesters have drained the buffer; one still held when the hold ends is refused
    as buffer-high."""
    buffer = Fill(high=10 * MiB)
    gate = FairGate(slots=1, queue_limit=100, max_wait=5)
    creations = CreationGate(gate, target=5, hold=5, buffer=buffer)
    buffer.fill = 6 * MiB
    await asyncio.wait_for(creations.admit(4 * MiB), 0.1)
    creations.created(4 * MiB, "a", 4 * MiB)
    held = asyncio.create_task(creations.admit(MiB))
    await asyncio.sleep(0.01)
    assert not held.done(), "let in although the buffer would pass its high watermark"
    buffer.fill = 2 * MiB  # the ingesters caught up
    creations.wake()  # what the buffer watch does after each refresh
    await asyncio.wait_for(held, 1)
    creations.hold = 0.05
    buffer.fill = 9 * MiB
    with pytest.raises(Refused) as refused:
        await creations.admit(MiB)
    assert refused.value.reason == "buffer-high" and refused.value.retry_after == 5


async def test_a_creation_held_past_the_hold_is_refused_with_retry_after_from_the_backlog():
    async with backlog(10, 1.0, hold=0.1) as (gate, creations):  # 10 s of backlog
        with pytest.raises(Refused) as refused:
            await creations.admit(MiB)
        assert refused.value.reason == "gateway-overloaded" and refused.value.retry_after == 10
        assert creations.n_held == 0


async def test_a_held_turn_is_given_when_the_hold_ends_even_if_the_loop_timer_fires_early():
    """A pair ahead of another waits at most ANTICIPATE for it, then is served, with no other
    event to wake the gate. uvloop schedules a timer from the time cached at the start of its
    loop turn, so the wake-up can come before the hold is over by the gate's clock; here the
    gate's clock runs at half speed to make that happen every time."""
    start = time.monotonic()
    gate = FairGate(slots=4, queue_limit=100, max_wait=5, clock=lambda: start + (time.monotonic() - start) / 2)
    await gate.acquire("a", 0.5)
    gate.release("a")  # pair a: active, served once
    for _ in range(2):
        await gate.acquire("b", 0.5)
        gate.release("b")  # pair b: served twice, so its next turn is held for a
    t0 = time.perf_counter()
    await asyncio.wait_for(gate.acquire("b", 0.5), 1.0)
    assert time.perf_counter() - t0 < 0.1, "the held turn was given only by the wait's own timeout"


async def test_read_slots_bound_bodies_read_at_once_and_append_slots_bound_commits_too():
    """A piece that has read its body gives its read slot to the next piece while Redis
    commits it (so commits still group); it keeps its append slot until the commit is done."""
    gate = FairGate(slots=2, queue_limit=100, max_wait=5, read_slots=1)
    await gate.acquire("a", 0.5)
    second = asyncio.create_task(gate.acquire("a", 0.5))
    await asyncio.sleep(0.01)
    assert not second.done(), "two bodies read at once with one read slot"
    gate.read_done()  # the first piece is read; its commit is under way
    await asyncio.wait_for(second, 1)
    gate.read_done()
    third = asyncio.create_task(gate.acquire("a", 0.5))
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


async def open_patch(gw, url: str, length: int, first: bytes):
    """A PATCH head and the first bytes of its body, sent by hand; the rest is up to the caller."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write((f"PATCH {urlsplit(url).path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
                  "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
                  f"Content-Length: {length}\r\n\r\n").encode() + first)
    await writer.drain()
    return reader, writer


async def answer_head(reader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    return head


@pytest.mark.parametrize("sent", [5000, 300_000])  # inside the first piece; past the first of 256 KiB pieces
async def test_a_stalled_body_keeps_every_byte_that_arrived_and_is_given_up_at_the_configured_time(
        tmp_path, valkey, http, sent):
    """A streamed PATCH whose client stops sending: every byte that arrived is stored (the
    piece being read included), and the 408 comes body_idle_seconds after the last byte."""
    idle = 1.5
    settings = make_settings(tmp_path, valkey.url, entry_bytes=256 * 1024, body_idle_seconds=idle)
    gw = await Gateway(settings).start()
    writer = None
    try:
        url = await create(http, gw, 1 << 20)
        reader, writer = await open_patch(gw, url, 1 << 20, os.urandom(sent))
        last_byte = time.monotonic()
        head = await answer_head(reader)
        waited = time.monotonic() - last_byte
        assert b" 408 " in head and f"Upload-Offset: {sent}".encode() in head, head
        assert idle <= waited < idle + 1.0, f"408 after {waited:.2f} s, configured {idle} s"
        async with http.head(url, headers=TUS) as resp:
            assert resp.headers["Upload-Offset"] == str(sent), "bytes that arrived before the stall were dropped"
    finally:
        if writer:
            writer.close()
        await gw.stop()


async def test_a_body_that_trickles_below_the_minimum_rate_is_given_up_with_what_it_sent_kept(
        tmp_path, valkey, http):
    """A byte every 0.2 s never leaves the body idle, yet it is not an upload: over a whole
    body_idle_seconds it brings fewer than body_min_bytes_per_second, so it is given up."""
    settings = make_settings(tmp_path, valkey.url, body_idle_seconds=1.0, body_min_bytes_per_second=100)
    gw = await Gateway(settings).start()
    writer = None
    try:
        url = await create(http, gw, 1000)
        reader, writer = await open_patch(gw, url, 1000, b"x")
        answered = asyncio.create_task(answer_head(reader))
        sent = 1
        t0 = time.monotonic()
        while not answered.done() and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.2)
            if not answered.done():
                writer.write(b"x")
                await writer.drain()
                sent += 1
        head = await answered
        assert b" 408 " in head and time.monotonic() - t0 < 4, head
        kept = int(head.split(b"Upload-Offset: ")[1].split(b"\r\n")[0])
        assert 0 < kept <= sent
        async with http.head(url, headers=TUS) as resp:
            assert resp.headers["Upload-Offset"] == str(kept)
    finally:
        if writer:
            writer.close()
        await gw.stop()


def test_read_slots_below_one_are_refused_with_the_setting_named():
    with pytest.raises(ConfigError, match="append_read_slots"):
        load(env={"UNGGAH_APPEND_READ_SLOTS": "0"})


async def test_tenants_take_turns_whatever_their_number_of_waiters():
    gate = FairGate(slots=2, queue_limit=100, max_wait=5)
    await gate.acquire("big", 0.5)
    await gate.acquire("big", 0.5)
    granted = []

    async def one(tenant):
        await gate.acquire(tenant, 0.5)
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
            await gate.acquire(tenant, 0.5)
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


# tus-js-client's default retryDelays (0, 1, 3, 5 s), scaled down so the tests stay short:
# it ignores Retry-After, retries 5xx and gives the upload up after the last delay.
TUSJS_DELAYS = (0.0, 0.01, 0.03, 0.05)


async def tusjs_request(http: aiohttp.ClientSession, method: str, url: str, statuses: list, **kw):
    """One request as tus-js-client's defaults make it: the answer, or None once the upload
    is given up. Every answer's status goes to `statuses`, refusals included."""
    for delay in (*TUSJS_DELAYS, None):
        async with http.request(method, url, **kw) as resp:
            statuses.append((method, resp.status, resp.headers.get("Unggah-Reason", "")))
            if resp.status < 500:
                return resp
            retry_after = resp.headers.get("Retry-After")
        assert retry_after, "a 503 without Retry-After"
        if delay is None:
            return None
        await asyncio.sleep(delay)


class TusJsUploads:
    """Uploads of `size` bytes in chunks of `chunk`, each made as tus-js-client's defaults
    make it (tusjs_request), with what happened to each: creations given up, uploads
    accepted, uploads completed, and every answer's status."""

    def __init__(self, http: aiohttp.ClientSession, files: str, chunk: bytes, size: int) -> None:
        self.http, self.files, self.chunk, self.size = http, files, chunk, size
        self.statuses: list = []
        self.refused_creations: list = []
        self.accepted: list[str] = []
        self.completed: list[str] = []

    async def upload(self) -> None:
        resp = await tusjs_request(self.http, "POST", self.files, self.statuses,
                                   headers=dict(TUS, **{"Upload-Length": str(self.size)}))
        if resp is None:
            self.refused_creations.append(1)
            return
        assert resp.status == 201, resp.status
        url, off = resp.headers["Location"], 0
        self.accepted.append(url)
        while off < self.size:
            resp = await tusjs_request(self.http, "PATCH", url, self.statuses, data=self.chunk,
                                       headers=dict(OCTET, **{"Upload-Offset": str(off)}))
            assert resp is not None, "an accepted upload was given up"
            assert resp.status == 204, resp.status
            off = int(resp.headers["Upload-Offset"])
        self.completed.append(url)


def unbounded_session() -> aiohttp.ClientSession:
    """A client with as many connections as it has uploads, as a page's browser tabs would."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60))


async def test_hundreds_of_impolite_clients_on_one_slot_all_complete_and_no_append_is_refused(
        tmp_path, valkey, r):
    """Congestion collapse, by construction impossible: 256 uploads at once, each client
    retrying as tus-js-client does (at once, ignoring Retry-After, giving up after four
    retries), against a gateway with a single slot, far below what they ask. Appends wait
    their turn, so no refusal is ever sent, no retry is spent, and every upload completes."""
    settings = make_settings(tmp_path, valkey.url, append_slots=1, append_read_slots=1)
    gw = await Gateway(settings).start()
    chunk = os.urandom(16 * 1024)
    try:
        async with unbounded_session() as http:
            uploads = TusJsUploads(http, gw.files, chunk, 4 * len(chunk))
            await asyncio.gather(*[uploads.upload() for _ in range(256)])
    finally:
        await gw.stop()
    assert uploads.refused_creations == [] and len(uploads.completed) == 256
    statuses = uploads.statuses
    refusals = [s for s in statuses if s[1] >= 500]
    assert refusals == [], f"{len(refusals)} refusals, e.g. {refusals[:3]}"
    assert len(statuses) == 256 * 5, "every request was answered once: no retries were needed"


async def test_uploads_arriving_beyond_capacity_are_held_then_refused_at_creation_and_every_accepted_one_completes(
        tmp_path, valkey, r):
    """Open-loop overload: new uploads keep arriving faster than one slot can serve them.
    Load is shed at creation only, after a hold, with Retry-After; nothing that was created
    is refused afterwards, so every upload whose creation was accepted completes."""
    settings = make_settings(tmp_path, valkey.url, append_slots=1, append_read_slots=1,
                             create_target_wait_ms=50, create_hold_ms=200, append_max_wait_ms=10_000)
    gw = await Gateway(settings).start()
    chunk = os.urandom(64 * 1024)
    try:
        async with unbounded_session() as http:
            uploads = TusJsUploads(http, gw.files, chunk, 8 * len(chunk))
            tasks = []
            for _ in range(600):  # one new upload every 2 ms for 1.2 s: far beyond one slot
                tasks.append(asyncio.create_task(uploads.upload()))
                await asyncio.sleep(0.002)
            await asyncio.gather(*tasks)
    finally:
        await gw.stop()
    refusals = [s for s in uploads.statuses if s[1] >= 500]
    assert uploads.refused_creations, "the gateway was never overloaded: raise the arrival rate"
    assert {(m, reason) for m, _, reason in refusals} == {("POST", "gateway-overloaded")}
    assert len(uploads.completed) == len(uploads.accepted) > 0


async def _set_buffer_fill(r, watch, partitions: int, per_partition: int) -> None:
    """Set what the buffer holds, as the ingesters' counters say it, and wait until the
    gateway's watch has seen it."""
    for p in range(partitions):
        await r.set(keys.buffered_bytes(p), per_partition)
    full = per_partition * partitions >= watch.budget
    deadline = time.monotonic() + 5
    while (watch.fill >= watch.budget) != full:
        assert time.monotonic() < deadline, "the gateway never saw the buffer's new fill"
        await asyncio.sleep(0.05)


async def _hgetall_calls(r) -> int:
    stats = await r.info("commandstats")
    return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))


async def test_while_the_buffer_is_full_a_known_token_is_refused_without_a_round_trip_and_a_revoked_one_changes_nothing(
        tmp_path, valkey, r):
    """When the buffer is full, a request whose token this gateway confirmed recently is
    answered from memory (no token lookup in Redis); a request that is let in always has its
    token confirmed, so a revoked token still changes nothing."""
    from buffer.tenants import TenantStore
    from gateway.app import TUS as TUS_KEY
    settings = make_settings(tmp_path, valkey.url, auth="tokens")
    tenants = TenantStore(r)
    await tenants.add("pair-a", "Paslon A")
    token, principal = await tenants.issue("pair-a", "Budi")
    auth = {"Authorization": f"Bearer {token}"}
    gw = await Gateway(settings).start()
    watch = gw.app[TUS_KEY].admission.buffer
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(gw.files, headers=dict(TUS, **auth, **{"Upload-Length": "6"})) as resp:
                assert resp.status == 201
                url = resp.headers["Location"]
            await _set_buffer_fill(r, watch, settings.partitions, 1 << 40)
            before = await _hgetall_calls(r)
            async with http.patch(url, data=b"abc", headers=dict(OCTET, **auth, **{"Upload-Offset": "0"})) as resp:
                assert resp.status == 503 and resp.headers["Unggah-Reason"] == "buffer-full"
                assert int(resp.headers["Retry-After"]) >= 1
            assert await _hgetall_calls(r) == before, "a shed request needs no token lookup"

            await tenants.revoke(principal.token_hash[:12])
            await _set_buffer_fill(r, watch, settings.partitions, 0)
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
    freed by reference counting alone: a full queue, buffer full (appends) and buffer high
    (creations)."""
    import gc

    from aiohttp import web
    # No hold: a creation while the buffer is high is refused at once.
    settings = make_settings(tmp_path, valkey.url, append_slots=1, append_queue=0, create_hold_ms=0)
    gw = await Gateway(settings).start()
    tus = gw.app[TUS_HANDLER]
    gate, watch = tus.admission.gate, tus.admission.buffer
    try:
        async with aiohttp.ClientSession() as http:
            url = await create(http, gw, 100)
            await gate.acquire("public", 0.5)  # the only slot is busy, and no piece may wait
            gc.collect()
            gc.disable()
            gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds stays in gc.garbage
            try:
                for _ in range(5):
                    resp = await patch(http, url, 0, b"abc")
                    assert resp.status == 503 and resp.headers["Unggah-Reason"] == "gateway-queue-full"
                await _set_buffer_fill(r, watch, settings.partitions, 1 << 40)
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


@pytest.mark.parametrize("seed", range(12))
async def test_the_gates_invariants_hold_after_every_step_of_a_random_schedule(seed):
    """Pieces of several tenants arrive, are granted, read, committed, fail before their
    commit, step aside while a body trickles in and come back, give up waiting or time out,
    in a random order; after every step FairGate.invariants() finds nothing broken, and at
    the end every slot is free and nothing waits."""
    rnd = random.Random(seed)
    gate = FairGate(slots=4, queue_limit=50, max_wait=0.05 if seed % 3 == 0 else 30, contended_slots=2,
                    read_slots=3)
    tenants = [f"t{i}" for i in range(rnd.randint(1, 5))]
    waiting: list[tuple[asyncio.Task, str]] = []
    granted: list[tuple[str, bool]] = []  # (tenant, has read its body)
    aside: list[str] = []

    async def piece(tenant: str) -> str:
        await gate.acquire(tenant, rnd.random())
        return tenant

    def check(step: str) -> None:
        assert gate.invariants() == [], f"after {step}"

    for n in range(250):
        op = rnd.random()
        if op < 0.35 or not (waiting or granted or aside):
            tenant = rnd.choice(tenants)
            waiting.append((asyncio.create_task(piece(tenant)), tenant))
            step = f"{n}: {tenant} asks"
        elif op < 0.5 and granted:
            i = rnd.randrange(len(granted))
            tenant, read = granted[i]
            if not read and gate.reading:
                gate.read_done()
                granted[i] = (tenant, True)
                step = f"{n}: {tenant} read its body"
            else:
                granted.pop(i)
                gate.release(tenant, reading=not read)
                step = f"{n}: {tenant} committed" if read else f"{n}: {tenant} failed before its commit"
        elif op < 0.6 and granted:
            tenant, read = granted.pop(rnd.randrange(len(granted)))
            if read:
                gate.release(tenant, reading=False)
                step = f"{n}: {tenant} committed"
            else:
                gate.step_aside(tenant)
                aside.append(tenant)
                step = f"{n}: {tenant} stepped aside"
        elif op < 0.7 and aside:
            tenant = aside.pop(rnd.randrange(len(aside)))
            gate.come_back()
            waiting.append((asyncio.create_task(piece(tenant)), tenant))
            step = f"{n}: {tenant} came back"
        elif op < 0.78 and waiting:
            task, tenant = waiting.pop(rnd.randrange(len(waiting)))
            task.cancel()
            step = f"{n}: a piece of {tenant} gave up"
            try:
                await task
                granted.append((tenant, False))  # granted before the cancel arrived: it holds a slot
            except (asyncio.CancelledError, Refused):
                pass
        else:
            step = f"{n}: time passes"
        await asyncio.sleep(rnd.choice((0, 0, 0.001, 0.01)))
        for task, tenant in [w for w in waiting if w[0].done()]:
            waiting.remove((task, tenant))
            if task.cancelled() or isinstance(task.exception(), Refused):
                continue
            granted.append((tenant, False))
        check(step)

    while waiting or granted or aside:  # drain: every piece ends one way or another
        for tenant in aside:
            gate.come_back()
        aside.clear()
        for tenant, read in granted:
            if not read:
                gate.read_done()
            gate.release(tenant, reading=False)
        granted.clear()
        await asyncio.sleep(0.01)
        for task, tenant in [w for w in waiting if w[0].done()]:
            waiting.remove((task, tenant))
            if not task.cancelled() and task.exception() is None:
                granted.append((tenant, False))
        check("draining")
    assert (gate.inflight, gate.reading, gate.n_waiting, gate.aside) == (0, 0, 0, 0)
