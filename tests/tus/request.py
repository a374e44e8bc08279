"""Helpers of the tus tests: the buffer as a value (nothing changed), problem+json checks, and
`refused`, which each row of a bad-request table runs through."""

from __future__ import annotations

import base64

from tests.conftest import all_keys


async def snapshot(r) -> dict:
    """Every key with its full contents: the buffer as a value we can compare."""
    out = {}
    for key in sorted(await all_keys(r)):
        if key.endswith(b":audit"):
            continue  # the audit trail records refusals; it is not the buffer
        t = (await r.type(key)).decode()
        if t == "hash":
            out[key] = await r.hgetall(key)
        elif t == "stream":
            out[key] = await r.xrange(key)
        elif t == "string":
            out[key] = await r.get(key)
        else:
            out[key] = t
    return out


async def expect_problem(resp, status: int, reason: str | None = None):
    body = await resp.read()
    assert resp.status == status, body
    assert resp.headers["Content-Type"].startswith("application/problem+json"), resp.headers
    import orjson
    doc = orjson.loads(body)
    assert doc["status"] == status and doc["detail"]
    if reason:
        assert doc["reason"] == reason, doc
    return doc


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def entries_bytes(entries) -> bytes:
    return b"".join(e[1][b"d"] for e in entries if e[1][b"k"] == b"d")


def headers_of(base: dict[str, str], changes: dict[str, str | None]) -> dict[str, str]:
    """`base` with a table row's changes: a value replaces, None removes."""
    h = dict(base)
    for k, v in changes.items():
        if v is None:
            h.pop(k, None)
        else:
            h[k] = v
    return h


async def refused(http, r, method: str, url: str, headers: dict[str, str], body: bytes, status: int,
                  reason: str | None) -> tuple[dict, dict[str, str]]:
    """Send one bad request: it must be refused as problem+json with `status` and `reason`, and
    leave the buffer exactly as it was. The problem document and the response's headers."""
    before = await snapshot(r)
    async with http.request(method, url, data=body, headers=headers) as resp:
        doc = await expect_problem(resp, status, reason)
        answer_headers = dict(resp.headers)
    assert await snapshot(r) == before, "a refused request changed the buffer"
    return doc, answer_headers
