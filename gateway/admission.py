"""Admission control: keep the gateway and Redis up, and share them fairly, near the deadline.

Waiting is the default, refusing the exception. Every standard tus client (tus-js-client
and Uppy above it, tuspy) gives an upload up after a few retries and ignores Retry-After,
so a refused append of an upload in progress is an upload lost to its team. A waiting
connection costs kernel buffers, not gateway memory (gateway/reads.py), so work already
admitted waits its turn; only new work is held back, and only under sustained overload.

Four guards, each answering a different question:

- BufferWatch: is the buffer filling faster than the ingesters drain it? While what it
  holds and the bytes admitted uploads still have to send pass the high watermark, new
  uploads are held (CreationGate); at the budget appends are refused too
  (the APPEND script enforces the per-partition share atomically). Those are the only
  refusals of an append in normal operation: nothing else can hold the bytes.
- FairGate: whose piece is read and committed next? Up to `append_slots` at once,
  of which at most `append_read_slots` are having their bodies read (the CPU-heavy
  part; a piece waiting for Redis to commit it has given its read slot back, so commits
  still group); the rest wait in per-tenant queues served in turn. While several tenants
  are active, each may have only `append_tenant_slots` pieces in progress whatever its
  number of operators, so eight connections cannot outrun one; within a tenant the
  upload nearest completion goes first. A piece is never refused for being busy: it
  waits up to `append_max_wait_ms`, a bound chosen below the shortest request timeout
  a real client or proxy applies (docs/operations.md). Only a queue past `append_queue`
  (a memory bound: each waiter holds a few KiB) refuses, and creation control keeps the
  queue far below that.
- CreationGate: may a new upload start now? Load is shed here, where a refusal costs a
  client nothing it has sent. While the work already admitted would take longer than
  `create_target_wait_ms` (the active uploads' bytes still to come over the bytes committed
  per second while pieces waited: measured over time, not one queue length at one instant),
  a creation is held, and let in as that work drains. It is refused (503 with Retry-After)
  only after `create_hold_ms` of holding, that is when arrivals have stayed beyond capacity
  for that long. A closed group of clients, however large, cannot do that: their held
  creations add no work, so the backlog drains and lets them in.
- ByteBudget: how much request body may this process hold in memory? A piece reserves
  its bytes once it has its turn, just before its body is read, and waits for them, so
  memory stays bounded whatever the number of connections.

Refusals use 503 + Retry-After: every standard tus client retries 5xx (tus-js-client
does not retry 429).
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import logging
import time
from contextlib import asynccontextmanager

from gateway.background import Every
from typing import Callable

log = logging.getLogger("unggah.admission")

# A tenant seen this recently counts as active even between its requests, so a
# single sequential operator is not starved by a tenant with many connections.
ACTIVE_WINDOW = 0.2
# When the next turn belongs to an active tenant whose next request has not arrived
# yet (a single operator between two PATCHes), hold the turn this long for it before
# giving it to a tenant that just had one: anticipatory scheduling, bounded.
ANTICIPATE = 0.006
# An upload that made no progress for this long no longer counts as work to come when
# deciding on new uploads (CreationGate): its client paused or went away.
UPLOAD_IDLE = 10.0
# Bytes committed per second are measured over windows at least this long.
RATE_WINDOW = 1.0


class Refused(Exception):
    def __init__(self, reason: str, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after


class FairGate:
    """The append slots, shared fairly between tenants, completion first within each.

    Its state is seven pieces that must agree; `invariants()` names any that do not, and the
    tests check it after every step of random schedules (tests/test_admission.py):

    1. 0 <= reading <= inflight <= slots, and reading <= read_slots; aside >= 0.
    2. Slots in use are the sum over tenants: inflight == sum(per_tenant), none negative.
    3. n_waiting == the pieces in the tenants' queues, and each waiting future is in exactly
       one queue, not yet resolved.
    4. `turns` holds each tenant with a waiting piece exactly once, and no other (a tenant
       whose queue emptied leaves it when its turn comes round: an empty queue may linger
       in `turns` until then, never the other way round).
    5. Every tenant holding a slot or waiting is known: in last_seen, with a `served` count;
       `served` counts no tenant that last_seen has forgotten.
    """

    def __init__(self, slots: int, queue_limit: int, max_wait: float, clock=time.monotonic,
                 contended_slots: int = 1, read_slots: int | None = None,
                 on_release: Callable[[], None] | None = None) -> None:
        self.slots = slots
        # Of the granted pieces, how many may be reading their bodies at once (see read_done).
        self.read_slots = slots if read_slots is None else min(read_slots, slots)
        # With several tenants active, each may have this many pieces in progress: per-tenant
        # concurrency, not slot count, is what lets eight connections outrun one.
        self.contended_slots = contended_slots
        self.queue_limit = queue_limit
        self.max_wait = max_wait
        self.clock = clock
        # Called after every release, once the freed slot is given: the creation gate
        # lets a held creation in as the backlog drains.
        self.on_release = on_release
        self.inflight = 0
        self.reading = 0
        self.n_waiting = 0
        # Pieces whose slow bodies are being read outside a slot (Turn.read): each will queue
        # again for its commit, so it counts in the predicted wait.
        self.aside = 0
        self.per_tenant: collections.Counter[str] = collections.Counter()
        # Per tenant: a heap of the waiting pieces, most urgent first (see _urgency); each
        # (urgency, arrival number, future).
        self.waiting: dict[str, list[tuple[float, int, asyncio.Future]]] = {}
        self._arrivals = itertools.count()
        self.turns: collections.deque[str] = collections.deque()
        self.last_seen: dict[str, float] = {}
        # Pieces granted per active tenant: no tenant may run more than one ahead of another
        # active one (for at most ANTICIPATE while that one is between requests).
        self.served: collections.Counter[str] = collections.Counter()
        self.hold_until = 0.0
        self._hold_timer: asyncio.TimerHandle | None = None
        # Mean time between two commits: how fast the queue drains, to predict a newcomer's wait.
        # Slots handed back by slow readers (step_aside) are not commits and are not measured.
        self.release_interval = 0.0
        self._last_release = 0.0

    def invariants(self) -> list[str]:
        """The invariants of the class docstring that do not hold now (none, in a sound gate)."""
        broken = []
        if not (0 <= self.reading <= self.inflight <= self.slots and self.reading <= self.read_slots):
            broken.append(f"1: reading {self.reading}, inflight {self.inflight}, slots {self.slots}/{self.read_slots}")
        if self.aside < 0:
            broken.append(f"1: aside {self.aside}")
        if self.inflight != sum(self.per_tenant.values()) or any(n < 0 for n in self.per_tenant.values()):
            broken.append(f"2: inflight {self.inflight} but per tenant {dict(self.per_tenant)}")
        futures = [item[2] for queue in self.waiting.values() for item in queue]
        if self.n_waiting != len(futures):
            broken.append(f"3: n_waiting {self.n_waiting} but {len(futures)} in the queues")
        if len({id(f) for f in futures}) != len(futures) or any(f.done() for f in futures):
            broken.append("3: a waiting future is in two places, or already resolved")
        if len(set(self.turns)) != len(self.turns):
            broken.append(f"4: a tenant twice in turns {list(self.turns)}")
        if missing := {t for t, q in self.waiting.items() if q} - set(self.turns):
            broken.append(f"4: tenants waiting without a turn: {sorted(missing)}")
        busy = {t for t, n in self.per_tenant.items() if n} | {t for t, q in self.waiting.items() if q}
        if unknown := busy - set(self.last_seen):
            broken.append(f"5: tenants at work but not in last_seen: {sorted(unknown)}")
        if stale := {t for t, n in self.served.items()} - set(self.last_seen):
            broken.append(f"5: served counts forgotten tenants: {sorted(stale)}")
        return broken

    def predicted_wait(self) -> float:
        """How long a piece queued now would wait: the pieces ahead of it times the measured
        time between two commits (Little's law). The interval is a moving average over
        recent commits, so one burst does not make the gateway look overloaded."""
        return (self.n_waiting + self.aside) * self.release_interval

    def _active(self, now: float) -> int:
        for t, seen in list(self.last_seen.items()):
            if now - seen > ACTIVE_WINDOW and not self.per_tenant[t] and not self.waiting.get(t):
                del self.last_seen[t]
                del self.served[t]
        return max(1, len(self.last_seen))

    def _arrive(self, tenant: str) -> None:
        if tenant not in self.last_seen:
            # A newcomer starts level with the least served, not with a head start of credit.
            self.served[tenant] = min((self.served[t] for t in self.last_seen), default=0)
        self.last_seen[tenant] = self.clock()

    def cap(self) -> int:
        active = self._active(self.clock())
        return self.slots if active == 1 else max(1, min(self.contended_slots, self.slots // active))

    def _room(self) -> bool:
        return self.inflight < self.slots and self.reading < self.read_slots

    def _grant(self, tenant: str) -> None:
        self.inflight += 1
        self.reading += 1
        self.per_tenant[tenant] += 1
        self.served[tenant] += 1

    def _behind(self, tenant: str, now: float) -> list[str]:
        """Active tenants with nothing waiting that `tenant` is already ahead of: their next
        request is owed the turn `tenant` would take."""
        mine = self.served[tenant]
        return [t for t, seen in self.last_seen.items()
                if t != tenant and self.served[t] < mine and not self.waiting.get(t) and now - seen <= ACTIVE_WINDOW]

    def _owed(self, tenant: str, now: float) -> bool:
        return bool(self._behind(tenant, now))

    def _holding(self, tenant: str) -> bool:
        now = self.clock()
        behind = self._behind(tenant, now)
        if not behind:
            return False
        if not self.hold_until:
            self.hold_until = now + ANTICIPATE
        if now < self.hold_until:
            self._wake_when_hold_ends(now)
            return True
        # Waited long enough: the turn passes on, and the absent tenants lose the turns they missed.
        self.hold_until = 0.0
        for t in behind:
            self.served[t] = self.served[tenant]
        return False

    def _wake_when_hold_ends(self, now: float) -> None:
        """Dispatch again once the hold is over. uvloop schedules timers from the time cached at
        the start of its loop turn, so a wake-up can come early by our clock: then it re-arms
        (a held turn must never wait for an unrelated event, or for its request's timeout)."""
        if self._hold_timer is None:
            self._hold_timer = asyncio.get_running_loop().call_later(self.hold_until - now + 0.001, self._hold_over)

    def _hold_over(self) -> None:
        self._hold_timer = None
        self._dispatch()

    def _free_for(self, tenant: str) -> bool:
        return (self._room() and not self.n_waiting and self.per_tenant[tenant] < self.cap()
                and not self._owed(tenant, self.last_seen[tenant]))

    async def acquire(self, tenant: str, progress: float) -> None:
        """Wait for a commit slot, fairly between tenants and completion first. Raise Refused
        only when the queue is at its memory bound or the wait passed max_wait: being busy
        is no reason to refuse work a client has already started."""
        self._arrive(tenant)
        if self._free_for(tenant):
            self._grant(tenant)
            return
        if self.n_waiting >= self.queue_limit:
            # Raised, not held in a local first: a traceback holding this frame would then hold
            # the exception, a cycle that keeps the request alive until the next GC collection.
            raise Refused("gateway-queue-full", "the gateway holds as many waiting requests as it may; "
                          "your bytes so far are safe, retry after the pause", retry_after=2)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        queue = self.waiting.setdefault(tenant, [])
        heapq.heappush(queue, (self._urgency(progress, self.clock()), next(self._arrivals), fut))
        self.n_waiting += 1
        if tenant not in self.turns:
            self.turns.append(tenant)
        self._dispatch()  # a free slot may be this tenant's even though others are waiting
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.max_wait)
        except asyncio.TimeoutError:
            if fut.done():  # granted at the last moment: keep it
                return
            self._forget(tenant, fut)
            raise Refused("queue-timeout", "waited too long for the gateway; your bytes so far are safe, "
                          "retry after the pause", retry_after=2) from None
        except asyncio.CancelledError:
            if fut.done():
                self.release(tenant)
            else:
                self._forget(tenant, fut)
            raise

    def _urgency(self, progress: float, since: float) -> float:
        """Completion first, with ageing: a waiter's priority is its progress plus one full
        unit per max_wait spent waiting, so an upload that just started is still served
        before it would time out, while uploads nearly done keep going first. That orders
        waiters the same at every moment as progress - since / max_wait does, so the order
        is fixed when a piece queues (a heap keeps it; lowest first, hence the sign)."""
        return since / self.max_wait - progress

    def _pop(self, queue: list) -> asyncio.Future:
        """The most urgent waiter of `queue` (ties: first come), out of the queue."""
        self.n_waiting -= 1
        return heapq.heappop(queue)[2]

    def _forget(self, tenant: str, fut: asyncio.Future) -> None:
        queue = self.waiting.get(tenant, [])
        for i, item in enumerate(queue):
            if item[2] is fut:
                # A timeout or a cancelled request: rare, so a linear search and re-heap will do.
                queue[i] = queue[-1]
                queue.pop()
                heapq.heapify(queue)
                self.n_waiting -= 1
                break
        fut.cancel()

    def read_done(self) -> None:
        """A granted piece has its body read and checked: its read slot goes to the next waiter
        while the piece is committed (it keeps its place in append_slots and its tenant's count)."""
        self.reading -= 1
        self._dispatch()

    def release(self, tenant: str, reading: bool = True) -> None:
        """A granted piece is done; `reading`: it had not called read_done (it failed before
        its commit, so its time is not measured as a commit's)."""
        self._free(tenant, reading)
        now = self.clock()
        if not reading:
            if self._last_release:
                gap = min(now - self._last_release, 1.0)
                # The first gap measured sets the interval; from 0 it would take dozens of
                # commits to catch up, and meanwhile the gateway would look idle.
                self.release_interval = gap if not self.release_interval else (
                    self.release_interval + 0.05 * (gap - self.release_interval))
            self._last_release = now
        self._dispatch()
        if self.on_release is not None:
            self.on_release()

    def step_aside(self, tenant: str) -> None:
        """A granted piece's body is arriving slowly: its slot goes to the next waiter while it
        trickles in, and it counts as waiting until it queues again (come_back)."""
        self._free(tenant, True)
        self.aside += 1
        self._dispatch()

    def come_back(self) -> None:
        self.aside -= 1

    def _free(self, tenant: str, reading: bool) -> None:
        self.inflight -= 1
        if reading:
            self.reading -= 1
        self.per_tenant[tenant] -= 1
        self.last_seen[tenant] = self.clock()

    def _dispatch(self) -> None:
        cap = self.cap()
        idle_turns = 0
        while self._room() and self.turns and idle_turns < len(self.turns):
            tenant = self.turns[0]
            self.turns.rotate(-1)
            queue = self.waiting.get(tenant)
            if not queue:
                self.turns.remove(tenant)
                idle_turns = 0
                continue
            if self.per_tenant[tenant] >= cap or self._holding(tenant):
                idle_turns += 1
                continue
            fut = self._pop(queue)
            if not queue:
                self.turns.remove(tenant)
            self._grant(tenant)
            fut.set_result(True)
            idle_turns = 0


class CreationGate:
    """Where load is shed: a new upload starts only while the gateway can serve the work
    already admitted in time. The wait a newcomer would see is the larger of two estimates:

    - the append gate's own (pieces waiting or set aside, times the measured time between
      two commits), which sees only the piece each upload is on now;
    - the bytes every active upload still has to send (from its Upload-Length at creation,
      down as pieces are committed) over the bytes committed per second while the gate was
      saturated. This one sees a whole-file PATCH of 4 MiB as four pieces, not one, and an
      upload just created before its PATCH arrives: without it, creations came in as fast as
      they were asked for and their pieces later waited past append_max_wait_ms.

    The buffer is judged the same way: while what it holds plus the active uploads' bytes to
    come would pass its high watermark, a creation is held too, so the work admitted fits in
    the buffer and its appends are not refused for a full buffer while the ingesters lag.

    While either holds, creations are held in arrival order and let in as it clears (`wake`,
    on every commit and every buffer refresh); a creation held `hold` seconds is refused with
    a Retry-After. Held creations add no work, so only arrivals that stay beyond capacity for
    the whole hold are refused: the definition of sustained overload."""

    def __init__(self, gate: FairGate, target: float, hold: float, buffer: "BufferWatch | None" = None,
                 clock=time.monotonic) -> None:
        self.gate = gate
        self.buffer = buffer
        self.target = target
        self.hold = hold
        self.clock = clock
        self._held: collections.deque[tuple[asyncio.Future, int]] = collections.deque()
        # Bytes still to come: of creations let in and not yet created (`pending`), and of each
        # upload created (`active`: upload id -> [bytes left, when it last made progress]).
        self.pending = 0
        self.active: dict[str, list] = {}
        self.owed = 0
        self._swept = 0.0
        # Bytes committed per second while pieces were waiting for slots (None: not seen yet).
        # Measured only then: a gateway that is not the bottleneck commits what clients send,
        # and a few slow uploads must not make it look slow.
        self.rate: float | None = None
        self._window_start = clock()
        self._window_bytes = 0
        self._window_saturated = True

    @property
    def n_held(self) -> int:
        return sum(1 for f, _ in self._held if not f.done())

    def predicted_wait(self) -> float:
        wait = self.gate.predicted_wait()
        if self.rate:
            self._sweep()
            wait = max(wait, (self.owed + self.pending) / self.rate)
        return wait

    def _closed_by(self) -> str | None:
        """Why a creation may not start now (a refusal's reason), or None."""
        if self.buffer is not None:
            self._sweep()
            if self.buffer.fill + self.owed + self.pending >= self.buffer.high:
                return "buffer-high"
        if self.predicted_wait() > self.target:
            return "gateway-overloaded"
        return None

    def _sweep(self) -> None:
        """Forget uploads that made no progress for UPLOAD_IDLE: their clients went away or
        paused, and their bytes are not coming soon. They count again when they do."""
        now = self.clock()
        if now - self._swept < 0.5:
            return
        self._swept = now
        for upload_id in [u for u, (_, seen) in self.active.items() if now - seen > UPLOAD_IDLE]:
            self.owed -= self.active.pop(upload_id)[0]

    async def admit(self, length: int) -> None:
        """Return when a new upload of `length` bytes may start, its bytes counted as pending
        (the caller gives them back with `created`); raise Refused after `hold` seconds held."""
        if not self._held and self._closed_by() is None:
            self.pending += length
            return
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._held.append((fut, length))
        self.wake()
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.hold)
        except asyncio.TimeoutError:
            if fut.done():  # let in at the last moment
                return
            fut.cancel()
            if self._closed_by() == "buffer-high":
                raise Refused("buffer-high", "the buffer is nearly full (the ingesters are behind), so new uploads "
                              "wait; uploads in progress continue. Nothing was created, start this upload after "
                              "the pause", retry_after=5) from None
            raise Refused("gateway-overloaded", "more uploads are starting than the gateway can take; nothing "
                          "was created, start this upload after the pause",
                          retry_after=max(2, min(60, round(self.predicted_wait())))) from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.pending -= length
            fut.cancel()
            raise

    def created(self, length: int, upload_id: str | None, left: int) -> None:
        """A creation let in by `admit(length)` is over; `upload_id` (None: it failed) has
        `left` bytes to come."""
        self.pending -= length
        if upload_id is not None and left > 0:
            self.owed += left - self.active.get(upload_id, (0,))[0]
            self.active[upload_id] = [left, self.clock()]
        self.wake()

    def committed(self, upload_id: str, n: int, left: int) -> None:
        """`n` bytes of `upload_id` were committed and `left` are still to come."""
        now = self.clock()
        before = self.active.pop(upload_id, (0,))[0]
        self.owed -= before
        if left > 0:
            self.active[upload_id] = [left, now]
            self.owed += left
        self._measure(n, now)
        self.wake()

    def _measure(self, n: int, now: float) -> None:
        self._window_bytes += n
        if not self.gate.n_waiting:
            self._window_saturated = False
        elapsed = now - self._window_start
        if elapsed < RATE_WINDOW:
            return
        sample = self._window_bytes / elapsed
        if self._window_saturated or (self.rate is not None and sample > self.rate):
            # The first saturated window sets the rate; later ones move it a third of the way.
            self.rate = sample if self.rate is None else self.rate + 0.3 * (sample - self.rate)
        self._window_start, self._window_bytes, self._window_saturated = now, 0, bool(self.gate.n_waiting)

    def wake(self) -> None:
        """Let held creations in, oldest first, while the estimate allows: each one's bytes
        count at once, so the next is judged with them."""
        while self._held:
            fut, length = self._held[0]
            if fut.done():  # gave up or timed out
                self._held.popleft()
                continue
            if self._closed_by() is not None:
                break
            self._held.popleft()
            self.pending += length
            fut.set_result(True)


