"""Server-side validation end to end: real Valkey, the real gateway and ingester, the validator
(in-process, or as a process we SIGKILL). The election is built in a temporary folder from
generated codes, so nothing here needs the shared data folder."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import signal
import socket
import subprocess
from pathlib import Path

import msgspec
import pytest

from buffer import keys
from buffer.connection import connect
from buffer.tenants import TenantStore
from dukungan.election import example_toml, load_election
from dukungan.export import verdicts_csv_text
from dukungan.generate import generate, template_traps, write_csv, write_xlsx
from dukungan.history import apply_history, history_rows, standing
from dukungan.preflight import check_file, validate_file
from dukungan.progress import progress
from dukungan.region import synthetic_code_list_text
from dukungan.rules import prepare
from dukungan.scans import ScanSets
from stores.results import SQLiteResults
from validator.worker import GROUP, Validator
from loadtest import realclients
from tests.conftest import OCTET, TUS, make_settings, wait_for
from unggah import processes

ELECTION = example_toml()  # its window is open from 2020 to 2099

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 200
PDF = b"%PDF-1.4\n1 0 obj << /Type /Page >> endobj\n%%EOF\n"


@pytest.fixture
def election_file(tmp_path) -> Path:
    d = tmp_path / "election"
    d.mkdir()
    (d / "codes.csv").write_text(synthetic_code_list_text(), encoding="utf-8")
    (d / "election.toml").write_text(ELECTION, encoding="utf-8")
    return d / "election.toml"


@pytest.fixture
def ctx(election_file):
    return prepare(load_election(election_file))


@pytest.fixture
def settings(tmp_path, valkey, r, election_file):
    """Overrides conftest's: tokens on, an election configured (the gateway, ingester and
    validator fixtures all use this one)."""
    return make_settings(tmp_path, valkey.url, auth="tokens", election_file=str(election_file))


@pytest.fixture
async def tokens(r, settings):
    store = TenantStore(r)
    await store.add("pair-a", "Paslon A")
    await store.add("pair-b", "Paslon B")
    return {
        "a": (await store.issue("pair-a", "operator A"))[0],
        "b": (await store.issue("pair-b", "operator B"))[0],
        "verifier": (await store.issue("", "KPU verifier", "verifier"))[0],
        "observer": (await store.issue("", "Bawaslu", "observer"))[0],
    }


@pytest.fixture
async def validator(settings):
    client = connect(settings.redis_url, retry=False)  # as `unggah validate` connects
    v = Validator.for_settings(settings, "test.validate-0", client)
    task = asyncio.create_task(v.run())
    yield v
    v.stopping.set()
    await asyncio.wait_for(task, 30)
    v.results.close()
    await client.aclose()


@pytest.fixture
def results(settings):
    return SQLiteResults(settings.results_path, readonly=True)


def auth(token: str, base: dict | None = None) -> dict:
    return dict(base or {}, Authorization=f"Bearer {token}")


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


async def upload(http, gw, token: str, name: str, data: bytes, **meta: str) -> str:
    """One file through tus (creation-with-upload); returns the upload id."""
    md = ",".join(f"{k} {b64(v)}" for k, v in dict(filename=name, **meta).items())
    h = auth(token, dict(OCTET, **{"Upload-Length": str(len(data)), "Upload-Metadata": md}))
    async with http.post(gw.files, data=data, headers=h) as resp:
        assert resp.status == 201, await resp.text()
        assert int(resp.headers["Upload-Offset"]) == len(data)
        return resp.headers["Location"].rsplit("/", 1)[1]


async def upload_many(http, gw, token: str, files: list[tuple[str, bytes]]) -> list[str]:
    sem = asyncio.Semaphore(8)

    async def one(name: str, data: bytes) -> str:
        async with sem:
            return await upload(http, gw, token, name, data)
    return list(await asyncio.gather(*(one(n, d) for n, d in files)))


async def get_json(http, url: str, token: str) -> tuple[int, dict]:
    async with http.get(url, headers=auth(token)) as resp:
        return resp.status, await resp.json(content_type=None)


async def wait_validated(http, gw, token: str, ids: list[str], timeout: float = 30.0) -> dict[str, dict]:
    out: dict[str, dict] = {}

    async def done():
        for u in ids:
            if u not in out:
                status, body = await get_json(http, f"{gw.url}/files/{u}/verdicts", token)
                if status == 200:
                    out[u] = body
        return len(out) == len(ids)
    await wait_for(done, timeout, interval=0.1)
    return out


def scan_files(niks: ScanSets, only: set[str] | None = None) -> list[tuple[str, bytes]]:
    files = [(f"{n}_ktp.jpg", JPEG) for n in sorted(niks.ktp) if only is None or n in only]
    files += [(f"{n}_pernyataan.pdf", PDF) for n in sorted(niks.statement) if only is None or n in only]
    return files


def server_rows(results: SQLiteResults, upload_id: str) -> list[tuple[int, str, str, tuple[str, ...]]]:
    return [(r.row_no, r.nik, r.status, r.reasons) for batch in results.verdict_batches("", upload_id)
            for r, _ in batch]


def progress_fields(p: dict) -> dict:
    keep = ("ms", "ms_pending_external", "bms", "tms", "bms_by_reason", "tms_by_reason", "flags_by_reason",
            "ms_per_unit", "units_meeting", "units", "min_support", "min_spread", "shortfall", "spread_shortfall",
            "correction_required", "met")
    return {k: p[k] for k in keep}


# The commission's template is a spreadsheet: an XLSX list is the common case, and the server
# stores it without its extension. Both formats go through the same assertions.
@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
async def test_server_verdicts_equal_preflight_and_progress_matches(tmp_path, ctx, gateway, ingester, validator,
                                                                    tokens, results, http, fmt):
    g = generate(ctx, 40, seed=3, dup_rate=0.05)
    folder = tmp_path / "kirim"
    (folder / "scans").mkdir(parents=True)
    list_name = f"daftar.{fmt}"
    (write_csv if fmt == "csv" else write_xlsx)(folder / list_name, g.rows)
    scans = scan_files(g.scans)
    for name, data in scans:
        (folder / "scans" / name).write_bytes(data)

    scan_ids = await upload_many(http, gateway, tokens["a"], scans)
    got = await wait_validated(http, gateway, tokens["a"], scan_ids)
    for u, body in got.items():  # a scan named after an unreadable NIK cannot be linked
        nik = body["filename"].split("_")[0]
        assert body["status"] == ("accepted" if len(nik) == 16 and nik.isdigit() else "rejected"), body
    list_id = await upload(http, gateway, tokens["a"], list_name, (folder / list_name).read_bytes())
    body = (await wait_validated(http, gateway, tokens["a"], [list_id]))[list_id]

    report = check_file(folder / list_name, ctx, scans=folder / "scans")
    assert not report.rejected and report.verdicts is not None
    v = report.verdicts
    # The same file judged on the server and by the preflight: identical per row.
    assert server_rows(results, list_id) == [(v.table.row_no[i], v.table.nik[i], v.status[i], v.reasons[i])
                                             for i in range(len(v))]
    assert body["status"] == "accepted" and body["rows"] == len(g.rows)
    assert body["counts"] == report.counts and body["reasons"] == report.reasons
    # ... and the export is byte for byte what `unggah check --export` writes.
    async with http.get(f"{gateway.url}/verdicts.csv", params={"upload": list_id},
                        headers=auth(tokens["a"])) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/csv")
        exported = await resp.read()
    assert exported == ("\ufeff" + verdicts_csv_text(v.rows())).encode()
    assert "Ganda internal" in exported.decode() and "same NIK twice" in exported.decode()

    status, prog = await get_json(http, f"{gateway.url}/progress", tokens["a"])
    assert status == 200 and prog["tenant"] == "pair-a" and prog["election"] == "Pilwalkot Contoh 2024"
    assert progress_fields(prog) == progress_fields(msgspec.to_builtins(report.progress))
    assert prog["minimum"] == ctx.thresholds.min_support == 40
    assert prog["spread"]["required"] == ctx.thresholds.min_spread and prog["spread"]["unit_kind"] == "kecamatan"
    assert prog["window"]["name"] == "penyerahan" and prog["window"]["closes_at"].startswith("2099-12-31T23:59:59")
    assert prog["uploads"]["lists"] == 1


async def test_history_rule_and_late_scans(tmp_path, ctx, gateway, ingester, validator, tokens, results, http):
    g = generate(ctx, 12, seed=21, traps=False)
    rows = g.rows
    job = 7  # PEKERJAAN
    rows[0][job] = "ANGGOTA POLRI"  # BMS: barred occupation, fixable
    rows[1][job] = "PNS"
    first = tmp_path / "first.csv"
    write_csv(first, rows)
    id1 = await upload(http, gateway, tokens["a"], "first.csv", first.read_bytes())
    body1 = (await wait_validated(http, gateway, tokens["a"], [id1]))[id1]
    # No scans yet: every row lacks both.
    assert body1["counts"] == {"MS": 0, "BMS": 12, "TMS": 0}
    assert body1["reasons"]["NO_KTP"] == 12 and body1["reasons"]["PROHIBITED_OCCUPATION"] == 2

    # Late scans for rows 0-5: their missing-scan reasons go, the verdicts follow.
    with_scans = {r[1] for r in rows[:6]}
    scan_ids = await upload_many(http, gateway, tokens["a"], scan_files(g.scans, with_scans))
    await wait_validated(http, gateway, tokens["a"], scan_ids)

    async def ms_is(n):
        st, p = await get_json(http, f"{gateway.url}/progress", tokens["a"])
        return p.get("ms") == n
    await wait_for(lambda: ms_is(4), 15, interval=0.1)  # rows 2-5 (0 and 1 are barred)
    changes = results.changes("pair-a")
    assert len(changes) == 12 and {c[3] for c in changes} == set(scan_ids)
    assert {(c[4], c[6]) for c in changes} >= {("BMS", "MS")}

    # Second upload: rows 0-1 corrected, row 2 sent again unchanged (already MS), row 8 sent again
    # unchanged (still BMS: no scans), plus 2 new supporters.
    more = generate(ctx, 14, seed=99, traps=False).rows[12:]
    second_rows = [list(rows[0]), list(rows[1]), list(rows[2]), list(rows[8])] + more
    second_rows[0][job] = "WIRASWASTA"
    second_rows[1][job] = "PENSIUNAN PNS"
    second = tmp_path / "second.csv"
    write_csv(second, second_rows)
    id2 = await upload(http, gateway, tokens["a"], "second.csv", second.read_bytes())
    await wait_validated(http, gateway, tokens["a"], [id2])

    # The first upload's rows are all still there, with their verdicts.
    assert results.count_rows(id1) == 12 and results.count_rows(id2) == 6
    first_now = {r[0]: r for r in server_rows(results, id1)}
    assert first_now[2][2] == "BMS" and "PROHIBITED_OCCUPATION" in first_now[2][3]
    links = {(e_row, l_row): action for _, e_row, _, l_row, action in results.links_into(id2)}
    assert links == {(2, 2): "resubmission", (3, 3): "resubmission", (4, 4): "duplicate", (10, 5): "resubmission"}
    second_now = {r[0]: r for r in server_rows(results, id2)}
    assert second_now[4][2] == "TMS" and "DUP_INTERNAL" in second_now[4][3]
    assert second_now[2][2] == "MS" and second_now[3][2] == "MS"  # corrected, scans already there

    # Offline, with dukungan alone: the same history, the same progress.
    scan_sets = ScanSets(frozenset(n for n in with_scans), frozenset(n for n in with_scans))
    v1 = validate_file(first, ctx, scans=scan_sets)
    h1 = history_rows(v1, id1)
    res = apply_history(validate_file(second, ctx, scans=scan_sets), standing(h1))
    superseded = {id(e) for e, _ in res.superseded}
    current = [r for r, h in zip(v1.rows(), h1) if id(h) not in superseded] + list(res.verdicts.rows())
    expected = msgspec.to_builtins(progress(current, ctx))
    st, prog = await get_json(http, f"{gateway.url}/progress", tokens["a"])
    assert progress_fields(prog) == progress_fields(expected)
    assert prog["ms"] == 6

    # The pair-wide export keeps every row, says where it came from and whether it still counts.
    async with http.get(f"{gateway.url}/verdicts.csv", headers=auth(tokens["a"])) as resp:
        lines = list(csv.reader(io.StringIO((await resp.read()).decode("utf-8-sig"))))
    assert lines[0][:3] == ["UNGGAHAN", "BERKAS", "BARIS"] and lines[0][-1] == "BERLAKU"
    assert len(lines) == 1 + 12 + 6
    assert sum(1 for x in lines[1:] if x[-1] == "TIDAK") == 3  # rows 0, 1 and 8 of the first upload


async def test_template_invalid_is_recorded_as_rejected(tmp_path, ctx, gateway, ingester, validator, tokens,
                                                        results, http):
    g = generate(ctx, 10, seed=4, traps=False)
    header, rows = template_traps(g.rows)["swapped_columns"]
    path = tmp_path / "geser.csv"
    write_csv(path, rows, header=header)
    u = await upload(http, gateway, tokens["a"], "geser.csv", path.read_bytes())
    body = (await wait_validated(http, gateway, tokens["a"], [u]))[u]
    assert body["status"] == "rejected" and body["message"].startswith("TEMPLATE_INVALID")
    assert "JENIS_KELAMIN" in body["message"] + " ".join(body["problems"])
    assert results.count_rows(u) == 0
    preflight = check_file(path, ctx)
    assert preflight.rejected and preflight.template_error.message_en in body["message"]
    # A file that is neither a list nor a scan is kept but not judged; a scan without a NIK is rejected.
    other = await upload(http, gateway, tokens["a"], "surat-mandat.docx", b"PK\x03\x04 not a list")
    noname = await upload(http, gateway, tokens["a"], "scan.jpg", JPEG)
    got = await wait_validated(http, gateway, tokens["a"], [other, noname])
    assert got[other]["status"] == "skipped" and got[noname]["status"] == "rejected"
    st, prog = await get_json(http, f"{gateway.url}/progress", tokens["a"])
    assert st == 200 and prog["ms"] == 0 and prog["uploads"]["lists_rejected"] == 1


@pytest.mark.timeout(300)
async def test_parallel_uploads_partials_are_parts_not_files(tmp_path, ctx, gateway, ingester, validator, tokens,
                                                             results, http):
    """tus-js-client's parallelUploads sends a file as four partial uploads and a final that
    concatenates them. Only the final is the team's file: it is judged, receipted and counted;
    the partials are neither validated nor receipted nor counted, and each names its final."""
    try:
        realclients.ensure_installed()
    except realclients.Unavailable as e:
        pytest.skip(f"tus-js-client unavailable: {e}")
    g = generate(ctx, 400, seed=6, dup_rate=0.02)
    path = tmp_path / "daftar.csv"
    write_csv(path, g.rows)
    # The driver blocks; the gateway runs in this loop, so the client runs beside it.
    result = await asyncio.to_thread(realclients.run_tusjs, gateway.files, file=str(path), parallel_uploads=4,
                                     headers=auth(tokens["a"]), metadata={"filename": "daftar.csv"}, timeout=120)
    assert result["succeeded"] == 1 and result["failed"] == 0, result
    final_url = result["urls"][0]
    final_id = final_url.rsplit("/", 1)[1]
    async with http.head(final_url, headers=auth(tokens["a"], TUS)) as resp:
        concat = resp.headers["Upload-Concat"]
    assert concat.startswith("final;")
    part_ids = [p.rsplit("/", 1)[1] for p in concat.split(";", 1)[1].split()]
    assert len(part_ids) == 4

    body = (await wait_validated(http, gateway, tokens["a"], [final_id], timeout=60))[final_id]
    (tmp_path / "no-scans").mkdir()  # none were uploaded: the server finds none either
    report = check_file(path, ctx, scans=tmp_path / "no-scans")
    assert body["status"] == "accepted" and body["rows"] == len(g.rows) and body["counts"] == report.counts
    st, final = await get_json(http, f"{final_url}/status", tokens["a"])
    assert st == 200 and final["state"] == "stored" and final["receipt"]["payload"]["upload_id"] == final_id
    for pid in part_ids:
        st, part = await get_json(http, f"{gateway.url}/files/{pid}/status", tokens["a"])
        assert st == 200 and part["state"] == "stored", part
        assert "receipt" not in part and part["part_of"] == final_id and not part["safe_to_delete_local_copy"]
        st, _ = await get_json(http, f"{gateway.url}/files/{pid}/verdicts", tokens["a"])
        assert st != 200, "a partial was judged as a file"
    assert not any(results.file(pid) for pid in part_ids)
    st, prog = await get_json(http, f"{gateway.url}/progress", tokens["a"])
    assert st == 200 and prog["uploads"] == {"lists": 1}, prog["uploads"]
    assert prog["ms"] == report.counts["MS"]


async def test_a_rejected_list_is_named_with_its_reason_by_push_status_and_progress(
        tmp_path, ctx, gateway, ingester, validator, tokens, http):
    """A list the server rejects is stored, and its rows count for nothing. `unggah push` must
    not end with "every file is stored" as if all were well: it names the list and the reason,
    and so do /progress and `unggah status`, for as long as the list is not replaced."""
    from client.api import push
    from client.cli import format_progress, format_report

    g = generate(ctx, 10, seed=4, traps=False)
    header, rows = template_traps(g.rows)["swapped_columns"]
    folder = tmp_path / "kirim"
    folder.mkdir()
    write_csv(folder / "geser.csv", rows, header=header)
    rep = await push([folder], gateway.url, token=tokens["a"], force=True, state_path=tmp_path / "s.json", wait=30)
    [f] = rep.files
    assert f.state == "stored" and f.verdict == "rejected" and f.verdict_message.startswith("TEMPLATE_INVALID")
    assert not rep.ok, "a rejected list is not a successful push"
    text = format_report(rep)
    assert "geser.csv" in text and "TEMPLATE_INVALID" in text and "JENIS_KELAMIN" in text
    assert "Every file is stored on the server." not in text and "count for nothing" in text

    st, prog = await get_json(http, f"{gateway.url}/progress", tokens["a"])
    assert st == 200
    [named] = prog["lists_not_counted"]
    assert named["filename"] == "geser.csv" and named["status"] == "rejected"
    assert named["message"].startswith("TEMPLATE_INVALID")
    status_text = format_progress(prog)
    assert "geser.csv" in status_text and "REJECTED" in status_text and "TEMPLATE_INVALID" in status_text


async def test_access_rules(tmp_path, ctx, gateway, ingester, validator, tokens, http):
    g = generate(ctx, 6, seed=5, traps=False)
    path = tmp_path / "a.csv"
    write_csv(path, g.rows)
    ua = await upload(http, gateway, tokens["a"], "a.csv", path.read_bytes())
    await wait_validated(http, gateway, tokens["a"], [ua])
    base = gateway.url

    async def status(url: str, who: str, **params) -> int:
        async with http.get(base + url, params=params, headers=auth(tokens[who])) as resp:
            await resp.read()
            return resp.status

    # Operators: their own pair only; another pair is not there at all.
    assert await status("/progress", "a") == 200
    assert await status("/progress", "b", tenant="pair-a") == 404
    assert await status("/verdicts.csv", "b", tenant="pair-a") == 404
    assert await status("/verdicts.csv", "b", upload=ua) == 404
    assert await status(f"/files/{ua}/verdicts", "b") == 404
    assert await status("/progress/all", "a") == 403
    # Verifiers: any pair, named.
    assert await status("/progress", "verifier", tenant="pair-a") == 200
    assert await status("/progress", "verifier") == 400
    assert await status("/verdicts.csv", "verifier", tenant="pair-a") == 200
    assert await status(f"/files/{ua}/verdicts", "verifier") == 200
    # Observers: progress only.
    assert await status("/progress", "observer", tenant="pair-a") == 200
    assert await status("/verdicts.csv", "observer", tenant="pair-a") == 403
    assert await status(f"/files/{ua}/verdicts", "observer") == 403
    st, allp = await get_json(http, base + "/progress/all", tokens["observer"])
    assert st == 200 and [t["tenant"] for t in allp["tenants"]] == ["pair-a", "pair-b"]
    assert allp["tenants"][0]["ms"] == 0 and allp["tenants"][1]["ms"] == 0  # no scans: all BMS
    async with http.get(base + "/progress") as resp:
        assert resp.status == 401

    # Pair B claims one of A's supporters: both sides carry DUP_EXTERNAL once it is counted.
    nik = g.rows[0][1]
    scans = [(f"{nik}_ktp.jpg", JPEG), (f"{nik}_pernyataan.pdf", PDF)]
    ids = await upload_many(http, gateway, tokens["a"], scans) + await upload_many(http, gateway, tokens["b"], scans)
    await wait_validated(http, gateway, tokens["verifier"], ids)
    pb = tmp_path / "b.csv"
    write_csv(pb, [g.rows[0]])
    ub = await upload(http, gateway, tokens["b"], "b.csv", pb.read_bytes())
    body = (await wait_validated(http, gateway, tokens["b"], [ub]))[ub]
    assert body["counts"]["MS"] == 1 and body["reasons"] == {"DUP_EXTERNAL": 1}

    async def pending_external(token: str) -> bool:
        st, p = await get_json(http, base + "/progress", token)
        return p.get("ms") == 1 and p.get("ms_pending_external") == 1
    await wait_for(lambda: pending_external(tokens["a"]), 15, interval=0.1)
    assert await pending_external(tokens["b"])


def start_validator_proc(settings, election_file: Path) -> subprocess.Popen:
    return processes.start(processes.command("validate", "--name", "validate-0"),
                           env=processes.environment(settings, UNGGAH_ELECTION_FILE=str(election_file)),
                           log=Path(settings.state_dir) / "validate.log")


async def test_validator_killed_and_restarted_does_not_duplicate(tmp_path, ctx, settings, election_file, gateway,
                                                                 ingester, tokens, results, r, http):
    consumer = f"{socket.gethostname()}.validate-0"
    g1 = generate(ctx, 30, seed=6)
    p1 = tmp_path / "one.csv"
    write_csv(p1, g1.rows)
    u1 = await upload(http, gateway, tokens["a"], "one.csv", p1.read_bytes())

    async def stored():
        async with http.get(f"{gateway.files}{u1}/status", headers=auth(tokens["a"])) as resp:
            return (await resp.json())["state"] == "stored"
    await wait_for(stored, 20)
    # A validator that read the event and died before committing: the entry is pending under its name.
    p = keys.partition_of(u1, settings.partitions)
    await r.xgroup_create(keys.completed(p), GROUP, id="0", mkstream=True)
    got = await r.xreadgroup(GROUP, consumer, {keys.completed(p): ">"}, count=10)
    assert got and len(got[0][1]) == 1

    procs: list[subprocess.Popen] = []
    try:
        procs.append(start_validator_proc(settings, election_file))
        await wait_validated(http, gateway, tokens["a"], [u1])  # from its own pending entries
        assert results.count_rows(u1) == len(g1.rows)

        # SIGKILL in the middle of a bigger list, then restart under the same name.
        g2 = generate(ctx, 3000, seed=7)
        p2 = tmp_path / "two.csv"
        write_csv(p2, g2.rows)
        u2 = await upload(http, gateway, tokens["a"], "two.csv", p2.read_bytes())
        p2n = keys.partition_of(u2, settings.partitions)

        async def picked_up():
            info = await r.xpending(keys.completed(p2n), GROUP)
            return int(info["pending"]) > 0 or results.available() and results.file(u2) is not None
        await wait_for(picked_up, 30, interval=0.005)
        procs[-1].send_signal(signal.SIGKILL)
        procs[-1].wait()
        procs.append(start_validator_proc(settings, election_file))
        await wait_validated(http, gateway, tokens["a"], [u2])
        assert results.count_rows(u2) == len(g2.rows)

        # Every event delivered again (as after a crash between commit and acknowledgement):
        # acknowledged without work, nothing doubled.
        for part in range(settings.partitions):
            await r.xgroup_setid(keys.completed(part), GROUP, "0")

        async def drained():
            for part in range(settings.partitions):
                groups = {x["name"].decode(): x for x in await r.xinfo_groups(keys.completed(part))}
                last = await r.xrevrange(keys.completed(part), count=1)
                if int(groups[GROUP]["pending"]) or (last and groups[GROUP]["last-delivered-id"] != last[0][0]):
                    return False
            return True
        await wait_for(drained, 20, interval=0.1)
        assert results.count_rows() == len(g1.rows) + len(g2.rows)
        assert results.count_rows(u1) == len(g1.rows) and results.count_rows(u2) == len(g2.rows)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def test_without_an_election_lists_are_kept_but_not_judged(tmp_path, valkey, r):
    from buffer.messages import CompletedEvent
    from stores.blobs import LocalBlobStore

    s = make_settings(tmp_path, valkey.url)  # no election_file
    client = connect(s.redis_url, retry=False)
    v = Validator.for_settings(s, "test.validate-x", client)
    assert v.ctx is None
    blobs = LocalBlobStore(s.blob_path)
    blobs.stored_path("0-" + "a" * 32).write_bytes(b"NO,NIK\n")
    blobs.stored_path("0-" + "b" * 32).write_bytes(JPEG)
    nik = "1971024505900001"
    v.process(CompletedEvent(u="0-" + "a" * 32, tenant="t", state="stored", length=7,
                             metadata=f"filename {b64('daftar.csv')}"), None)
    v.process(CompletedEvent(u="0-" + "b" * 32, tenant="t", state="stored", length=len(JPEG),
                             metadata=f"filename {b64('ktp.jpg')},kind {b64('ktp')},nik {b64(nik)}"), None)
    f = v.results.file("0-" + "a" * 32)
    assert f.status == "skipped" and v.results.count_rows() == 0
    assert f.message.startswith("not validated: no election configured") and "--election" in f.message
    assert [x.upload_id for x in v.results.lists_not_counted("t")] == ["0-" + "a" * 32], "the list is named"
    scan = v.results.scan("0-" + "b" * 32)
    assert scan.ok and scan.nik == nik and scan.kind == "ktp"
    v.results.close()
    await client.aclose()
