"""The audit trail: every creation, append, refusal, completion, deletion and token event,
hash-chained on disk; `unggah audit verify` detects altered, removed or reordered records."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp
import msgspec
import orjson
import pytest
import redis.asyncio as aioredis

from buffer import keys
from buffer.connection import connect
from buffer.tenants import TenantStore
from ingest.audit import LEASE, Auditor, LeaseLost, audit_dir
from gateway.auditing import ID_CHARS
from tests.conftest import CLUSTER, OCTET, TUS, Gateway, child_env, make_settings, wait_for, wait_stored
from tests.redis_cutter import ReplyCutter
from unggah import auditlog, processes
from unggah.auditlog import Chain, ChainGap, ChainMismatch, chain_path
from unggah.valkey import EmbeddedValkey


def cli(settings, *args):
    return subprocess.run([sys.executable, "-m", "commands.cli", "audit", *args], env=child_env(settings),
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
async def trail(tmp_path, valkey, r, ingester):
    """A secured gateway, one tenant's complete story, and the auditor chaining it."""
    settings = msgspec.structs.replace(ingester.s, auth="tokens")
    store = TenantStore(r)
    await store.add("pair-a", "Paslon A")
    token, principal = await store.issue("pair-a", "Budi")
    auth = {"Authorization": f"Bearer {token}"}
    gw = await Gateway(settings).start()
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.post(gw.files, headers=dict(TUS, **auth, **{"Upload-Length": "6"})) as resp:
            url = resp.headers["Location"]
        async with http.patch(url, data=b"abc", headers=dict(OCTET, **auth, **{"Upload-Offset": "0"})) as resp:
            assert resp.status == 204
        async with http.patch(url, data=b"zzz", headers=dict(OCTET, **auth, **{"Upload-Offset": "0"})) as resp:
            assert resp.status == 409  # refused: recorded with its reason
        async with http.patch(url, data=b"def", headers=dict(OCTET, **auth, **{"Upload-Offset": "3"})) as resp:
            assert resp.status == 204
        await wait_stored(http, url)
        async with http.post(gw.files, headers=dict(TUS, **auth, **{"Upload-Length": "9"})) as resp:
            gone = resp.headers["Location"]
        async with http.delete(gone, headers=dict(TUS, **auth)) as resp:
            assert resp.status == 204
    await gw.stop()
    await store.revoke(principal.token_hash[:12])
    client = connect(settings.redis_url, cluster=settings.redis_cluster)
    auditor = Auditor(settings, client)
    await auditor.ensure_groups()
    assert await auditor.take_lease()
    await auditor.drain_once()
    await client.aclose()
    yield settings, url.rsplit("/", 1)[1], gone.rsplit("/", 1)[1]


def events(settings) -> list[dict]:
    out = []
    for f in sorted(audit_dir(settings).glob("audit-p*.jsonl")):
        out += [orjson.loads(line)["event"] for line in f.read_bytes().splitlines() if line.strip()]
    return out


async def test_every_kind_of_event_is_chained(trail):
    settings, upload, gone = trail
    evs = events(settings)
    kinds = {e["ev"] for e in evs}
    assert {"create", "append", "refused", "stored", "terminate", "tenant-added", "token-issued",
            "token-revoked"} <= kinds
    refused = [e for e in evs if e["ev"] == "refused"]
    assert refused[0]["reason"] == "offset-mismatch" and refused[0]["a"] == "pair-a/Budi"
    appends = [e for e in evs if e["ev"] == "append" and e["u"] == upload]
    assert [(e["o"], e["n"]) for e in appends] == [("0", "3"), ("3", "3")]
    out = cli(settings, "verify")
    assert out.returncode == 0 and "ok" in out.stdout, out.stdout + out.stderr


async def refusal_records(r, settings, upload_id: str, count: int) -> list[dict]:
    """The audit streams' refusal records for one upload, once `count` of them are there
    (the gateway writes them just after their answers)."""
    async def records():
        found = [fields for p in range(settings.partitions) for _, fields in await r.xrange(keys.audit(p))
                 if fields.get(b"ev") == b"refused" and fields.get(b"u") == upload_id.encode()]
        return found if len(found) >= count else None
    return await wait_for(records, timeout=5, interval=0.02)


