"""HEAD and the status read: what an upload says of itself, and what an unknown one answers."""

from __future__ import annotations

from tests.conftest import OCTET, TUS, create, patch, status
from tests.tus.request import expect_problem, snapshot


async def test_status_endpoint_reports_receiving(gateway, http):
    url = await create(http, gateway, 10)
    await patch(http, url, 0, b"abcd")
    st = await status(http, url)
    assert st["state"] == "receiving" and st["bytes_received"] == 4 and st["bytes_stored"] == 0
    assert st["safe_to_delete_local_copy"] is False


async def test_unknown_upload_and_malformed_ids(gateway, http, r):
    before = await snapshot(r)
    for uid in ["0-" + "0" * 32, "nonsense", "99-" + "a" * 32, "0-" + "g" * 32, "..%2f..%2fetc"]:
        async with http.head(gateway.files + uid, headers=TUS) as resp:
            assert resp.status == 404
        async with http.patch(gateway.files + uid, data=b"x", headers=dict(OCTET, **{"Upload-Offset": "0"})) as resp:
            await expect_problem(resp, 404, "upload-not-found")
        async with http.delete(gateway.files + uid, headers=TUS) as resp:
            await expect_problem(resp, 404)
        async with http.get(gateway.files + uid + "/status") as resp:
            await expect_problem(resp, 404)
    assert await snapshot(r) == before
