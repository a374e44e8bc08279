"""Benchmark: from "stored" to verdicts, end to end, for the largest known supporter list.

    python -m loadtest.bench_verdicts [--rows 1200000] [--runs 3] [--no-scans]

Per run, a fresh stack in a temp folder: an embedded Valkey (AOF everysec), one `unggah
serve`, one `unggah ingest` and one `unggah validate`, with an election whose window is
open. A generated list (2% duplicates and every trap row) is sent as CSV through the gateway
over tus; the run then polls the upload's /status until it is stored and its
/files/<id>/verdicts until it answers, every 50 ms. Reported, median of the runs:

  stored -> verdicts   from the server's stored_at to the first answer with the file's verdicts
                        (what a team waits for once `unggah push` says "stored")

Unless --no-scans, the pair's KTP-el and statement scans (one of each per supporter, 2.4
million at 1.2 million rows) are put in the results store before the validator starts, as
they stand when a pair sends its list last: the scan checks then have their full input.
They are written straight into the store, because sending 2.4 million scans through the
gateway would take the run hours and measure something else. Without scans every row is
BMS (NO_KTP, NO_STATEMENT) and the counted-supporter queries have nothing to count.

    python -m loadtest.bench_verdicts --in-process [--rows 1200000] [--runs 1]

runs the validator's own step for the list (Validator.process, on a real SQLite results
store and blob store in a temp folder, the scans seeded the same way) in this process, with
no stack around it: the harness to profile (py-spy record -- python -m loadtest.bench_verdicts
--in-process), and the floor under the end-to-end figure.

A benchmark, not a test. Judging the file alone (`validate_file`) is measured by
loadtest.bench_validate.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
import msgspec

from dukungan.election import parse_election
from dukungan.generate import generate, write_csv
from dukungan.region import parse_code_list, synthetic_code_list_text
from dukungan.rules import prepare
from stores.results import SQLiteResults
from loadtest.benchstack import gateway_stack, log, machine, start_process
from loadtest.bench_validate import SHARED, election_text
from unggah.config import Settings
from unggah.processes import stop

MiB = 1 << 20


def _election(work: Path) -> tuple[Path, object]:
    if SHARED.exists():
        codes_path, region, version = SHARED.resolve(), "31", "kepmendagri-2022"
    else:
        codes_path, region, version = work / "codes.csv", "19", "synthetic"
        codes_path.write_text(synthetic_code_list_text(), encoding="utf-8")
    text = election_text(region, version, str(codes_path), dt.datetime(2020, 1, 1), dt.datetime(2099, 12, 31, 23, 59, 59))
    path = work / "election.toml"
    path.write_text(text, encoding="utf-8")
    codes = parse_code_list(codes_path.read_text(encoding="utf-8"), version)
    return path, prepare(parse_election(text), codes=codes, prefix_lists=[])


async def _send(files: str, token: str, path: Path) -> str:
    """tus creation, then PATCHes of 8 MiB; returns the upload id."""
    size = path.stat().st_size
    auth = {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0"}
    meta = "filename " + base64.b64encode(b"dukungan.csv").decode()
    async with aiohttp.ClientSession() as s:
        async with s.post(files, headers={**auth, "Upload-Length": str(size), "Upload-Metadata": meta}) as r:
            if r.status != 201:
                raise RuntimeError(f"creation answered {r.status}: {await r.text()}")
            url = r.headers["Location"]
        url = url if url.startswith("http") else files.split("/files/")[0] + url
        offset = 0
        with open(path, "rb") as f:
            while offset < size:
                chunk = f.read(8 * MiB)
                async with s.patch(url, data=chunk, headers={
                        **auth, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}) as r:
                    if r.status != 204:
                        raise RuntimeError(f"PATCH at {offset} answered {r.status}: {await r.text()}")
                    offset = int(r.headers["Upload-Offset"])
    return url.rsplit("/", 1)[1]


def _get(url: str, token: str) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, msgspec.json.decode(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {}


def _seed_scans(results_path: Path, scans) -> None:
    t0 = time.perf_counter()
    store = SQLiteResults(results_path)
    with store.write() as w:
        w.con.executemany("INSERT INTO scans VALUES (?,?,?,?,?,?,?,?,?,?)", (
            (f"scan-{kind}-{n}", "bench", n, kind, f"{n}_{kind}.jpg", 1, "image/jpeg", 200_000, None, "[]")
            for kind, have in (("ktp", scans.ktp), ("statement", scans.statement)) for n in have))
    store.close()
    log(f"  scans seeded: {len(scans.ktp):,} KTP-el + {len(scans.statement):,} statements "
        f"in {time.perf_counter() - t0:.1f} s")


def in_process_run(list_path: Path, election: Path, scans, k: int) -> float:
    """Validator.process for the list, in this process: seconds."""
    import redis.asyncio as aioredis

    from buffer.messages import CompletedEvent
    from dukungan.election import load_election
    from stores.blobs import LocalBlobStore
    from validator.worker import Validator

    with tempfile.TemporaryDirectory(prefix="unggah-bench-validator-") as d:
        settings = Settings(state_dir=d, election_file=str(election))
        if scans is not None:
            _seed_scans(Path(settings.results_path), scans)
        blobs = LocalBlobStore(settings.blob_path)
        blobs.stored_path("x").parent.mkdir(parents=True, exist_ok=True)
        upload_id = f"bench-{k}"
        os.link(list_path, blobs.stored_path(upload_id))
        el = load_election(election)
        results = SQLiteResults(settings.results_path)
        # The client is never used by process(): the queue is only read by the loops.
        v = Validator(settings, "bench", aioredis.Redis(), results, blobs, el, prepare(el))
        ev = CompletedEvent(u=upload_id, tenant="bench", state="stored", length=list_path.stat().st_size,
                            metadata="filename " + base64.b64encode(b"dukungan.csv").decode(),
                            at=int(time.time() * 1000))
        t0 = time.perf_counter()
        v.process(ev, None)
        took = time.perf_counter() - t0
        f = results.file(upload_id)
        results.close()
        if f is None or f.status != "accepted":
            raise RuntimeError(f"unexpected verdict: {f}")
        return took


def one_run(list_path: Path, election: Path, scans, args) -> dict:
    env = {"UNGGAH_ELECTION_FILE": str(election)}
    with gateway_stack(pairs=("bench",), **env) as st:
        results_path = Path(Settings(state_dir=str(st.work)).results_path)
        if scans is not None:
            _seed_scans(results_path, scans)
        procs = [start_process(["ingest", "--name", "ingest-0"], st.redis_url, st.work, "ingest.log", **env),
                 start_process(["validate", "--name", "validate-0"], st.redis_url, st.work, "validate.log", **env)]
        try:
            t0 = time.perf_counter()
            upload_id = asyncio.run(_send(st.files, st.tokens["bench"], list_path))
            sent = time.perf_counter() - t0
            base = st.files.rstrip("/")
            stored_at = None
            while stored_at is None:
                code, body = _get(f"{base}/{upload_id}/status", st.tokens["bench"])
                if body.get("state") == "stored":
                    stored_at = body["stored_at_ms"] / 1000
                elif body.get("state") == "failed":
                    raise RuntimeError(f"upload failed: {body}")
                else:
                    time.sleep(0.05)
            while True:
                code, body = _get(f"{base}/{upload_id}/verdicts", st.tokens["bench"])
                if code == 200:
                    seen = time.time()
                    break
                if time.time() - stored_at > 600:
                    raise RuntimeError("no verdicts 600 s after stored; see validate.log in " + str(st.work))
                time.sleep(0.05)
            if body.get("status") != "accepted" or body.get("rows") != args.rows_total:
                raise RuntimeError(f"unexpected verdict: { {k: body.get(k) for k in ('status', 'rows', 'message')} }")
            return {"sent_s": sent, "stored_to_verdicts_s": seen - stored_at, "counts": body.get("counts")}
        finally:
            for p in procs:
                stop(p)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_200_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-scans", action="store_true", help="no scans in the store: every row is BMS")
    ap.add_argument("--in-process", action="store_true",
                    help="time Validator.process in this process, no stack (the profiling harness)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        election, ctx = _election(Path(d))
        t0 = time.perf_counter()
        g = generate(ctx, args.rows, seed=11, dup_rate=0.02)
        list_path = Path(d) / "dukungan.csv"
        write_csv(list_path, g.rows)
        args.rows_total = len(g.rows)
        log(f"list: {len(g.rows):,} rows, {list_path.stat().st_size / 1e6:.1f} MB CSV, generated in "
            f"{time.perf_counter() - t0:.1f} s; {'no scans' if args.no_scans else 'every scan in the store'}")
        del g.rows
        runs = []
        for k in range(args.runs):
            if args.in_process:
                runs.append(in_process_run(list_path, election, None if args.no_scans else g.scans, k))
                log(f"  run {k + 1}: Validator.process {runs[-1]:.2f} s")
                continue
            r = one_run(list_path, election, None if args.no_scans else g.scans, args)
            log(f"  run {k + 1}: sent in {r['sent_s']:.1f} s; stored -> verdicts {r['stored_to_verdicts_s']:.2f} s; "
                f"counts {r['counts']}")
            runs.append(r["stored_to_verdicts_s"])
    print(machine())
    print(f"rows {args.rows_total:,}, {'without' if args.no_scans else 'with'} scans, {args.runs} runs")
    what = "Validator.process, in this process" if args.in_process else "stored -> verdicts"
    print(f"{what}: median {statistics.median(runs):.2f} s (runs: {', '.join(f'{x:.2f}' for x in runs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