def _chain_with_most_records(settings) -> Path:
    return max(audit_dir(settings).glob("audit-p*.jsonl"), key=lambda f: len(f.read_bytes().splitlines()))


@pytest.mark.parametrize("tamper", ["alter", "remove", "reorder"])
async def test_tampering_is_detected(trail, tamper):
    settings, _, _ = trail
    path = _chain_with_most_records(settings)
    lines = path.read_bytes().splitlines()
    assert len(lines) >= 3
    if tamper == "alter":
        rec = orjson.loads(lines[1])
        rec["event"]["a"] = "someone-else"
        lines[1] = orjson.dumps(rec)
    elif tamper == "remove":
        del lines[1]
    else:
        lines[1], lines[2] = lines[2], lines[1]
    path.write_bytes(b"\n".join(lines) + b"\n")
    out = cli(settings, "verify")
    assert out.returncode == 1 and "BROKEN at line 2" in out.stdout, out.stdout


@pytest.mark.parametrize("tamper", ["cut the end", "delete a chain", "delete every chain", "rewrite a chain"])
async def test_kept_heads_detect_what_a_chain_alone_cannot(trail, tmp_path, tamper):
    """A chain shows a record altered, removed or reordered inside it, but not records cut from
    its end, a chain file deleted, or a chain rewritten and re-hashed whole. Heads kept outside
    the system (`unggah audit heads`) show those too."""
    settings, _, _ = trail
    out = cli(settings, "heads")
    assert out.returncode == 0, out.stderr
    kept = tmp_path / "heads.json"
    kept.write_text(out.stdout)
    assert cli(settings, "verify", "--heads", str(kept)).returncode == 0
    path = max(audit_dir(settings).glob("audit-p*.jsonl"), key=lambda f: len(f.read_bytes().splitlines()))
    lines = path.read_bytes().splitlines()
    assert len(lines) >= 2
    if tamper == "cut the end":
        path.write_bytes(b"\n".join(lines[:-1]) + b"\n")
        expected = "removed from its end"
    elif tamper == "delete a chain":
        path.unlink()
        expected = "MISSING"
    elif tamper == "delete every chain":
        for f in audit_dir(settings).glob("audit-p*.jsonl"):
            f.unlink()
        expected = "MISSING"
    else:  # alter the first record and chain every record anew: every link checks out
        records = [orjson.loads(line) for line in lines]
        records[0]["event"]["at"] = "0"
        path.unlink()
        Chain(path).append([(r["id"], r["event"]) for r in records])
        expected = "rewritten"
    # What a chain alone cannot see (with the only chain deleted, plain verify finds no chains at all).
    assert cli(settings, "verify").returncode == (0 if list(audit_dir(settings).glob("audit-p*.jsonl")) else 2)
    out = cli(settings, "verify", "--heads", str(kept))
    assert out.returncode == 1 and expected in out.stdout, out.stdout


async def test_an_auditor_that_lost_its_lease_writes_nothing(tmp_path, valkey, r):
    """The lease is checked before every write: an auditor whose lease another took over (its
    drain outlived it) stops instead of writing beside the new one and forking the chain."""
    settings = make_settings(tmp_path, valkey.url, partitions=1)
    client = connect(settings.redis_url, retry=False, cluster=settings.redis_cluster)
    auditor = Auditor(settings, client)
    try:
        await auditor.ensure_groups()
        assert await auditor.take_lease()
        await r.xadd(keys.audit(0), {"event": "test"})
        await r.set(LEASE, "another auditor")
        with pytest.raises(LeaseLost):
            await auditor.drain_once()
        assert not (audit_dir(settings) / "audit-p0.jsonl").exists()
        assert await r.xlen(keys.audit(0)) == 1
    finally:
        await client.aclose()


async def test_auditor_restart_does_not_duplicate(trail, r):
    settings, _, _ = trail
    before = len(events(settings))
    # A second drain (as after a restart that re-reads its pending entries) adds nothing.
    client = connect(settings.redis_url, cluster=settings.redis_cluster)
    auditor = Auditor(settings, client)
    await auditor.drain_once()
    await client.aclose()
    assert len(events(settings)) == before
    assert cli(settings, "verify").returncode == 0


