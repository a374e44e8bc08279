"""Overload: three times the load the gateway can carry (a benchmark, not a test).

    python -m loadtest.bench_overload [--rounds 3] [--duration 8] [--factor 3] [--variant SETTINGS ...]
                                      [--wire] [--dedicated-core] [--fsync always]
                                      [--variant python=.venv-3.13/bin/python]

Per round, on a fresh embedded Valkey (AOF everysec) and one `unggah serve` (tokens on):
capacity = closed-loop chunks/s at 64 uploads; then an open-loop run offering
`factor` x capacity over 256 uploads, each its own client with its own connection,
honouring Retry-After. Reports goodput (accepted chunks/s) against capacity, how fast
refusals are answered as the load generator sees it (from sending the request to the
refusal's arrival), and timeouts. A quiet client (loadtest/probe.py, its own process,
four connections, one-chunk uploads) runs beside the overload and reports the same
answer times without the load generator's own queueing in them. Targets (issue 4):
goodput >= 90% of capacity, refusal p99 <= 10 ms. With --variant, every round runs each
variant in turn, so the noise of a shared machine falls on all of them alike. With --wire,
refusals are also timed on loopback by tcpdump (loadtest/wiretime.py): the gateway's own
answer time, without either client's queueing in it. Each round also reports the CPU time the
hypervisor took from this (virtual) machine during the overload (steal, /proc/stat): a round
with steal in it ran on less machine than the others (but not every slow hour shows as steal).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from typing import NamedTuple
from urllib.parse import urlsplit

import msgspec

from loadtest import wiretime
from loadtest.benchstack import cpu_steal, empty_buffer, gateway_stack, log, machine
from loadtest.probe import ProbeResult
from loadtest.tusload import KiB, MiB, LoadConfig, Result, percentile, run


def _samples(metrics_url: str, prefix: str) -> list[tuple[str, float]]:
    """The gateway's /metrics lines starting with `prefix`: (line, value)."""
    import urllib.request
    with urllib.request.urlopen(metrics_url, timeout=10) as resp:
        return [(line, float(line.rsplit(" ", 1)[1])) for line in resp.read().decode().splitlines()
                if line.startswith(prefix)]


def refusal_reasons(metrics_url: str) -> dict[str, float]:
    """The gateway's own count of refusals by reason (cumulative over the run)."""
    out: dict[str, float] = {}
    for line, value in _samples(metrics_url, "unggah_refusals_total{"):
        reason = line.split('reason="', 1)[1].split('"', 1)[0]
        out[reason] = out.get(reason, 0) + value
    return out


def long_collections(metrics_url: str, over: float = 0.005) -> float:
    """The gateway's garbage collections so far that held its loop longer than `over` seconds
    (a bucket bound of unggah_gc_pause_seconds), all generations."""
    samples = _samples(metrics_url, "unggah_gc_pause_seconds_")
    total = sum(v for line, v in samples if line.startswith("unggah_gc_pause_seconds_count{"))
    within = sum(v for line, v in samples
                 if line.startswith("unggah_gc_pause_seconds_bucket{") and f'le="{over}"' in line)
    return total - within


class Round(NamedTuple):
    cap: Result  # closed loop at 64 uploads
    over: Result  # factor x capacity, open loop
    probe: ProbeResult  # the quiet client beside it
    wire_refused: list[float]  # refusals' answer times on the wire (seconds); empty without --wire
    peak_rss: int  # the gateway's peak resident memory over the round, bytes
    steal: float  # CPU seconds the hypervisor took from the machine during the overload
    long_gcs: float  # the gateway's garbage collections over 5 ms during the overload

    @property
    def timeouts(self) -> int:
        return self.over.errors.get("timeout", 0)


