"""The concatenation extension: partials, finals, and a partial in exactly one final."""

from __future__ import annotations

import asyncio

from tests.conftest import TUS, create, head, patch


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
