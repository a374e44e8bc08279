"""`unggah push` / client API against the real gateway and a real ingester, with a
small proxy (tests/client_proxy.py) in between where a test needs the network to
misbehave: shedding with Retry-After, a corrupted chunk, receipts added to status."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import hashlib
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client import receipts as crc
from client.api import collect, push
from client.cli import format_progress
from client.retry import RetryBudget, backoff, delay, retry_after
from client.state import StateFile
from dukungan.election import example_toml
from client.transport import Endpoints
from tests.client_proxy import Proxy
from tests.conftest import ROOT, TUS, Gateway, make_settings
from unggah import receipts as rc
from unggah.processes import free_port

KiB = 1024
SHARED_CODES = ROOT.parent / "shared" / "data" / "wilayah-kepmendagri-2022.csv"


def write(path: Path, n: int) -> bytes:
    data = os.urandom(n)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def stored_bytes(settings, url: str) -> bytes:
    return (Path(settings.blob_path) / "stored" / url.rsplit("/", 1)[1]).read_bytes()


async def run_cli(*args: str, env: dict | None = None, timeout: float = 60) -> tuple[int, str, str]:
    """`unggah ...` as a child process, without blocking the loop that serves the gateway."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "commands.cli", *args, cwd=ROOT, env=env or client_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


def client_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("UNGGAH_")}


async def public_pem(url: str) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/receipts/public-key") as resp:
            return await resp.text() if resp.status == 200 else ""


@pytest.fixture
async def proxy(gateway):
    p = await Proxy(gateway.url).start()
    yield p
    await p.stop()


# ---------------------------------------------------------------- whole pushes

async def test_push_folder_then_again_sends_nothing(gateway, ingester, settings, tmp_path):
    files = {f"a{i}.bin": write(tmp_path / "up" / f"a{i}.bin", 300 * KiB + i) for i in range(3)}
    files["empty.txt"] = write(tmp_path / "up" / "sub" / "empty.txt", 0)
    (tmp_path / "up" / ".hidden").write_bytes(b"x")
    rep = await push([tmp_path / "up"], gateway.url, parallel=2, chunk_size=128 * KiB,
                     state_path=tmp_path / "state.json", wait=20)
    assert rep.ok, rep
    assert sorted(f.name for f in rep.files) == sorted(files)
    for f in rep.files:
        assert f.state == "stored", f
        assert stored_bytes(settings, f.url) == files[f.name]
        if f.receipt_status == "verified":  # the gateway signs receipts: saved next to the file
            assert Path(f.receipt).name == f.name + ".receipt.json"
            assert rc.verify(Path(f.receipt).read_bytes(), rc.load_public(await public_pem(gateway.url)))
        else:  # a gateway without receipts
            assert f.receipt_status == "unavailable" and rep.receipts.startswith("the server issues no")
    state = orjson.loads((tmp_path / "state.json").read_bytes())
    assert {e["state"] for e in state["uploads"].values()} == {"stored"}
    # Again: everything is known to be stored, not a byte is sent.
    again = await push([tmp_path / "up"], gateway.url, state_path=tmp_path / "state.json", wait=5)
    assert again.ok and again.bytes_sent == 0 and again.counts() == {"stored": 4}


