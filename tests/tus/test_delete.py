"""DELETE: termination of an incomplete upload; a complete one is never deleted."""

from __future__ import annotations

from tests.conftest import TUS, create, head, patch


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