@pytest.mark.skipif(CLUSTER, reason="ReplyCutter proxies one node: a single-node client behind it gets MOVED for the "
                    "slots of the other primaries, and a cluster client learns their addresses and bypasses it")
async def test_a_lost_read_reply_loses_no_audit_record(tmp_path, valkey, r):
    """Valkey delivers a batch to the auditor but the reply never arrives (the connection breaks
    with it in flight), and more events come in meanwhile. The auditor (the real `unggah audit
    run`) still chains every record in stream order, and deletes none it has not chained."""
    cutter = await ReplyCutter(valkey.url).start()
    settings = make_settings(tmp_path, cutter.url, partitions=1)
    stream = keys.audit(0)
    first = [(await r.xadd(stream, {"event": "test", "n": str(i)})).decode() for i in range(5)]
    later: list[str] = []

    async def more_events() -> None:
        later.extend([(await r.xadd(stream, {"event": "test", "n": str(i)})).decode() for i in range(5, 10)])

    cutter.arm(lambda cmd: b"XREADGROUP" in cmd and b"\r\n$1\r\n>\r\n" in cmd, more_events)
    proc = processes.start(processes.command("audit", "run"), env=child_env(settings),
                           log=Path(settings.state_dir) / "audit.log")
    try:
        async def all_moved() -> bool:
            return len(later) == 5 and await r.xlen(stream) == 0
        await wait_for(all_moved)
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 20)  # the loop keeps serving its connections meanwhile
        await cutter.stop()
    assert cutter.cuts == 1
    chained = [orjson.loads(line)["id"] for line in (audit_dir(settings) / "audit-p0.jsonl").read_bytes().splitlines()]
    assert chained == first + later
    assert cli(settings, "verify").returncode == 0


async def test_a_refusal_is_answered_first_and_recorded_while_the_gateway_runs(valkey, r, tmp_path):
    """Refusals are written in batches after their answer, not at shutdown only."""
    settings = make_settings(tmp_path, valkey.url)
    gw = await Gateway(settings).start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(gw.files, headers=dict(TUS, **{"Upload-Length": "3"})) as resp:
                url = resp.headers["Location"]
            async with http.patch(url, data=b"abc", headers=dict(OCTET, **{"Upload-Offset": "2"})) as resp:
                assert resp.status == 409
        found = await refusal_records(r, settings, url.rsplit("/", 1)[1], 1)
        assert found[0][b"reason"] == b"offset-mismatch" and found[0][b"method"] == b"PATCH"
    finally:
        await gw.stop()


async def test_a_refusal_of_a_huge_id_records_only_so_much_of_it(valkey, r, tmp_path):
    """Anyone may send a path of 8 KB; the trail keeps its records for good, so a refusal
    records at most ID_CHARS of the id it was sent."""
    settings = make_settings(tmp_path, valkey.url)
    gw = await Gateway(settings).start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.head(gw.files + "0-" + "a" * 4000, headers=TUS) as resp:
                assert resp.status == 404
        found = await refusal_records(r, settings, "0-" + "a" * (ID_CHARS - 2), 1)
        assert found[0][b"reason"] == b"upload-not-found"
    finally:
        await gw.stop()


async def test_refusal_records_wait_out_a_redis_outage_and_are_written_after_it(tmp_path):
    """Refusals made while Valkey is down are still answered, and their records are kept and
    written, in order, once it is back (with the next refusal's batch)."""
    vk = EmbeddedValkey(tmp_path / "valkey").start()
    settings = make_settings(tmp_path, vk.url)
    gw = await Gateway(settings).start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(gw.files, headers=dict(TUS, **{"Upload-Length": "3"})) as resp:
                url = resp.headers["Location"]
            vk.kill()
            async with http.patch(url, data=b"abc", headers=dict(OCTET, **{"Upload-Offset": "0"})) as resp:
                assert resp.status == 503 and resp.headers["Unggah-Reason"] == "buffer-unavailable"
            vk.start()
            async with http.patch(url, data=b"abc", headers=dict(OCTET, **{"Upload-Offset": "2"})) as resp:
                assert resp.status == 409
        r = aioredis.Redis.from_url(vk.url)
        found = await refusal_records(r, settings, url.rsplit("/", 1)[1], 2)
        await r.aclose()
        assert [f[b"reason"] for f in found] == [b"buffer-unavailable", b"offset-mismatch"]
    finally:
        await gw.stop()
        vk.stop()