async def test_push_cli_folder_with_list_and_scans_behind_tokens(tmp_path, valkey, r, ingester, settings):
    """A pair's submission (supporter list + scans) through `unggah push` with --election and a
    bearer token against a gateway that requires tokens: preflight summary first, every file stored."""
    pytest.importorskip("dukungan.preflight", reason="dukungan (the shared validator) is not installed")
    from buffer.tenants import TenantStore
    from dukungan.election import parse_election
    from dukungan.generate import generate, write_csv
    from dukungan.region import synthetic_code_list_text
    from dukungan.rules import prepare

    codes = SHARED_CODES
    if not codes.exists():
        codes = tmp_path / "codes.csv"
        codes.write_text(synthetic_code_list_text(), encoding="utf-8")
    toml = example_toml(name="Pilwalkot Pangkalpinang 2024", dpt_base=161413, grace_seconds=None,
                        code_list={"path": str(codes).replace("\\", "/"), "version": "test-list"},
                        windows=[{"name": "penyerahan", "kind": "submission", "opens": dt.datetime(2024, 5, 8),
                                  "closes": dt.datetime(2024, 5, 12, 23, 59, 59)}])
    (tmp_path / "election.toml").write_text(toml, encoding="utf-8")
    gen = generate(prepare(parse_election(toml)), 12, seed=3, traps=False)
    sub = tmp_path / "kirim"
    sub.mkdir()
    write_csv(sub / "daftar-dukungan.csv", gen.rows)
    for row in gen.rows[:4]:
        (sub / f"{row[1]}_ktp.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(20_000))
        (sub / f"{row[1]}_pernyataan.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Page >>\n" + os.urandom(30_000))

    store = TenantStore(r)
    await store.add("paslon-01", "Paslon 01")
    token = (await store.issue("paslon-01", "operator 1"))[0]
    gw = await Gateway(make_settings(tmp_path, valkey.url, auth="tokens")).start()
    try:
        env = dict(client_env(), UNGGAH_TOKEN=token)
        code, out, err = await run_cli("push", str(sub), "--server", gw.url, "--election",
                                       str(tmp_path / "election.toml"), "--parallel", "3",
                                       "--state", str(tmp_path / "state.json"), "--wait", "30", env=env)
        assert code == 0, out + err
        # The preflight summary comes before the upload summary.
        assert out.index("daftar-dukungan.csv") < out.index("Ringkasan / Summary")
        assert "memenuhi syarat" in out and "tersimpan / stored: 9 " in out
        # Every request carried the token, or the gateway would have answered 401.
        st = orjson.loads((tmp_path / "state.json").read_bytes())
        assert len(st["uploads"]) == 9 and {e["state"] for e in st["uploads"].values()} == {"stored"}
        async with aiohttp.ClientSession() as http:
            async with http.get(gw.url + "/receipts/public-key") as resp:
                has_receipts = resp.status == 200
    finally:
        await gw.stop()
    if not has_receipts:
        pytest.skip("every file stored; receipt assertion skipped: this gateway has no /receipts/public-key yet")
    assert all((sub / (name + ".receipt.json")).exists() for name in os.listdir(sub)
               if not name.endswith(".receipt.json"))


async def test_preflight_stops_an_invalid_template_before_any_byte(tmp_path):
    pytest.importorskip("dukungan.preflight", reason="dukungan (the shared validator) is not installed")
    from dukungan.template import HEADER
    bad = tmp_path / "daftar.csv"
    cols = list(HEADER)
    cols[2], cols[3] = cols[3], cols[2]  # shifted columns
    bad.write_text(",".join(cols) + "\n1,3171014505900001,L,BUDI,JAKARTA\n", encoding="utf-8")
    (tmp_path / "scan.jpg").write_bytes(b"\xff\xd8\xff" + b"x" * 100)
    port = free_port()  # nothing listens here: any byte sent would fail loudly
    code, out, err = await run_cli("push", str(tmp_path), "--server", f"http://127.0.0.1:{port}",
                                   "--state", str(tmp_path / "s.json"), "--no-progress")
    assert code == 3, out + err
    assert "TEMPLATE_INVALID" in out and "nothing was sent" in out
    assert not (tmp_path / "s.json").exists()


# ---------------------------------------------------------------- kill -9 and resume

async def test_kill_9_then_resume_sends_no_acknowledged_byte(gateway, ingester, settings, proxy, tmp_path):
    data = write(tmp_path / "big.bin", 3 * 1024 * KiB)
    state = tmp_path / "state.json"
    args = ["push", str(tmp_path / "big.bin"), "--server", proxy.url, "--chunk-size", "256k",
            "--parallel", "1", "--state", str(state), "--no-progress", "--wait", "30"]
    proxy.delay = 0.1
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "commands.cli", *args, cwd=ROOT,
                                                env=client_env(), stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while sum(1 for s in proxy.patches() if s.status == 204) < 4:
        assert time.monotonic() < deadline and proc.returncode is None, "the client made no progress"
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.6)  # let the state file catch up with the acknowledged offsets
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    await asyncio.sleep(0.3)  # a PATCH the proxy already held reaches the gateway: acked, answer lost
    url = next(s.path for s in proxy.seen if s.method == "PATCH")
    async with aiohttp.ClientSession() as http:
        async with http.head(gateway.url + url, headers=TUS) as resp:
            acked = int(resp.headers["Upload-Offset"])
    assert 0 < acked < len(data)
    recorded = orjson.loads(state.read_bytes())  # intact after kill -9: written atomically
    assert next(iter(recorded["uploads"].values()))["offset"] <= acked

    proxy.delay = 0.0
    mark = len(proxy.seen)
    code, out, err = await run_cli(*args)
    assert code == 0, out + err
    second = proxy.seen[mark:]
    assert [s.method for s in second if s.method in ("POST", "HEAD")][:1] == ["HEAD"]
    assert not any(s.method == "POST" for s in second)
    patches = [s for s in second if s.method == "PATCH"]
    assert patches[0].offset == acked, (patches[0].offset, acked)
    assert sum(s.length for s in patches) == len(data) - acked  # not one byte twice
    assert "resumed 1 file(s)" in out
    assert stored_bytes(settings, gateway.url + url) == data