class ByteBudget:
    """Bytes of request bodies this process may hold at once; waiters are served in order."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future]] = collections.deque()

    async def reserve(self, n: int, timeout: float) -> bool:
        """Reserve `n` bytes, waiting at most `timeout` seconds (0: only if there is room now)."""
        n = min(n, self.limit)
        if not self._waiters and self.used + n <= self.limit:
            self.used += n
            return True
        if timeout <= 0:
            return False
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiters.append((n, fut))
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
            return True
        except asyncio.TimeoutError:
            if fut.done():  # granted at the last moment
                return True
            fut.cancel()
            return False
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.free(n)
            fut.cancel()
            raise

    def free(self, n: int) -> None:
        self.used -= min(n, self.limit)
        while self._waiters:
            want, fut = self._waiters[0]
            if fut.done():  # gave up waiting
                self._waiters.popleft()
                continue
            if self.used + want > self.limit:
                break
            self._waiters.popleft()
            self.used += want
            fut.set_result(True)


class BufferWatch:
    """The buffer's fill, refreshed in the background so admission costs no round trip."""

    def __init__(self, store, budget: int, high_ratio: float, partitions: int, interval: float = 0.2,
                 on_refresh: Callable[[], None] | None = None) -> None:
        self.store = store
        self.budget = budget
        self.high = int(budget * high_ratio)
        self.partitions = partitions
        self.interval = interval
        self.fill = 0
        # Called after every refresh: held creations may go in as the ingesters drain.
        self.on_refresh = on_refresh
        self._every = Every(interval, self._step, "buffer watch")

    @property
    def partition_limit(self) -> int:
        # Uploads spread evenly over partitions; a partition may hold twice its share
        # before its appends are refused, so one busy partition does not stop the rest.
        return 2 * self.budget // self.partitions

    async def refresh(self) -> None:
        self.fill = await self.store.buffered()

    async def _step(self) -> None:
        # Redis down: the last value stays, and the error middleware answers requests.
        await self.refresh()
        if self.on_refresh is not None:
            self.on_refresh()

    def start(self) -> None:
        self._every.start()

    async def stop(self) -> None:
        await self._every.stop()

    def append_refusal(self) -> Refused | None:
        if self.fill >= self.budget:
            return Refused("buffer-full", "the buffer is full; your bytes so far are safe, retry after the pause",
                           retry_after=2)
        return None