def test_an_entry_older_than_the_chain_stops_the_chain_instead_of_being_dropped(tmp_path):
    """A batch redelivered after a crash between fsync and acknowledgement is recognised and
    skipped; an entry the chain never had, older than its last one (as a replayed read once
    produced), stops it with nothing written, so the entry stays in its stream."""
    path = tmp_path / "audit-p0.jsonl"
    assert Chain(path).append([("5-0", {"ev": "a"}), ("6-0", {"ev": "b"})]) == 2
    assert Chain(path).append([("5-0", {"ev": "a"}), ("6-0", {"ev": "b"}), ("7-0", {"ev": "c"})]) == 1
    before = path.read_bytes()
    chain = Chain(path)
    with pytest.raises(ChainGap, match="4-0"):
        chain.append([("4-0", {"ev": "lost"}), ("8-0", {"ev": "d"})])
    assert path.read_bytes() == before
    assert chain.append([("8-0", {"ev": "d"})]) == 1  # the chain is as it was


def test_the_end_of_a_chain_is_read_backwards_as_far_as_asked(tmp_path):
    """The auditor's witness (ingest/audit.py) reads only a chain's last seconds: `tail` gives
    the records written at or after a time, in order, however the blocks it reads cut lines."""
    path = tmp_path / "audit-p0.jsonl"
    Chain(path, 0).append([(f"{1000 + 10 * i}-{i % 3}", {"ev": "append", "u": "0-x", "o": str(i), "n": "1"})
                           for i in range(200)])
    everything = list(auditlog.read(path))
    for block in (7, 64, 1 << 16):
        assert auditlog.tail(path, 2500, block=block) == [r for r in everything if auditlog.entry_ms(r.id) >= 2500]
        assert auditlog.tail(path, 0, block=block) == everything
        assert auditlog.tail(path, 10_000, block=block) == []
    assert auditlog.tail(tmp_path / "audit-p1.jsonl", 0) == []  # no chain yet
    assert cli(make_settings(tmp_path, "redis://127.0.0.1:1", partitions=1), "verify", "--dir",
               str(tmp_path)).returncode == 0


# ---------------------------------------------------------------- the set of chains

def small_trail(tmp_path) -> tuple[object, Path]:
    """Partitions 0 and 1 with a few records each, in a folder of their own (no Redis needed)."""
    settings = make_settings(tmp_path, "redis://127.0.0.1:1", partitions=2)
    d = audit_dir(settings)
    for p in (0, 1):
        Chain(chain_path(d, p), p).append([(f"{i}-{p}", {"ev": "create", "u": f"{p}-{i}"}) for i in range(1, 4)])
    return settings, d


def keep_heads(settings, tmp_path) -> Path:
    out = cli(settings, "heads")
    assert out.returncode == 0, out.stderr
    kept = tmp_path / "heads.json"
    kept.write_text(out.stdout)
    return kept


def test_an_untouched_trail_still_verifies(tmp_path):
    settings, d = small_trail(tmp_path)
    kept = keep_heads(settings, tmp_path)
    assert orjson.loads(kept.read_bytes())["chains"] == 2
    for args in (("verify",), ("verify", "--heads", str(kept))):
        out = cli(settings, *args)
        assert out.returncode == 0 and out.stdout.count(": ok, 3 records") == 2, out.stdout


def test_swapped_chain_files_are_detected(tmp_path):
    """Every record's hash covers its partition: a chain in another partition's file breaks at
    its first record, with or without heads."""
    settings, d = small_trail(tmp_path)
    kept = keep_heads(settings, tmp_path)
    p0, p1 = chain_path(d, 0), chain_path(d, 1)
    tmp = d / "swap"
    p0.rename(tmp)
    p1.rename(p0)
    tmp.rename(p1)
    for args in (("verify",), ("verify", "--heads", str(kept))):
        out = cli(settings, *args)
        assert out.returncode == 1 and out.stdout.count("BROKEN at line 1") == 2, out.stdout
        assert "partition 1's chain in partition 0's file" in out.stdout and "swapped" in out.stdout
    # Re-labelled as well, its hashes give it away.
    lines = [orjson.loads(line) for line in p0.read_bytes().splitlines()]
    p0.write_bytes(b"".join(orjson.dumps(dict(rec, partition=0)) + b"\n" for rec in lines))
    out = cli(settings, "verify")
    assert out.returncode == 1 and "audit-p0.jsonl: BROKEN at line 1: its hash does not match" in out.stdout
    # And the auditor will not write on a chain of another partition.
    with pytest.raises(ChainMismatch):
        Chain(p1, 1)