# ---------------------------------------------------------------- shedding, corruption, budget

async def test_shedding_with_retry_after_is_obeyed(gateway, ingester, settings, proxy, tmp_path):
    data = write(tmp_path / "f.bin", 600 * KiB)
    refused: list[float] = []

    def shed(s, body):
        if s.method == "PATCH" and len(refused) < 2:
            refused.append(s.t)
            return web.Response(status=503, headers={"Retry-After": "1", "Unggah-Reason": "overloaded",
                                                     "Tus-Resumable": "1.0.0"})
        return None

    proxy.intercept = shed
    rep = await push([tmp_path / "f.bin"], proxy.url, token="t0ken", chunk_size=256 * KiB,
                     state_path=tmp_path / "s.json", wait=20)
    assert rep.ok, rep
    patches = proxy.patches()
    times = [s.t for s in patches]
    # Each refused PATCH was followed by a wait of at least Retry-After (and the jitter stays modest).
    assert 1.0 <= times[1] - times[0] < 1.6 and 1.0 <= times[2] - times[1] < 1.6
    assert patches[0].offset == patches[1].offset == patches[2].offset
    assert rep.files[0].retries == 2 and rep.files[0].state == "stored"
    assert stored_bytes(settings, rep.files[0].url) == data
    # The token went with every request (status polls and the receipt key included).
    assert all(s.headers.get("Authorization") == "Bearer t0ken" for s in proxy.seen if s.method != "OPTIONS")


