"""tus 1.0.0 conformance, extension by extension, against the real gateway and Valkey."""

from __future__ import annotations

import asyncio

import base64
import email.utils
import hashlib
import os
import time

import crc32c

from buffer import keys
from tests.conftest import OCTET, TUS, create, head, patch, status

B64 = lambda b: base64.b64encode(b).decode()  # noqa: E731


async def test_options_advertises_exactly_what_is_implemented(gateway, http):
    async with http.options(gateway.files) as resp:
        assert resp.status == 204
        assert resp.headers["Tus-Version"] == "1.0.0"
        assert set(resp.headers["Tus-Extension"].split(",")) == {
            "creation", "creation-with-upload", "creation-defer-length", "expiration",
            "checksum", "termination", "concatenation"}
        assert set(resp.headers["Tus-Checksum-Algorithm"].split(",")) == {"sha1", "sha256", "md5", "crc32c"}
        assert int(resp.headers["Tus-Max-Size"]) == gateway.settings.max_upload_bytes


async def test_create_head_patch_roundtrip(gateway, http, r):
    url = await create(http, gateway, 10, Upload_Metadata="filename " + B64(b"daftar.csv"))
    upload_id = url.rsplit("/", 1)[1]
    p, token = upload_id.split("-")
    assert len(token) == 32 and int(p) < gateway.settings.partitions  # 128 random bits + partition
    resp = await head(http, url)
    assert resp.status == 200
    assert resp.headers["Upload-Offset"] == "0" and resp.headers["Upload-Length"] == "10"
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Upload-Metadata"] == "filename " + B64(b"daftar.csv")
    resp = await patch(http, url, 0, b"01234")
    assert resp.status == 204 and resp.headers["Upload-Offset"] == "5"
    resp = await patch(http, url, 5, b"56789")
    assert resp.status == 204 and resp.headers["Upload-Offset"] == "10"
    # The stream holds the two data entries (finalisation is queued once the ingesters stored them).
    entries = await r.xrange(keys.stream(int(p)))
    assert [e[1][b"k"] for e in entries] == [b"d", b"d"]
    assert b"".join(e[1][b"d"] for e in entries[:2]) == b"0123456789"
    assert int(await r.get(keys.buffered_bytes(int(p)))) == 10


async def test_every_response_carries_tus_resumable(gateway, http):
    url = await create(http, gateway, 3)
    for resp in [await head(http, url), await patch(http, url, 0, b"abc"), await head(http, url + "x")]:
        assert resp.headers["Tus-Resumable"] == "1.0.0"


async def test_unsupported_version_is_412_with_tus_version(gateway, http):
    async with http.post(gateway.files, headers={"Tus-Resumable": "0.2.2", "Upload-Length": "1"}) as resp:
        assert resp.status == 412
        assert resp.headers["Tus-Version"] == "1.0.0"


async def test_creation_with_upload(gateway, http):
    h = dict(OCTET, **{"Upload-Length": "6"})
    async with http.post(gateway.files, data=b"abcdef", headers=h) as resp:
        assert resp.status == 201
        assert resp.headers["Upload-Offset"] == "6"
        url = resp.headers["Location"]
    assert (await head(http, url)).headers["Upload-Offset"] == "6"


async def test_defer_length(gateway, http):
    url = await create(http, gateway, None, Upload_Defer_Length="1")
    resp = await head(http, url)
    assert resp.headers["Upload-Defer-Length"] == "1" and "Upload-Length" not in resp.headers
    assert (await patch(http, url, 0, b"abc")).status == 204
    resp = await patch(http, url, 3, b"de", Upload_Length="5")
    assert resp.status == 204 and resp.headers["Upload-Offset"] == "5"
    resp = await head(http, url)
    assert resp.headers["Upload-Length"] == "5"
    # Once set, the length cannot change.
    assert (await patch(http, url, 5, b"", Upload_Length="6")).status == 400


async def test_expiration_header_and_expired_upload(gateway, http, r):
    url = await create(http, gateway, 10)
    resp = await head(http, url)
    expires = email.utils.parsedate_to_datetime(resp.headers["Upload-Expires"]).timestamp()
    assert abs(expires - (time.time() + gateway.settings.upload_ttl_seconds)) < 5
    upload_id = url.rsplit("/", 1)[1]
    await r.hset(keys.upload(int(upload_id.split("-")[0]), upload_id), "expires_at", int(time.time() * 1000) - 1)
    assert (await head(http, url)).status == 410
    assert (await patch(http, url, 0, b"abc")).status == 410


