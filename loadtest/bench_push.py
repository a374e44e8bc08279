"""Benchmark (not a test): one pair's submission pushed end to end through the embedded stack,
compared with the gateway's own capacity measured by loadtest.tusload in the same run.

    python -m loadtest.bench_push                                  # 20,000 rows + 10,000 scans of 200 KB
    python -m loadtest.bench_push --scans 1000 --scan-size 100000  # a quick run

Steps: generate the list (dukungan.generate when installed, else a plain CSV) and the scans
(`<NIK>_ktp.jpg` / `<NIK>_pernyataan.pdf`, random bytes behind a JPEG/PDF header); start
`unggah up` on a free port with a temporary UNGGAH_STATE_DIR (access control off, as for the
load generator); `push` it all (client in this process, on the same cores as the stack) and
wait until every file is stored; then run tusload against the same stack with the same
chunk size, concurrency and checksum; print both and their ratio.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from unggah import processes

ROOT = Path(__file__).resolve().parents[1]


def make_list(path: Path, rows: int, seed: int = 1) -> list[str]:
    """The supporter list; returns the NIKs in order."""
    try:
        from dukungan.election import example_toml, parse_election
        from dukungan.generate import generate, write_csv
        from dukungan.region import synthetic_code_list_text
        from dukungan.rules import prepare
    except ImportError:
        rnd = random.Random(seed)
        niks = [f"1971{rnd.randrange(10**11, 10**12)}" for _ in range(rows)]
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["NO", "NIK", "NAMA"])
            w.writerows([i + 1, n, f"PENDUKUNG {i + 1}"] for i, n in enumerate(niks))
        return niks
    codes = path.parent.parent / "codes.csv"
    codes.write_text(synthetic_code_list_text(), encoding="utf-8")
    toml = example_toml(name="Benchmark Pilwalkot", dpt_base=161413, dpt_source="benchmark", grace_seconds=None,
                        code_list={"path": str(codes).replace("\\", "/")}, scans={"max_bytes": 2_000_000})
    (path.parent.parent / "election.toml").write_text(toml, encoding="utf-8")
    gen = generate(prepare(parse_election(toml)), rows, seed=seed, traps=False)
    write_csv(path, gen.rows)
    return [r[1] for r in gen.rows]


def make_scans(folder: Path, niks: list[str], n: int, size: int) -> int:
    total = 0
    pool = os.urandom(size + 4096)
    for i in range(n):
        nik = niks[(i // 2) % len(niks)]
        if i % 2 == 0:
            name, head = f"{nik}_ktp.jpg", b"\xff\xd8\xff\xe0"
        else:
            name, head = f"{nik}_pernyataan.pdf", b"%PDF-1.4\n"
        # Distinct contents (distinct sha256) at little cost: a rotating window of one random pool.
        k = (i * 7919) % 4096
        data = head + i.to_bytes(8, "big") + pool[k:k + size - len(head) - 8]
        (folder / name).write_bytes(data)
        total += len(data)
    return total


def start_stack(port: int, state_dir: Path, ingesters: int) -> subprocess.Popen:
    log = state_dir.parent / "stack.log"
    env = processes.environment(UNGGAH_STATE_DIR=str(state_dir), UNGGAH_AUTH="off", UNGGAH_LOG_LEVEL="WARNING",
                                UNGGAH_VALKEY_MAXMEMORY="4gb")
    proc = processes.start(processes.command("up", "--port", str(port), "--ingesters", str(ingesters)), env=env,
                           cwd=ROOT, log=log)
    processes.wait_ready(f"http://127.0.0.1:{port}/readyz", 60, proc, log)
    return proc


def stop_stack(proc: subprocess.Popen) -> None:
    processes.stop(proc, timeout=60)


def main(argv: list[str] | None = None) -> int:
    from client.cli import parse_size

    ap = argparse.ArgumentParser(prog="python -m loadtest.bench_push", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--scans", type=int, default=10_000)
    ap.add_argument("--scan-size", type=parse_size, default=200_000)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--chunk-size", type=parse_size, default=4 << 20)
    ap.add_argument("--ingesters", type=int, default=1)
    ap.add_argument("--tusload-seconds", type=float, default=8.0)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    a = ap.parse_args(argv)

    import uvloop

    from client.api import push
    from loadtest.tusload import LoadConfig, run_load

    tmp = Path(tempfile.mkdtemp(prefix="unggah-bench-"))
    sub = tmp / "kirim"
    sub.mkdir()
    t = time.monotonic()
    niks = make_list(sub / "daftar-dukungan.csv", a.rows)
    scan_bytes = make_scans(sub, niks, a.scans, a.scan_size)
    list_bytes = (sub / "daftar-dukungan.csv").stat().st_size
    print(f"generated {a.rows:,} rows ({list_bytes / 1e6:.1f} MB) and {a.scans:,} scans "
          f"({scan_bytes / 1e6:.1f} MB) in {time.monotonic() - t:.1f} s", flush=True)
    port = a.port or processes.free_port()
    proc = start_stack(port, tmp / "state", a.ingesters)
    server = f"http://127.0.0.1:{port}"
    try:
        election = str(tmp / "election.toml") if (tmp / "election.toml").exists() else None
        rep = uvloop.run(push([sub], server, parallel=a.parallel, chunk_size=a.chunk_size, election=election,
                              state_path=tmp / "push-state.json", wait=600, progress=sys.stderr))
        counts = rep.counts()
        total = rep.bytes_total
        print(f"push: {len(rep.files):,} files, {total / 1e6:.1f} MB; preflight+upload "
              f"{rep.upload_seconds:.1f} s, end to end (all stored) {rep.seconds:.1f} s; "
              f"{total / 1e6 / rep.seconds:.1f} MB/s, {len(rep.files) / rep.seconds:.0f} files/s end to end; "
              f"{rep.retries} retries / {rep.requests} requests; states {counts}", flush=True)
        receipts = sum(1 for f in rep.files if f.receipt_status == "verified")
        print(f"receipts verified: {receipts:,}", flush=True)
        chunk = min(a.scan_size, a.chunk_size)
        client_rate = total / 1e6 / rep.seconds
        client_upload_rate = total / 1e6 / max(1e-9, rep.upload_seconds - rep.preflight_seconds)
        print(f"client: {client_rate:.1f} MB/s end to end, {client_upload_rate:.1f} MB/s while uploading "
              f"(preflight {rep.preflight_seconds:.1f} s excluded)", flush=True)
        # Capacity, two ways, same chunk size, concurrency and checksum as the client:
        # appends to long uploads (the gateway's raw PATCH rate) and one upload per scan-sized file.
        for label, upload_size in (("append", 8 << 20), ("per-file", a.scan_size)):
            cfg = LoadConfig(url=server + "/files/", concurrency=a.parallel, chunk=chunk, upload_size=upload_size,
                             duration=a.tusload_seconds, warmup=1.0, checksum="crc32c", label=label)
            cap = uvloop.run(run_load(cfg))
            print(f"tusload {label} (upload {upload_size:,} B, chunk {chunk:,} B, c={cfg.concurrency}, crc32c): "
                  f"{cap.mb_per_s:.1f} MB/s, {cap.chunks_per_s:.0f} PATCH/s, {cap.uploads_completed} uploads, "
                  f"p99 {cap.p99_ms:.0f} ms, refusals {cap.refusals}", flush=True)
            print(f"  ratio client/tusload {label}: end to end {client_rate / cap.mb_per_s:.2f}, "
                  f"while uploading {client_upload_rate / cap.mb_per_s:.2f}", flush=True)
    finally:
        stop_stack(proc)
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