async def test_corrupted_chunk_is_detected_and_sent_again(gateway, ingester, settings, proxy, tmp_path):
    data = write(tmp_path / "f.bin", 700 * KiB)
    flipped: list[int] = []

    def flip(s, body):
        if s.method == "PATCH" and not flipped:
            flipped.append(s.offset)
            b = bytearray(body)
            b[len(b) // 2] ^= 0x01
            return bytes(b)
        return body

    proxy.mutate = flip
    rep = await push([tmp_path / "f.bin"], proxy.url, chunk_size=256 * KiB, state_path=tmp_path / "s.json",
                     wait=20)
    assert rep.ok, rep
    patches = proxy.patches()
    assert patches[0].status == 460 and patches[1].offset == patches[0].offset and patches[1].status == 204
    f = rep.files[0]
    assert f.state == "stored" and any("460" in n for n in f.notes)
    assert f.sha256 == hashlib.sha256(data).hexdigest()
    assert stored_bytes(settings, f.url) == data


async def test_retry_budget_spent_gives_up_with_a_clear_message(gateway, proxy, tmp_path):
    write(tmp_path / "f.bin", 300 * KiB)
    proxy.intercept = lambda s, body: (web.Response(status=503, headers={"Retry-After": "0"})
                                       if s.method in ("PATCH", "POST") else None)
    rep = await push([tmp_path / "f.bin"], proxy.url, chunk_size=128 * KiB, state_path=tmp_path / "s.json",
                     retry_min=3, wait=1)
    f = rep.files[0]
    assert not rep.ok and f.state == "failed"
    assert "retry budget was spent" in f.reason and "HTTP 503" in f.reason and "resume" in f.reason
    assert f.retries == 3


# ---------------------------------------------------------------- receipts

def test_tampered_receipt_fails_verification(tmp_path):
    key = Ed25519PrivateKey.generate()
    payload = rc.ReceiptPayload(tenant="paslon-01", upload_id="1-abc", filename="daftar.csv", size=10,
                                sha256="ab" * 32, created_at=1, completed_at=2, stored_at=3, window="penyerahan")
    good = orjson.loads(orjson.dumps(rc.sign(payload, key), default=lambda s: __import__("msgspec").to_builtins(s)))
    ring = crc.KeyRing(crc.parse_keys(rc.public_pem(key).encode()))
    assert crc.check(good, ring, upload_id="1-abc", size=10, sha256="ab" * 32) is None
    bad = orjson.loads(orjson.dumps(good))
    bad["payload"]["size"] = 11
    with pytest.raises(rc.ReceiptError):
        rc.verify(bad, key.public_key())
    assert "altered" in crc.check(bad, ring, upload_id="1-abc", size=11, sha256="ab" * 32)
    # Genuine, but for other bytes than the file we hold.
    assert "sha256" in crc.check(good, ring, upload_id="1-abc", size=10, sha256="cd" * 32)
    # Signed by another key.
    other = crc.KeyRing(crc.parse_keys(rc.public_pem(Ed25519PrivateKey.generate()).encode()))
    assert "key" in crc.check(good, other, upload_id="1-abc", size=10, sha256="ab" * 32)
    saved = crc.save(tmp_path / "daftar.csv", good)
    assert saved.name == "daftar.csv.receipt.json"
    assert rc.verify(saved.read_bytes(), key.public_key()) == payload


async def test_client_verifies_saves_and_reports_receipts(gateway, ingester, proxy, tmp_path):
    """Receipts added to the real status answers by the proxy (signed with a test key), one of them
    altered after signing: the client saves the genuine one and reports the other."""
    key = Ed25519PrivateKey.generate()

    async def public_key(request):
        return web.Response(text=rc.public_pem(key), content_type="application/x-pem-file")

    def add_receipt(s, st):
        if st["state"] == "stored":
            p = rc.ReceiptPayload(tenant="public", upload_id=st["id"], filename="?", size=st["length"],
                                  sha256=st["sha256"], created_at=st["created_at_ms"],
                                  completed_at=st["received_at_ms"] or 0, stored_at=st["stored_at_ms"] or 0)
            r = __import__("msgspec").to_builtins(rc.sign(p, key))
            if st["length"] == 1000:  # bad.bin: altered after signing
                r["payload"]["stored_at"] += 1
            st["receipt"] = r
        return st

    proxy.extra_routes["/receipts/public-key"] = public_key
    await proxy.stop()
    proxy.on_status = add_receipt
    await proxy.start()
    write(tmp_path / "up" / "good.bin", 2000)
    write(tmp_path / "up" / "bad.bin", 1000)
    rep = await push([tmp_path / "up"], proxy.url, state_path=tmp_path / "s.json", wait=20)
    by = {f.name: f for f in rep.files}
    assert by["good.bin"].receipt_status == "verified"
    assert rc.verify((tmp_path / "up" / "good.bin.receipt.json").read_bytes(), key.public_key())
    assert by["bad.bin"].receipt_status == "invalid" and "altered" in by["bad.bin"].receipt_error
    assert not (tmp_path / "up" / "bad.bin.receipt.json").exists()
    assert not rep.ok  # an invalid receipt makes the push fail, so someone looks at it
    from client.cli import format_report
    assert "RECEIPT VERIFICATION FAILED" in format_report(rep)
    # Receipts are never uploaded themselves.
    assert [j.path.name for j in collect([tmp_path / "up"])] == ["bad.bin", "good.bin"]


# ---------------------------------------------------------------- status command, units

async def test_status_command_against_the_gateway(gateway):
    code, out, err = await run_cli("status", "--server", gateway.url, "--token", "x")
    assert code == 0 and "pair: public" in out and "MS 0" in out


async def test_status_command_on_a_server_without_progress(tmp_path):
    """Another tus server (here: a bare aiohttp app) has no /progress: a clear message, exit 1."""
    from aiohttp import web

    from unggah.processes import free_port
    runner = web.AppRunner(web.Application())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        code, out, err = await run_cli("status", "--server", f"http://127.0.0.1:{port}", "--token", "x")
    finally:
        await runner.cleanup()
    assert code == 1 and "GET /progress answered 404" in err


def test_progress_rendering():
    p = {"tenant": "paslon-01", "election": "Pilwalkot Pangkalpinang 2024", "minimum": 16142, "ms": 12000,
         "shortfall": 4142, "bms": 300, "tms": 40,
         "spread": {"required": 4, "met": 3, "total": 7, "unit_kind": "kecamatan",
                    "units": {"19.71.01": 5000, "19.71.02": 4000, "19.71.03": 3000, "19.71.04": 0}},
         "bms_by_reason": {"NIK_AS_NUMBER": 200, "REGION_CODE_INVALID": 100}, "tms_by_reason": {"UNDERAGE": 40},
         "window": {"name": "penyerahan", "closes_at": "2024-05-12T23:59:59+07:00"}}
    now = dt.datetime(2024, 5, 12, 13, 0, tzinfo=dt.timezone(dt.timedelta(hours=7)))
    text = format_progress(p, now=now)
    assert "12.000 dari / of minimum 16.142" in text and "short by 4.142" in text
    assert "3 dari / of 7 kecamatan" in text and "short by 1" in text
    assert "NIK_AS_NUMBER" in text and "UNDERAGE" in text
    assert "10 h 59 min left" in text


def test_retry_after_budget_and_backoff():
    assert retry_after("3") == 3.0
    soon = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8.0 <= retry_after(soon) <= 10.0
    assert retry_after("garbage") is None and retry_after(None) is None
    assert 1.0 <= delay(5, "1") <= 1.2
    assert all(0.25 <= backoff(1) <= 0.5 and 15 <= backoff(9) <= 30 for _ in range(50))
    b = RetryBudget(0.1, 2)
    for _ in range(30):
        b.request()
    assert [b.try_spend() for _ in range(6)] == [True] * 5 + [False]


def test_endpoints():
    assert Endpoints.from_server("http://h:8080") == Endpoints("http://h:8080/files/", "http://h:8080")
    assert Endpoints.from_server("https://x/unggah/files/") == Endpoints("https://x/unggah/files/", "https://x/unggah")
    assert Endpoints.from_server("h:1/uploads").creation == "http://h:1/uploads"


async def test_state_file_is_written_atomically(tmp_path):
    s = StateFile(tmp_path / "st.json", interval=0.01)
    s.put("k", url="http://x/files/1", offset=5)
    await s.close()
    assert orjson.loads((tmp_path / "st.json").read_bytes())["uploads"]["k"]["offset"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["st.json"]  # no temp file left behind
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(Exception, match="not valid JSON"):
        StateFile(tmp_path / "bad.json")



@pytest.mark.parametrize("ms,minimum,shown", [(12, 600_000, "(<0.1%)"), (599_999, 600_000, "(99.9%)"),
                                               (600_000, 600_000, "(100%)"), (0, 600_000, "(0.0%)"),
                                               (300, 600, "(50.0%)")])
def test_progress_percent_never_reads_as_nothing_nor_as_done_when_short(ms, minimum, shown):
    line = format_progress({"tenant": "pair-a", "ms": ms, "minimum": minimum}).splitlines()[1]
    assert shown in line, line



def test_a_list_not_counted_is_named_with_its_reason_said_once():
    from client.cli import describe_list
    from validator.worker import NO_ELECTION

    skipped = describe_list({"filename": "daftar.csv", "status": "skipped", "message": NO_ELECTION})
    assert skipped[0].startswith("daftar.csv: TIDAK DIPERIKSA / NOT VALIDATED: no election configured")
    assert skipped[0].lower().count("not validated") == 1
    rejected = describe_list({"filename": "d.xlsx", "status": "rejected", "message": "TEMPLATE_INVALID: x / y",
                              "problems": [f"p{i}" for i in range(12)]})
    assert rejected[0] == "d.xlsx: DITOLAK / REJECTED: TEMPLATE_INVALID: x / y"
    assert rejected[1:] == [f"  - p{i}" for i in range(10)] + ["  ... and 2 more"]