async def test_checksum_each_algorithm(gateway, http):
    data = os.urandom(1000)
    digests = {"sha1": hashlib.sha1(data).digest(), "sha256": hashlib.sha256(data).digest(),
               "md5": hashlib.md5(data).digest(), "crc32c": crc32c.crc32c(data).to_bytes(4, "big")}
    for algo, digest in digests.items():
        url = await create(http, gateway, 1000)
        resp = await patch(http, url, 0, data, Upload_Checksum=f"{algo} {B64(digest)}")
        assert resp.status == 204, algo
        bad = await create(http, gateway, 1000)
        resp = await patch(http, bad, 0, data[:-1] + b"!", Upload_Checksum=f"{algo} {B64(digest)}")
        assert resp.status == 460, algo
        assert (await head(http, bad)).headers["Upload-Offset"] == "0"


async def test_termination(gateway, http, r):
    url = await create(http, gateway, 10)
    await patch(http, url, 0, b"abc")
    async with http.delete(url, headers=TUS) as resp:
        assert resp.status == 204
    assert (await head(http, url)).status == 404
    assert (await patch(http, url, 3, b"def")).status == 404
    # A complete upload is never deleted.
    done = await create(http, gateway, 3)
    await patch(http, done, 0, b"abc")
    async with http.delete(done, headers=TUS) as resp:
        assert resp.status == 403
    assert (await head(http, done)).status == 200


async def test_method_override(gateway, http):
    url = await create(http, gateway, 3)
    h = dict(OCTET, **{"Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"})
    async with http.post(url, data=b"abc", headers=h) as resp:
        assert resp.status == 204 and resp.headers["Upload-Offset"] == "3"
    async with http.post(url, headers=dict(TUS, **{"X-HTTP-Method-Override": "HEAD"})) as resp:
        assert resp.status == 200 and resp.headers["Upload-Offset"] == "3"


async def test_concatenation(gateway, http):
    a = await create(http, gateway, 3, Upload_Concat="partial")
    b = await create(http, gateway, 2, Upload_Concat="partial")
    await patch(http, a, 0, b"abc")
    await patch(http, b, 0, b"de")
    assert (await head(http, a)).headers["Upload-Concat"] == "partial"
    final = await create(http, gateway, None, Upload_Concat=f"final;{a} {b}")
    resp = await head(http, final)
    assert resp.headers["Upload-Length"] == "5" and resp.headers["Upload-Concat"].startswith("final;")
    assert (await patch(http, final, 5, b"x")).status == 403


async def test_concatenation_refuses_incomplete_partials(gateway, http):
    a = await create(http, gateway, 3, Upload_Concat="partial")
    await patch(http, a, 0, b"ab")
    async with http.post(gateway.files, headers=dict(TUS, **{"Upload-Concat": f"final;{a}"})) as resp:
        assert resp.status == 400
        assert (await resp.json())["reason"] == "partial-incomplete"


async def test_a_partial_goes_into_one_final_even_when_finals_are_created_at_once(gateway, http):
    """Several finals naming the same partial at the same moment: exactly one gets it (201); the
    others are told it belongs to another final, and are not left behind."""
    a = await create(http, gateway, 3, Upload_Concat="partial")
    await patch(http, a, 0, b"abc")

    async def final() -> tuple[int, str, str]:
        async with http.post(gateway.files, headers=dict(TUS, **{"Upload-Concat": f"final;{a}"})) as resp:
            body = await resp.read()
            return resp.status, resp.headers.get("Location", ""), body.decode()

    results = await asyncio.gather(*(final() for _ in range(8)))
    won = [loc for status, loc, _ in results if status == 201]
    assert len(won) == 1, results
    assert all(status == 400 and "bad-partial" in body for status, _, body in results if status != 201)
    assert (await head(http, won[0])).status == 200
    again = await final()
    assert again[0] == 400 and "already belongs to final upload" in again[2]


async def test_a_final_cannot_list_a_partial_twice(gateway, http):
    a = await create(http, gateway, 3, Upload_Concat="partial")
    await patch(http, a, 0, b"abc")
    async with http.post(gateway.files, headers=dict(TUS, **{"Upload-Concat": f"final;{a} {a}"})) as resp:
        assert resp.status == 400 and "listed twice" in (await resp.json())["detail"]


async def test_status_endpoint_reports_receiving(gateway, http):
    url = await create(http, gateway, 10)
    await patch(http, url, 0, b"abcd")
    st = await status(http, url)
    assert st["state"] == "receiving" and st["bytes_received"] == 4 and st["bytes_stored"] == 0
    assert st["safe_to_delete_local_copy"] is False


async def test_long_patch_is_committed_in_bounded_entries(gateway, http, r):
    size = 3 * gateway.settings.entry_bytes + 123
    data = os.urandom(size)
    url = await create(http, gateway, size)
    resp = await patch(http, url, 0, data)
    assert resp.status == 204 and resp.headers["Upload-Offset"] == str(size)
    p = int(url.rsplit("/", 1)[1].split("-")[0])
    entries = [e for e in await r.xrange(keys.stream(p)) if e[1][b"k"] == b"d"]
    assert len(entries) == 4
    assert max(len(e[1][b"d"]) for e in entries) <= gateway.settings.entry_bytes
    assert b"".join(e[1][b"d"] for e in entries) == data
