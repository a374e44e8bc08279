"""Retries never duplicate or overwrite: replayed appends, racing appends, Idempotency-Key."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from buffer import keys
from tests.conftest import OCTET, all_keys, head, patch
from tests.tus.request import entries_bytes

# ---------------------------------------------------------------- the owner of an in-flight creation

async def _send_part_of_a_creation(port: int, key: str, length: int, first: bytes):
    """A creation-with-upload whose body stops after `first`: its key is then in flight."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((f"POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Length: {length}\r\n"
                  f"Idempotency-Key: {key}\r\nContent-Type: application/offset+octet-stream\r\n"
                  f"Content-Length: {length}\r\n\r\n").encode() + first)
    await writer.drain()
    return reader, writer


async def _the_upload(r) -> tuple[str, dict]:
    [k] = await all_keys(r, "unggah:*:up:*")
    state = {a.decode(): b.decode() for a, b in (await r.hgetall(k)).items()}
    return state["id"], state


async def _retry_until_created(http, gw, headers, body: bytes, within: float):
    """POST again as a client does: after a 409 in flight, wait Retry-After and retry."""
    loop = asyncio.get_running_loop()
    start, conflicts = loop.time(), 0
    while True:
        async with http.post(gw.files, data=body, headers=headers) as resp:
            await resp.read()
            if resp.status != 409:
                return resp, loop.time() - start, conflicts
            assert (await resp.json())["reason"] == "idempotency-key-in-flight"
        conflicts += 1
        assert loop.time() - start < within, f"still in flight after {within} s"
        await asyncio.sleep(0.1)


async def test_a_retry_takes_over_at_once_a_creation_whose_gateway_was_killed(tmp_path, valkey, r, http):
    """`unggah serve` is SIGKILLed while reading the body of a creation with an Idempotency-Key.
    The client's retry, on another gateway, gets that upload with the bytes it had committed,
    within a lease (1 s here, 5 s by default), not after idempotency_inflight_seconds (60 s)."""
    from tests.conftest import Gateway, GatewayProcess, make_settings, wait_for

    settings = make_settings(tmp_path, valkey.url, entry_bytes=4096, idempotency_owner_lease_seconds=1.0)
    doomed = await GatewayProcess(settings).wait_ready()
    survivor = await Gateway(settings).start()
    data = os.urandom(10_000)
    try:
        reader, writer = await _send_part_of_a_creation(doomed.port, "killed-1", len(data), data[:5000])

        async def first_piece_committed():
            ups = await all_keys(r, "unggah:*:up:*")
            return ups and (await _the_upload(r))[1]["offset"] == "4096"
        await wait_for(first_piece_committed, 20)
        upload_id, _ = await _the_upload(r)
        doomed.proc.kill()
        doomed.proc.wait()
        writer.close()

        h = dict(OCTET, **{"Upload-Length": str(len(data)), "Idempotency-Key": "killed-1"})
        resp, took, conflicts = await _retry_until_created(http, survivor, h, data, within=10)
        assert resp.status == 201, await resp.text()
        assert took < 5, f"the retry got through only after {took:.1f} s"
        # The same upload, resumed where the dead gateway stopped: nothing sent twice, nothing orphaned.
        assert resp.headers["Location"].rsplit("/", 1)[1] == upload_id
        assert resp.headers["Upload-Offset"] == "4096" and resp.headers["Idempotent-Replayed"] == "true"
        url = survivor.files + upload_id
        assert (await patch(http, url, 4096, data[4096:])).status == 204
        assert (await head(http, url)).headers["Upload-Offset"] == str(len(data))
        p = int(upload_id.split("-")[0])
        mine = [e for e in await r.xrange(keys.stream(p)) if e[1][b"u"] == upload_id.encode()]
        assert entries_bytes(mine) == data
        # Taken over once: later retries replay it.
        async with http.post(survivor.files, data=data, headers=h) as again:
            assert again.status == 201 and again.headers["Upload-Offset"] == str(len(data))
        assert len(await all_keys(r, "unggah:*:up:*")) == 1
    finally:
        doomed.proc.kill()
        doomed.proc.wait()
        await survivor.stop()


