"""What the gateway says of itself: OPTIONS, Tus-Resumable on every answer, the version, method override."""

from __future__ import annotations

from tests.conftest import OCTET, TUS, create, head, patch


async def test_options_advertises_exactly_what_is_implemented(gateway, http):
    async with http.options(gateway.files) as resp:
        assert resp.status == 204
        assert resp.headers["Tus-Version"] == "1.0.0"
        assert set(resp.headers["Tus-Extension"].split(",")) == {
            "creation", "creation-with-upload", "creation-defer-length", "expiration",
            "checksum", "termination", "concatenation"}
        assert set(resp.headers["Tus-Checksum-Algorithm"].split(",")) == {"sha1", "sha256", "md5", "crc32c"}
        assert int(resp.headers["Tus-Max-Size"]) == gateway.settings.max_upload_bytes


async def test_every_response_carries_tus_resumable(gateway, http):
    url = await create(http, gateway, 3)
    for resp in [await head(http, url), await patch(http, url, 0, b"abc"), await head(http, url + "x")]:
        assert resp.headers["Tus-Resumable"] == "1.0.0"


async def test_unsupported_version_is_412_with_tus_version(gateway, http):
    async with http.post(gateway.files, headers={"Tus-Resumable": "0.2.2", "Upload-Length": "1"}) as resp:
        assert resp.status == 412
        assert resp.headers["Tus-Version"] == "1.0.0"


async def test_method_override(gateway, http):
    url = await create(http, gateway, 3)
    h = dict(OCTET, **{"Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"})
    async with http.post(url, data=b"abc", headers=h) as resp:
        assert resp.status == 204 and resp.headers["Upload-Offset"] == "3"
    async with http.post(url, headers=dict(TUS, **{"X-HTTP-Method-Override": "HEAD"})) as resp:
        assert resp.status == 200 and resp.headers["Upload-Offset"] == "3"
