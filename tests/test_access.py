"""Tenants and tokens: every request authenticated, tenants isolated (404, never 403),
revocation at once, read-only roles."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from buffer.tenants import TenantStore
from tests.conftest import CLUSTER, OCTET, TUS, Gateway, child_env, make_settings


@pytest.fixture
async def secured(tmp_path, valkey, r):
    settings = make_settings(tmp_path, valkey.url, auth="tokens")
    store = TenantStore(r)
    await store.add("pair-a", "Paslon A")
    await store.add("pair-b", "Paslon B")
    tokens = {
        "a": (await store.issue("pair-a", "operator A1"))[0],
        "b": (await store.issue("pair-b", "operator B1"))[0],
        "verifier": (await store.issue("", "KPU verifier", "verifier"))[0],
        "observer": (await store.issue("", "Bawaslu", "observer"))[0],
    }
    gw = await Gateway(settings).start()
    yield gw, tokens, store, settings
    await gw.stop()


def bearer(token: str, base: dict | None = None) -> dict:
    return dict(base or TUS, Authorization=f"Bearer {token}")


async def new_upload(http, gw, token: str, data: bytes = b"abc") -> str:
    async with http.post(gw.files, headers=bearer(token, dict(TUS, **{"Upload-Length": str(len(data) + 3)}))) as resp:
        assert resp.status == 201, await resp.text()
        url = resp.headers["Location"]
    async with http.patch(url, data=data, headers=bearer(token, dict(OCTET, **{"Upload-Offset": "0"}))) as resp:
        assert resp.status == 204
    return url


async def test_requests_without_a_valid_token_are_401(secured, http):
    gw, tokens, _, _ = secured
    for headers in [TUS, dict(TUS, Authorization="Basic abc"), bearer("ung_not-a-token")]:
        async with http.post(gw.files, headers=dict(headers, **{"Upload-Length": "3"})) as resp:
            assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
    # OPTIONS and health need no token.
    async with http.options(gw.files) as resp:
        assert resp.status == 204
    async with http.get(gw.url + "/healthz") as resp:
        assert resp.status == 200


async def test_tenants_cannot_see_append_or_delete_each_others_uploads(secured, http, r):
    gw, tokens, _, _ = secured
    url = await new_upload(http, gw, tokens["a"])
    before = await r.hgetall("unggah:{p%s}:up:%s" % (url.rsplit("/", 1)[1].split("-")[0], url.rsplit("/", 1)[1]))
    b = tokens["b"]
    async with http.head(url, headers=bearer(b)) as resp:
        assert resp.status == 404
    async with http.get(url + "/status", headers=bearer(b)) as resp:
        assert resp.status == 404
    async with http.patch(url, data=b"xyz", headers=bearer(b, dict(OCTET, **{"Upload-Offset": "3"}))) as resp:
        assert resp.status == 404
    async with http.delete(url, headers=bearer(b)) as resp:
        assert resp.status == 404
    async with http.post(gw.files, headers=bearer(b, dict(TUS, **{"Upload-Concat": f"final;{url}"}))) as resp:
        assert resp.status == 400  # the partial "does not exist" for pair-b
    after = await r.hgetall("unggah:{p%s}:up:%s" % (url.rsplit("/", 1)[1].split("-")[0], url.rsplit("/", 1)[1]))
    assert after == before
    # The owner still sees it.
    async with http.head(url, headers=bearer(tokens["a"])) as resp:
        assert resp.status == 200 and resp.headers["Upload-Offset"] == "3"


async def test_revoked_token_stops_working_at_once(secured, http):
    gw, tokens, store, settings = secured
    token, principal = await store.issue("pair-a", "operator A2")
    url = await new_upload(http, gw, token)  # the gateway has confirmed this token: its appends skip the lookup
    out = subprocess.run([sys.executable, "-m", "commands.cli", "tenants", "revoke", principal.token_hash[:12]],
                         env=child_env(settings), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # The PATCH first: a HEAD's lookup would drop the token from the gateway's confirmed ones.
    async with http.patch(url, data=b"xyz", headers=bearer(token, dict(OCTET, **{"Upload-Offset": "3"}))) as resp:
        assert resp.status == 401
    async with http.head(url, headers=bearer(token)) as resp:
        assert resp.status == 401
    # Other tokens of the same tenant are unaffected, and the refused append changed nothing.
    async with http.head(url, headers=bearer(tokens["a"])) as resp:
        assert resp.status == 200 and resp.headers["Upload-Offset"] == "3"


async def test_an_append_with_a_confirmed_token_costs_no_token_lookup(secured, http, r):
    """The APPEND script checks revocation in the step that appends, so a PATCH with a token
    the gateway already confirmed makes one round trip, not two."""
    gw, tokens, store, _ = secured

    async def lookups() -> int:  # HGETALL calls, on every primary of a cluster
        infos = (await r.info("commandstats", target_nodes=r.PRIMARIES)).values() if CLUSTER \
            else [await r.info("commandstats")]
        return sum(int(i.get("cmdstat_hgetall", {}).get("calls", 0)) for i in infos)

    url = await new_upload(http, gw, tokens["a"], data=b"ab")  # 2 of 5 bytes; the token is confirmed
    before = await lookups()
    async with http.patch(url, data=b"c", headers=bearer(tokens["a"], dict(OCTET, **{"Upload-Offset": "2"}))) as resp:
        assert resp.status == 204
    assert await lookups() == before
    # The contrast: a token this gateway has not seen yet is looked up first.
    fresh, _ = await store.issue("pair-a", "operator A3")
    async with http.patch(url, data=b"d", headers=bearer(fresh, dict(OCTET, **{"Upload-Offset": "3"}))) as resp:
        assert resp.status == 204
    assert await lookups() == before + 1


async def test_verifier_reads_all_but_cannot_write(secured, http):
    gw, tokens, _, _ = secured
    url = await new_upload(http, gw, tokens["a"])
    v = tokens["verifier"]
    async with http.head(url, headers=bearer(v)) as resp:
        assert resp.status == 200
    async with http.get(url + "/status", headers=bearer(v)) as resp:
        assert resp.status == 200
    async with http.patch(url, data=b"xyz", headers=bearer(v, dict(OCTET, **{"Upload-Offset": "3"}))) as resp:
        assert resp.status == 403
    async with http.post(gw.files, headers=bearer(v, dict(TUS, **{"Upload-Length": "3"}))) as resp:
        assert resp.status == 403
    async with http.delete(url, headers=bearer(v)) as resp:
        assert resp.status == 403


async def test_observer_sees_no_uploads(secured, http):
    gw, tokens, _, _ = secured
    url = await new_upload(http, gw, tokens["a"])
    async with http.head(url, headers=bearer(tokens["observer"])) as resp:
        assert resp.status == 403
    async with http.get(url + "/status", headers=bearer(tokens["observer"])) as resp:
        assert resp.status == 403


async def test_tenant_cli_round_trip(secured):
    _, _, store, settings = secured
    env = child_env(settings)
    run = lambda *a: subprocess.run([sys.executable, "-m", "commands.cli", "tenants", *a], env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=60)
    assert run("add", "pair-c", "--name", "Paslon C").returncode == 0
    bad = run("add", "Pair C!")
    assert bad.returncode == 1 and "tenant id" in bad.stderr
    out = run("issue", "pair-c", "--name", "op C1")
    assert out.returncode == 0
    token = out.stdout.strip().splitlines()[-1]
    assert (await store.lookup(token)).tenant == "pair-c"
    listing = run("list").stdout
    assert "pair-c" in listing and token not in listing
    assert run("issue", "pair-zzz", "--name", "x").returncode == 1


async def test_tenants_list_shows_each_token_under_its_own_tenant_with_a_readable_date(secured):
    _, _, store, settings = secured
    env = child_env(settings)
    run = lambda *a: subprocess.run([sys.executable, "-m", "commands.cli", "tenants", *a], env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=60)
    for tenant in ("pair-l1", "pair-l2"):
        assert run("add", tenant).returncode == 0
        assert run("issue", tenant, "--name", f"op of {tenant}").returncode == 0
    listing = run("list").stdout.splitlines()
    sections: dict[str, list[str]] = {}
    current = None
    for line in listing:
        if not line.startswith("  "):
            current = line.split()[1] if line.startswith("tenant ") else line
            sections[current] = []
        else:
            sections[current].append(line)
    for tenant in ("pair-l1", "pair-l2"):
        mine = [ln for ln in sections[tenant] if "token" in ln]
        assert mine and all(f"op of {tenant}" in ln for ln in mine), sections
        assert all(re.search(r"issued \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC", ln) for ln in mine)


async def test_a_tenant_name_that_cannot_be_one_is_not_found_and_the_connection_stays_usable(secured, http):
    """The asked tenant names the CSV download (Content-Disposition): a line break in it once
    broke the answer's framing for the next request on the same connection."""
    gw, tokens, _, _ = secured
    v = tokens["verifier"]
    async with http.get(gw.url + "/verdicts.csv", params={"tenant": "pair-a\nX-Injected: 1"},
                        headers=bearer(v, {})) as resp:
        assert resp.status == 404 and (await resp.json())["reason"] == "tenant-not-found"
    async with http.get(gw.url + "/progress", params={"tenant": "pair-a"}, headers=bearer(v, {})) as resp:
        assert resp.status == 200