def one_round(st, a, base) -> Round:
    """Capacity, then `factor` x capacity with the quiet client beside it (and, with --wire, a
    capture of the overload); the buffer is emptied after each."""
    cap = run(LoadConfig(concurrency=64, label="capacity", **base))
    empty_buffer(st.redis_url)
    quiet = subprocess.Popen(
        [sys.executable, "-m", "loadtest.probe", "--url", st.files, "--delay", str(base["warmup"]),
         "--seconds", str(a.duration), "--chunk", str(a.chunk), "-H", f"Authorization: Bearer {st.tokens['bench']}"],
        stdout=subprocess.PIPE)
    pcap = st.work / "overload.pcap"
    port = urlsplit(st.files).port
    with wiretime.capture(port, pcap) if a.wire else nullcontext():
        began = time.time()  # the generator's start, give or take its setup: the same window on the wire
        stolen = cpu_steal()
        gcs = long_collections(st.metrics)
        over = run(LoadConfig(concurrency=a.uploads, rate=a.factor * cap.chunks_per_s,
                              label=f"{a.factor:g}x offered", **base))
        stolen = cpu_steal() - stolen
        gcs = long_collections(st.metrics) - gcs
    probe = msgspec.json.decode(quiet.communicate(timeout=60)[0], type=ProbeResult)
    since = began + base["warmup"]
    wire = wiretime.answer_times(pcap, port, since, since + a.duration) if a.wire else {}
    empty_buffer(st.redis_url)
    return Round(cap, over, probe, wire.get(503, []), st.gateway_peak_rss(), stolen, gcs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_overload", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--factor", type=float, default=3.0)
    p.add_argument("--chunk", type=int, default=256 * KiB)
    p.add_argument("--uploads", type=int, default=256, help="uploads (clients) offering the overload")
    p.add_argument("--fsync", default="everysec", choices=["everysec", "always", "no"])
    p.add_argument("--dedicated-core", action="store_true",
                   help="give the gateway CPU 1 to itself; the load generator, the quiet client and Valkey share CPU 0")
    p.add_argument("--wire", action="store_true",
                   help="also time refusals on the wire (tcpdump on loopback; see loadtest/wiretime.py)")
    p.add_argument("--gateway-env", action="append", default=[], metavar="UNGGAH_NAME=VALUE",
                   help="a gateway setting for this run, e.g. UNGGAH_APPEND_TARGET_WAIT_MS=500 (repeatable)")
    p.add_argument("--variant", action="append", default=[], metavar="UNGGAH_NAME=VALUE[,...]",
                   help="compare gateway settings side by side: each round runs every variant in turn, each "
                        "on a fresh stack, e.g. --variant UNGGAH_APPEND_SLOTS=4 --variant UNGGAH_APPEND_SLOTS=16 "
                        "(repeatable; on top of --gateway-env). The key python=PATH runs that variant's gateway "
                        "under another interpreter, e.g. --variant python=.venv-3.13/bin/python; "
                        "PYTHONPATH=WORKTREE runs another commit's code (a checkout of it: git worktree add)")
    a = p.parse_args(argv)
    if a.wire and (why := wiretime.available()):
        p.error(f"--wire: {why}")
    gateway_cpus = None
    if a.dedicated_core:
        os.sched_setaffinity(0, {0})  # this process, and what it starts: Valkey, the quiet client
        gateway_cpus = {1}
    common = dict(kv.split("=", 1) for kv in a.gateway_env)
    variants = [v.strip() for v in a.variant] or [""]
    rows: dict[str, list[Round]] = {v: [] for v in variants}
    for rnd in range(a.rounds):
        for variant in variants:
            env = {**common, **dict(kv.split("=", 1) for kv in variant.split(",") if kv)}
            python = env.pop("python", sys.executable)
            with gateway_stack(fsync=a.fsync, gateway_cpus=gateway_cpus, python=python, **env) as st:
                base = dict(url=st.files, chunk=a.chunk, upload_size=16 * a.chunk, duration=a.duration, warmup=1.5,
                            checksum="crc32c", headers={"Authorization": f"Bearer {st.tokens['bench']}"}, timeout=30)
                got = one_round(st, a, base)
                reasons = refusal_reasons(st.metrics)
            rows[variant].append(got)
            cap, over, probe = got.cap, got.over, got.probe
            on_wire = sorted(got.wire_refused)
            wire_note = (f"; on the wire: {len(on_wire)} refusals, p50 {percentile(on_wire, 0.5) * 1000:.1f} ms, "
                         f"p99 {percentile(on_wire, 0.99) * 1000:.1f} ms" if a.wire else "")
            log(f"round {rnd + 1}{' ' + variant if variant else ''}: capacity {cap.chunks_per_s:.0f}/s; offered "
                f"{a.factor * cap.chunks_per_s:.0f}/s: goodput {over.chunks_per_s:.0f}/s, refusals {over.refusals} "
                f"(p50 {over.refusal_p50_ms:.1f} ms, p99 {over.refusal_p99_ms:.1f} ms; generator's own loop lag "
                f"p99 {over.loop_lag_p99_ms:.1f} ms), "
                f"timeouts {got.timeouts}, errors {over.errors}; quiet client: {probe.refused} refused "
                f"(p50 {probe.refused_p50_ms:.1f} ms, p99 {probe.refused_p99_ms:.1f} ms), {probe.admitted} admitted "
                f"(p50 {probe.admitted_p50_ms:.0f} ms){wire_note}; gateway peak RSS {got.peak_rss / MiB:.0f} MiB; "
                f"host steal {got.steal:.2f} CPU s; gateway collections over 5 ms {got.long_gcs:.0f}; "
                f"refusals by reason {reasons}")

    med = statistics.median
    print(f"\nMachine: {machine()}; {a.rounds} rounds of {a.duration:g} s, medians; {a.chunk // KiB} KiB chunks; "
          f"AOF {a.fsync}{'; gateway on a core of its own' if a.dedicated_core else ''}"
          f"{'; ' + ' '.join(a.gateway_env) if a.gateway_env else ''}\n")
    print("| settings | capacity (closed loop, 64 uploads) | offered | goodput | goodput / capacity | "
          "refusals per round | refusal answered p50 / p99, load generator | generator's own loop lag p99 | "
          "p50 / p99, quiet client (all rounds) | p50 / p99 on the wire (all rounds) | gateway peak RSS | timeouts | "
          "host steal during 3x (rounds) | gateway GC pauses over 5 ms during 3x (rounds) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for variant, rs in rows.items():
        caps = [r.cap for r in rs]
        overs = [r.over for r in rs]
        ratios = [o.chunks_per_s / c.chunks_per_s for c, o in zip(caps, overs)]
        # A quiet client sees tens of refusals per round: pool them for its p99.
        pooled = sorted(ms for r in rs for ms in r.probe.refused_ms)
        wired = sorted(t * 1000 for r in rs for t in r.wire_refused)
        wire_cell = (f"{percentile(wired, 0.5):.1f} / {percentile(wired, 0.99):.1f} ms ({len(wired)} refused)"
                     if a.wire else "not captured")
        print(f"| {variant or 'defaults'} | {med(c.chunks_per_s for c in caps):.0f} chunks/s | {a.factor:g}x over "
              f"{a.uploads} uploads | {med(o.chunks_per_s for o in overs):.0f} chunks/s | {med(ratios):.0%} "
              f"({', '.join(f'{x:.0%}' for x in ratios)}) | {med(o.refusals for o in overs):.0f} | "
              f"{med(o.refusal_p50_ms for o in overs):.1f} / {med(o.refusal_p99_ms for o in overs):.1f} ms "
              f"({', '.join(f'{o.refusal_p99_ms:.1f}' for o in overs)}) | "
              f"{med(o.loop_lag_p99_ms for o in overs):.1f} ms | "
              f"{percentile(pooled, 0.5):.1f} / {percentile(pooled, 0.99):.1f} ms ({len(pooled)} refused) | "
              f"{wire_cell} | {med(r.peak_rss for r in rs) / MiB:.0f} MiB | {sum(r.timeouts for r in rs)} | "
              f"{', '.join(f'{r.steal:.2f}' for r in rs)} CPU s | {', '.join(f'{r.long_gcs:.0f}' for r in rs)} |")
    print("\nTargets: goodput >= 90% of capacity, refusal p99 <= 10 ms.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