class Creation:
    """What a creation's handler tells admission: the upload it made, if it made one."""
    upload_id: str | None = None


class Admission:
    def __init__(self, settings, store) -> None:
        self.gate = FairGate(settings.append_slots, settings.append_queue, settings.append_max_wait_ms / 1000,
                             contended_slots=settings.append_tenant_slots, read_slots=settings.append_read_slots)
        self.buffer = BufferWatch(store, settings.buffer_budget, settings.buffer_high_ratio, settings.partitions)
        self.creations = CreationGate(self.gate, settings.create_target_wait_ms / 1000, settings.create_hold_ms / 1000,
                                      buffer=self.buffer)
        # A creation without Upload-Length counts as one piece of work to come.
        self.unknown_length = settings.entry_bytes
        self.gate.on_release = self.buffer.on_refresh = self.creations.wake
        self.bytes = ByteBudget(max(4 * settings.checksum_patch_max_bytes, 64 * settings.entry_bytes))
        self.max_wait = settings.append_max_wait_ms / 1000
        self.body_idle = settings.body_idle_seconds
        self.body_min_rate = settings.body_min_bytes_per_second

    @asynccontextmanager
    async def creation(self, length: int | None):
        """A new upload's admission: held while the gateway is behind (CreationGate). Yields a
        Creation; the handler sets its upload_id once the upload exists, and from then on its
        `length` bytes (None: deferred) count as work to come until they are committed."""
        length = self.unknown_length if length is None else length
        await self.creations.admit(length)
        made = Creation()
        try:
            yield made
        finally:
            self.creations.created(length, made.upload_id, length)

    def committed(self, upload_id: str, n: int, left: int) -> None:
        """`n` bytes of `upload_id` are in the buffer, `left` still to come."""
        self.creations.committed(upload_id, n, left)

    @asynccontextmanager
    async def turn(self, n: int, tenant: str, progress: float):
        """One piece's turn: a slot, then `n` bytes of memory, held while the piece is read
        and committed. Reading a fast client's body is most of a request's cost, so it
        happens inside the slot; see Turn.read for slow clients."""
        await self.gate.acquire(tenant, progress)
        turn = Turn(self.gate, tenant, progress, self.body_idle, self.body_min_rate)
        try:
            # Memory is bounded by waiting for it, not by refusing: slots bound what is reserved.
            if not await self.bytes.reserve(n, self.max_wait):
                raise Refused("gateway-memory", "the gateway is holding as many request bytes as it may; "
                              "retry after the pause", retry_after=1)
            try:
                yield turn
            finally:
                self.bytes.free(n)
        finally:
            if turn.held:
                self.gate.release(tenant, reading=turn.reading)