async def test_a_live_gateways_creation_stays_in_flight_longer_than_its_lease(tmp_path, valkey, r, http):
    """The owner renews its lease while it lives: a retry seconds later, several leases on,
    still gets 409, and the creation then completes as the first request's."""
    from gateway.app import BOOT_ID
    from tests.conftest import Gateway, make_settings

    settings = make_settings(tmp_path, valkey.url, idempotency_owner_lease_seconds=0.4)
    gw = await Gateway(settings).start()
    try:
        reader, writer = await _send_part_of_a_creation(gw.port, "alive-1", 100, b"x" * 10)
        await asyncio.sleep(1.6)  # four leases
        [idem] = await all_keys(r, "unggah:*:idem:*")
        assert (await r.hget(idem, "owner")).decode() == gw.app[BOOT_ID]
        h = dict(OCTET, **{"Upload-Length": "100", "Idempotency-Key": "alive-1"})
        async with http.post(gw.files, data=b"x" * 100, headers=h) as resp:
            assert resp.status == 409 and (await resp.json())["reason"] == "idempotency-key-in-flight"
        writer.write(b"x" * 90)
        await writer.drain()
        assert b"201" in await reader.readline()
        writer.close()
        async with http.post(gw.files, data=b"x" * 100, headers=h) as resp:
            assert resp.status == 201 and resp.headers["Upload-Offset"] == "100"
        assert len(await all_keys(r, "unggah:*:up:*")) == 1
    finally:
        await gw.stop()


async def test_a_mark_left_by_a_dead_owner_is_taken_over_once_its_lease_lapsed(gateway, http, r):
    """The state a crash leaves, written by the same CREATE step a gateway runs: a mark in flight
    owned by a boot id whose lease is not renewed. 409 while the lease runs, then the upload."""
    from buffer.store import UploadStore

    dead = UploadStore(r, partitions=gateway.settings.partitions, owner="0123456789abcdef", lease_ms=700)
    made = await dead.create(tenant="public", length=100, idempotency_key="crashed-1", fingerprint=_fp(100),
                             pending=True)
    assert made.outcome == "created"
    h = dict(OCTET, **{"Upload-Length": "100", "Idempotency-Key": "crashed-1"})
    async with http.post(gateway.files, data=b"x" * 100, headers=h) as resp:
        assert resp.status == 409  # the lease has not lapsed yet: the owner may be alive
    resp, took, conflicts = await _retry_until_created(http, gateway, h, b"x" * 100, within=5)
    assert resp.status == 201 and resp.headers["Location"].endswith(made.upload_id)
    assert resp.headers["Upload-Offset"] == "0" and took < 2
    # Taken over: the mark no longer holds the key, later retries replay the upload.
    assert await r.hget(keys.idempotency(int(made.upload_id.split("-")[0]), "public", "crashed-1"), "pending") == b"0"


async def test_a_mark_without_an_owner_keeps_the_age_rule(gateway, http, r):
    """A mark made by an older gateway names no owner: only idempotency_inflight_seconds ends it."""
    from buffer.store import UploadStore

    old = UploadStore(r, partitions=gateway.settings.partitions)  # owner ''
    await old.create(tenant="public", length=100, idempotency_key="old-1", fingerprint=_fp(100), pending=True)
    await asyncio.sleep(0.3)
    h = dict(OCTET, **{"Upload-Length": "100", "Idempotency-Key": "old-1"})
    async with http.post(gateway.files, data=b"x" * 100, headers=h) as resp:
        assert resp.status == 409


def _fp(length: int) -> str:
    """The request fingerprint gateway/tus.py computes for a plain creation of `length` bytes."""
    return hashlib.sha256(f"{length}|None||".encode()).hexdigest()


@pytest.mark.parametrize("value", ["0", "-1", "0.05", "61", "nan", "soon"])
def test_a_bad_owner_lease_is_refused_with_its_name(value):
    from unggah import config

    with pytest.raises(config.ConfigError, match="idempotency_owner_lease_seconds"):
        config.load(env={"UNGGAH_IDEMPOTENCY_OWNER_LEASE_SECONDS": value})
