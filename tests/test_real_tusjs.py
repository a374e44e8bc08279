"""The official tus-js-client, unmodified and at its defaults, against a real gateway.

Why: candidate teams upload from web pages built on tus-js-client. Its defaults send the
whole file in one PATCH, retry only four times (0, 1, 3, 5 s) and ignore Retry-After, so a
gateway that refuses busy appends makes a stock client give up and the team sees a failed
upload on the last night. Our own generators cannot show that; only the real client can.

The client is installed from loadtest/realclients/package.json (pinned); without node/npm
or network for the first install the test is skipped, saying why.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from loadtest import realclients
from tests.conftest import GatewayProcess, wait_stored

UPLOADS = 128
SIZE = 1024 * 1024  # 1 MiB whole-file PATCHes: enough to queue 128 deep, small enough for CI


@pytest.fixture(scope="module")
def tusjs():
    try:
        return realclients.ensure_installed()
    except realclients.Unavailable as e:
        pytest.skip(f"tus-js-client unavailable: {e}")


@pytest.mark.timeout(300)
async def test_128_default_tus_js_client_uploads_at_once_all_complete_without_a_refusal(tusjs, settings, ingester_procs):
    gw = GatewayProcess(settings)
    ing = ingester_procs("tusjs.ingest-0")
    try:
        await gw.wait_ready()
        # The driver blocks; run it beside the loop so nothing here stalls while it runs.
        result = await asyncio.to_thread(realclients.run_tusjs, gw.files, uploads=UPLOADS, size=SIZE,
                                         timeout=180)
        summary = {k: result[k] for k in ("started", "succeeded", "failed", "unfinished", "errors",
                                          "responses", "wall_s")}
        assert result["started"] == UPLOADS, summary
        assert result["failed"] == 0 and result["unfinished"] == 0, summary
        assert result["succeeded"] == UPLOADS, summary
        # Not one retry spent: a refusal of work in progress costs a stock client one of its four.
        refusals = {k: n for k, n in result["responses"].items() if k.split()[1].startswith("5")}
        assert refusals == {}, summary
        urls = result["urls"]
        assert len(set(urls)) == UPLOADS, summary

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            states = await asyncio.gather(*(wait_stored(http, u, timeout=120) for u in urls))
        not_stored = [(u, s.get("state"), s.get("reason")) for u, s in zip(urls, states) if s["state"] != "stored"]
        assert not not_stored, not_stored[:5]
        assert all(s.get("bytes_stored", SIZE) == SIZE for s in states)
    finally:
        gw.stop()
        ing.stop()
