"""Registration windows on the server's clock (controlled here): creation only while the
tenant's window is open, appends until close plus grace, extensions by letter,
Upload-Expires saying exactly that."""

from __future__ import annotations

import datetime as dt
import email.utils

import pytest

from dukungan.election import example_toml
from tests.conftest import OCTET, TUS, Gateway, make_settings

WIB = dt.timezone(dt.timedelta(hours=7))
WINDOW = {"name": "penyerahan", "kind": "submission",
          "opens": dt.datetime(2024, 5, 8), "closes": dt.datetime(2024, 5, 12, 23, 59, 59)}
EXTENSION = {"tenant": "public", "round": "penyerahan", "closes": dt.datetime(2024, 5, 15, 23, 59, 59),
             "authority": "Surat KPU 707/PL.02.2-SD/05/2024"}


def at(*args) -> float:
    return dt.datetime(*args, tzinfo=WIB).timestamp()


@pytest.fixture
async def windowed(tmp_path, valkey, r):
    def start(extension: bool):
        (tmp_path / "codes.csv").write_text("kode,nama\n19,X\n19.71,Y\n19.71.01,Z\n19.71.01.1001,W\n")
        text = example_toml(dpt_base=161413, grace_seconds=900, scans=None, windows=[WINDOW],
                            extensions=[EXTENSION] if extension else None)
        (tmp_path / "election.toml").write_text(text)
        settings = make_settings(tmp_path, valkey.url, election_file=str(tmp_path / "election.toml"))
        now = [at(2024, 5, 1, 12, 0)]
        return Gateway(settings, clock=lambda: now[0]), now
    gws = []

    async def make(extension=False):
        gw, now = start(extension)
        gws.append(await gw.start())
        return gw, now
    yield make
    for gw in gws:
        await gw.stop()


async def create(http, gw, length=6):
    async with http.post(gw.files, headers=dict(TUS, **{"Upload-Length": str(length)})) as resp:
        return resp.status, resp.headers.get("Location"), resp.headers.get("Upload-Expires"), await resp.json() \
            if resp.status != 201 else None


async def test_window_boundaries_and_grace(windowed, http):
    gw, now = await windowed(extension=False)
    status, _, _, body = await create(http, gw)
    assert status == 403 and body["reason"] == "window-closed"
    assert "2024-05-08 00:00:00 WIB" in body["detail"]  # says when it opens

    now[0] = at(2024, 5, 12, 23, 50)
    status, url, expires, _ = await create(http, gw)
    assert status == 201
    # Upload-Expires is the window's close plus the grace period, not a generic TTL.
    exp = email.utils.parsedate_to_datetime(expires).timestamp()
    assert exp == at(2024, 5, 12, 23, 59, 59) + 900

    now[0] = at(2024, 5, 13, 0, 5)  # after close, within grace: an upload started in time may finish
    async with http.patch(url, data=b"abc", headers=dict(OCTET, **{"Upload-Offset": "0"})) as resp:
        assert resp.status == 204
    status, _, _, body = await create(http, gw)  # but nothing new may start
    assert status == 403 and "closed at 2024-05-12 23:59:59 WIB" in body["detail"]

    now[0] = at(2024, 5, 13, 0, 20)  # grace over
    async with http.patch(url, data=b"def", headers=dict(OCTET, **{"Upload-Offset": "3"})) as resp:
        assert resp.status == 410


async def test_extension_by_letter(windowed, http):
    gw, now = await windowed(extension=True)
    now[0] = at(2024, 5, 14, 10, 0)  # general window closed; this tenant's extension open
    status, url, expires, _ = await create(http, gw)
    assert status == 201
    assert email.utils.parsedate_to_datetime(expires).timestamp() == at(2024, 5, 15, 23, 59, 59) + 900
    async with http.get(url + "/status") as resp:
        assert "Surat KPU 707" in (await resp.json())["window"]  # the receipt will name it too
    now[0] = at(2024, 5, 16, 0, 30)
    status, _, _, body = await create(http, gw)
    assert status == 403


async def test_a_retried_last_patch_after_the_close_is_still_its_own_duplicate(windowed, http):
    """The last PATCH was taken before the close, but its answer was lost; the client retries it
    after the close (and grace). It is recognised as already taken, not refused as expired."""
    gw, now = await windowed()
    now[0] = at(2024, 5, 12, 23, 50)
    status, url, _, _ = await create(http, gw)
    assert status == 201
    h = dict(OCTET, **{"Upload-Offset": "0"})
    async with http.patch(url, data=b"abcdef", headers=h) as resp:
        assert resp.status == 204
    now[0] = at(2024, 5, 13, 0, 20)  # closed, grace over
    async with http.patch(url, data=b"abcdef", headers=h) as resp:
        assert resp.status == 204 and resp.headers["Upload-Offset"] == "6"
