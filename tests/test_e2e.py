"""Whole uploads through gateway, stream and ingester, with the real tuspy client and raw HTTP."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
from pathlib import Path

from tusclient import client as tus_client

from buffer import keys
from tests.conftest import OCTET, TUS, buffer_empty, create, head, patch, status, wait_for, wait_stored


def stored_bytes(settings, url: str) -> bytes:
    return (Path(settings.blob_path) / "stored" / url.rsplit("/", 1)[1]).read_bytes()


async def test_tuspy_chunked_with_checksums(gateway, ingester, http, r, tmp_path, settings):
    data = os.urandom(2_500_000)
    src = tmp_path / "ktp_3171014505900001.jpg"
    src.write_bytes(data)

    def upload() -> str:
        c = tus_client.TusClient(gateway.files)
        u = c.uploader(str(src), chunk_size=256 * 1024, upload_checksum=True,
                       metadata={"filename": src.name})
        u.upload()
        return u.url

    url = await asyncio.to_thread(upload)
    st = await wait_stored(http, url)
    assert st["state"] == "stored" and st["safe_to_delete_local_copy"]
    assert st["sha256"] == hashlib.sha256(data).hexdigest()
    assert st["bytes_stored"] == st["bytes_received"] == len(data)
    assert stored_bytes(settings, url) == data
    await wait_for(lambda: buffer_empty(r))


async def test_raw_http_random_chunks(gateway, ingester, http, r, settings):
    data = os.urandom(3_000_000)
    url = await create(http, gateway, len(data))
    off = 0
    while off < len(data):
        n = random.randint(1, 700_000)
        resp = await patch(http, url, off, data[off:off + n])
        assert resp.status == 204
        off = int(resp.headers["Upload-Offset"])
    st = await wait_stored(http, url)
    assert st["sha256"] == hashlib.sha256(data).hexdigest()
    assert stored_bytes(settings, url) == data
    await wait_for(lambda: buffer_empty(r))


async def send_partial_patch(port: int, url: str, offset: int, total: int, body: bytes) -> None:
    """A PATCH announcing `total` bytes whose connection dies after `body`."""
    path = url.split(f":{port}", 1)[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
                  f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n"
                  f"Content-Length: {total}\r\n\r\n").encode())
    writer.write(body)
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.transport.abort()


async def test_interrupted_patch_keeps_what_arrived_then_resumes(gateway, ingester, http, r, settings):
    size = 5 * settings.entry_bytes // 2
    data = os.urandom(size)
    url = await create(http, gateway, size)
    sent = settings.entry_bytes + 12345  # one whole entry and part of the next
    await send_partial_patch(gateway.port, url, 0, size, data[:sent])

    async def offset_settled():
        return int((await head(http, url)).headers["Upload-Offset"]) == sent
    await wait_for(offset_settled, 5)
    # Resume from HEAD, as a tus client does.
    resp = await patch(http, url, sent, data[sent:])
    assert resp.status == 204 and resp.headers["Upload-Offset"] == str(size)
    st = await wait_stored(http, url)
    assert st["sha256"] == hashlib.sha256(data).hexdigest()
    assert stored_bytes(settings, url) == data


async def test_concatenation_final_is_assembled(gateway, ingester, http, settings):
    parts = [os.urandom(n) for n in (300_000, 1, 250_000)]
    urls = []
    for chunk in parts:
        u = await create(http, gateway, len(chunk), Upload_Concat="partial")
        assert (await patch(http, u, 0, chunk)).status == 204
        urls.append(u)
    final = await create(http, gateway, None, Upload_Concat="final;" + " ".join(urls))
    st = await wait_stored(http, final)
    whole = b"".join(parts)
    assert st["state"] == "stored" and st["sha256"] == hashlib.sha256(whole).hexdigest()
    assert stored_bytes(settings, final) == whole


async def test_a_final_fails_when_one_of_its_partials_fails(gateway, ingester, http):
    """A partial that fails for good (its declared sha256 does not match) fails its final too,
    with a reason that names it, instead of leaving the final receiving forever."""
    good = await create(http, gateway, 3, Upload_Concat="partial")
    declared = base64.b64encode(hashlib.sha256(b"xyz").hexdigest().encode()).decode()
    bad = await create(http, gateway, 3, Upload_Concat="partial", Upload_Metadata="sha256 " + declared)
    assert (await patch(http, good, 0, b"abc")).status == 204
    assert (await patch(http, bad, 0, b"def")).status == 204
    final = await create(http, gateway, None, Upload_Concat=f"final;{good} {bad}")

    async def failed():
        st = await status(http, final)
        return st if st["state"] == "failed" else None
    st = await wait_for(failed)
    assert bad.rsplit("/", 1)[1] in st["reason"] and "sha256 mismatch" in st["reason"]
    assert (await status(http, good))["state"] == "stored"


async def test_a_final_whose_assembly_trigger_was_lost_is_assembled_when_its_status_is_read(
        gateway, http, r, ingester_procs, settings):
    """A crash between a partial's FINISH and its check of the final (or a Redis error in the
    middle of creating the final) can lose the one trigger of the final's assembly. Reading the
    final's status queues it again."""
    parts = [os.urandom(n) for n in (200_000, 100_000)]
    urls = [await create(http, gateway, len(c), Upload_Concat="partial") for c in parts]
    for u, c in zip(urls, parts):
        assert (await patch(http, u, 0, c)).status == 204
    ing = ingester_procs("t.ingest-a")
    for u in urls:
        await wait_stored(http, u)
    ing.stop()
    final = await create(http, gateway, None, Upload_Concat="final;" + " ".join(urls))
    final_id = final.rsplit("/", 1)[1]
    p = int(final_id.split("-")[0])
    # The trigger is lost: no assembly entry, none recorded as queued.
    queued = [i for i, f in await r.xrange(keys.stream(p)) if f[b"u"] == final_id.encode()]
    assert len(queued) == 1
    await r.xdel(keys.stream(p), *queued)
    await r.hdel(keys.upload(p, final_id), "finq")
    assert (await status(http, final))["state"] == "receiving"
    assert [i for i, f in await r.xrange(keys.stream(p)) if f[b"u"] == final_id.encode()]
    ingester_procs("t.ingest-a")
    st = await wait_stored(http, final)
    assert st["sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()


async def test_zero_length_upload_is_stored(gateway, ingester, http):
    url = await create(http, gateway, 0)
    st = await wait_stored(http, url)
    assert st["state"] == "stored" and st["sha256"] == hashlib.sha256(b"").hexdigest()


async def test_deferred_length_declared_by_an_empty_patch(gateway, ingester, http):
    url = await create(http, gateway, None, Upload_Defer_Length="1")
    assert (await patch(http, url, 0, b"hello")).status == 204
    await asyncio.sleep(0.5)  # let the ingester store the bytes before the length is known
    assert (await patch(http, url, 5, b"", Upload_Length="5")).status == 204
    st = await wait_stored(http, url)
    assert st["sha256"] == hashlib.sha256(b"hello").hexdigest()


async def test_declared_whole_file_checksum(gateway, ingester, http):
    data = b"supporter list"
    good = base64.b64encode(hashlib.sha256(data).digest()).decode()
    url = await create(http, gateway, len(data), Upload_Metadata="sha256 " + base64.b64encode(hashlib.sha256(data).hexdigest().encode()).decode())
    await patch(http, url, 0, data)
    assert (await wait_stored(http, url))["state"] == "stored"
    bad = await create(http, gateway, len(data),
                       Upload_Metadata="checksum " + base64.b64encode(b"sha256 " + good[:-4].encode() + b"AAA=").decode())
    await patch(http, bad, 0, data)
    st = await wait_stored(http, bad)
    assert st["state"] == "failed" and "sha256 mismatch" in st["reason"]
    assert st["safe_to_delete_local_copy"] is False


async def test_retried_last_patch_after_storage_is_a_duplicate(gateway, ingester, http):
    url = await create(http, gateway, 6)
    await patch(http, url, 0, b"abc")
    await patch(http, url, 3, b"def")
    await wait_stored(http, url)
    resp = await patch(http, url, 3, b"def")
    assert resp.status == 204 and resp.headers["Upload-Offset"] == "6"


async def test_terminated_upload_leaves_nothing(gateway, ingester, http, r, settings):
    url = await create(http, gateway, 100)
    await patch(http, url, 0, b"x" * 50)
    async with http.delete(url, headers=TUS) as resp:
        assert resp.status == 204
    await wait_for(lambda: buffer_empty(r))
    upload_id = url.rsplit("/", 1)[1]
    assert not (Path(settings.blob_path) / "partial" / upload_id).exists()
    assert not (Path(settings.blob_path) / "stored" / upload_id).exists()