# A body read slower than this is a slow client, not CPU: it gives its slot back while it waits.
SLOW_READ = 0.25
# How often a slow body's progress is looked at: the stall is found within this of its time.
STALL_POLL = 0.5


class BodyStalled(Exception):
    """No byte of a request body arrived for body_idle_seconds, or fewer than
    body_min_bytes_per_second on average over that long. The turn's slot is held again when
    this is raised, so the caller can still commit what had arrived."""


class Turn:
    def __init__(self, gate: FairGate, tenant: str, progress: float, idle: float, min_rate: float = 0) -> None:
        self.gate = gate
        self.tenant = tenant
        self.progress = progress
        self.idle = idle
        self.min_rate = min_rate
        self.held = True
        self.reading = True

    def read_done(self) -> None:
        """The body is read and checked: what is left, the commit, waits on Redis, not on
        this process's CPU, so the read slot goes to the next piece."""
        if self.held and self.reading:
            self.reading = False
            self.gate.read_done()

    async def read(self, reading, arrived: Callable[[], int]):
        """Await a body read inside the slot; if the client is slow, leave the slot to others
        while it trickles in, then queue again (as work in progress) for the commit.

        The body is given up (BodyStalled, with the slot held again so that what arrived can
        still be committed) when no byte arrives (`arrived`: bytes of the body received so
        far) for `idle` seconds counted from the last one, or when a whole `idle` window
        brings fewer than `min_rate` bytes a second: a trickle of a byte now and then would
        otherwise hold its memory and connection for ever."""
        task = asyncio.ensure_future(reading)
        loop = asyncio.get_running_loop()
        start = loop.time()
        done, _ = await asyncio.wait({task}, timeout=SLOW_READ)
        if done:
            return task.result()
        self.gate.step_aside(self.tenant)
        self.held = False
        stalled = False
        try:
            seen, last_change = arrived(), start
            window_start, window_bytes = start, seen
            while not (await asyncio.wait({task}, timeout=min(self.idle, STALL_POLL)))[0]:
                now, n = loop.time(), arrived()
                if n != seen:
                    seen, last_change = n, now
                if now - last_change >= self.idle:
                    stalled = True
                elif now - window_start >= self.idle:
                    if n - window_bytes < self.min_rate * (now - window_start):
                        stalled = True
                    window_start, window_bytes = now, n
                if stalled:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    break
        finally:
            self.gate.come_back()
        await self.gate.acquire(self.tenant, self.progress)
        self.held = self.reading = True
        if stalled:
            raise BodyStalled()
        return task.result()