def test_an_added_chain_is_detected_with_heads(tmp_path):
    settings, d = small_trail(tmp_path)
    kept = keep_heads(settings, tmp_path)
    Chain(chain_path(d, 5), 5).append([("9-0", {"ev": "create", "u": "planted"})])  # well formed, hashes right
    assert cli(settings, "verify").returncode == 0  # a chain alone cannot show it was not there
    out = cli(settings, "verify", "--heads", str(kept))
    assert out.returncode == 1 and "audit-p5.jsonl: NOT IN HEADS" in out.stdout and "(p0, p1)" in out.stdout, out.stdout
    # A copy of a chain under a name that reads as the same partition is no chain at all.
    chain_path(d, 5).unlink()
    (d / "audit-p01.jsonl").write_bytes(chain_path(d, 1).read_bytes())
    for args in (("verify",), ("verify", "--heads", str(kept))):
        out = cli(settings, *args)
        assert out.returncode == 1 and "audit-p01.jsonl: NOT A CHAIN" in out.stdout, out.stdout


def test_a_removed_chain_is_detected_with_heads(tmp_path):
    settings, d = small_trail(tmp_path)
    kept = keep_heads(settings, tmp_path)
    chain_path(d, 1).unlink()
    assert cli(settings, "verify").returncode == 0
    out = cli(settings, "verify", "--heads", str(kept))
    assert out.returncode == 1 and "audit-p1.jsonl: MISSING, but a head kept earlier is at record 3" in out.stdout
    assert "audit-p0.jsonl: ok" in out.stdout


def test_heads_that_do_not_add_up_are_refused(tmp_path):
    settings, d = small_trail(tmp_path)
    kept = keep_heads(settings, tmp_path)
    heads = orjson.loads(kept.read_bytes())
    heads["heads"] = heads["heads"][:1]  # a chain's head dropped from the kept copy
    kept.write_bytes(orjson.dumps(heads))
    out = cli(settings, "verify", "--heads", str(kept))
    assert out.returncode == 2 and "say 2 chains but list 1" in out.stderr, out.stderr


def test_a_trail_written_before_records_named_their_partition_still_verifies(tmp_path):
    """Format 1 records (hash without the partition) verify by their own formula, and a chain
    goes on with format 2 records after them; a format 1 record after those is refused."""
    import hashlib

    settings = make_settings(tmp_path, "redis://127.0.0.1:1", partitions=1)
    path = chain_path(audit_dir(settings), 0)
    path.parent.mkdir(parents=True)
    prev, lines = "0" * 64, []
    for seq in (1, 2):
        body = {"prev": prev, "seq": seq, "id": f"{seq}-0", "event": {"ev": "old"}}
        h = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
        lines.append(orjson.dumps(dict(body, hash=h)))
        prev = h
    path.write_bytes(b"\n".join(lines) + b"\n")
    out = cli(settings, "verify")
    assert out.returncode == 0 and "ok, 2 records" in out.stdout, out.stdout
    assert Chain(path).append([("3-0", {"ev": "new"})]) == 1
    assert orjson.loads(path.read_bytes().splitlines()[-1])["partition"] == 0
    out = cli(settings, "verify")
    assert out.returncode == 0 and "ok, 3 records" in out.stdout, out.stdout
    body = {"prev": orjson.loads(path.read_bytes().splitlines()[-1])["hash"], "seq": 4, "id": "4-0",
            "event": {"ev": "old"}}
    h = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    path.write_bytes(path.read_bytes() + orjson.dumps(dict(body, hash=h)) + b"\n")
    out = cli(settings, "verify")
    assert out.returncode == 1 and "BROKEN at line 4: a record without its partition" in out.stdout, out.stdout
