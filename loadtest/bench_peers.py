"""Our gateway against the official tus Node server and an nginx body sink, in
one run on one machine, with the same load generator.

Targets are interleaved round by round (and their order rotated), so a noisy
neighbour on the shared cores hits all of them alike; each measurement starts
its peer fresh (no state, no background work left over from the previous one)
and stops it afterwards. Figures are medians over rounds.

    python -m loadtest.bench_peers [--duration 15] [--concurrency 32,256] [--rounds 3]

Progress goes to stderr; the Markdown report to stdout.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import time

import msgspec

from loadtest import peers, tusload
from loadtest.tusload import KiB, MiB, LoadConfig, Result

TARGETS = ("gateway", "tus-node", "nginx")
# The targets for the gateway against the tus Node server.
GOAL_RATE_RATIO = 2.0   # chunks/s >= 2x at every concurrency
GOAL_P99_RATIO = 0.5    # p99 <= half at the highest concurrency


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def machine_details(tus_install=None) -> dict[str, str]:
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import aiohttp
    details = {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp (generator)": aiohttp.__version__,
        "node": peers.node_version(),
        "nginx": peers.nginx_version(),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    if tus_install:
        details["tus node"] = peers.tus_node_versions(tus_install)
    return details


def start_peer(name: str, tus_install, gateway_args: list[str], body_buffer: int) -> peers.Peer:
    if name == "gateway":
        return peers.start_gateway(extra_args=gateway_args)
    if name == "tus-node":
        return peers.start_tus_node(tus_install)
    if name == "nginx":
        return peers.start_nginx(body_buffer=body_buffer)
    raise ValueError(name)


def measure(name: str, c: int, a, tus_install) -> Result | str:
    """One fresh peer, one load run; a string says why it could not run."""
    try:
        peer = start_peer(name, tus_install, a.gateway_args, max(1 * MiB, a.chunk))
    except Exception as e:  # a peer that will not start is reported, not fatal
        return f"did not start: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    try:
        time.sleep(a.settle)
        cfg = LoadConfig(url=peer.url, concurrency=c, chunk=a.chunk, upload_size=a.upload_size,
                         duration=a.duration, warmup=a.warmup, checksum=a.checksum,
                         timeout=a.timeout, sink=peer.sink, label=name)
        return tusload.run(cfg)
    finally:
        peer.stop()


def median_result(rs: list[Result]) -> dict[str, float]:
    med = lambda f: statistics.median(getattr(r, f) for r in rs)  # noqa: E731
    return {f: med(f) for f in ("chunks_per_s", "mb_per_s", "p50_ms", "p99_ms", "max_ms")} | {
        "refusals": sum(r.refusals for r in rs), "errors": sum(sum(r.errors.values()) for r in rs)}


def report(results: dict[tuple[str, int], list[Result]], failures: dict[tuple[str, int], list[str]],
           targets: list[str], concs: list[int], details: dict[str, str], a) -> str:
    out = ["## Machine", ""]
    out += [f"- {k}: {v}" for k, v in details.items()]
    out += ["", f"## Results (medians of {a.rounds} rounds; {a.duration:g} s measured after "
            f"{a.warmup:g} s warmup; {a.chunk // KiB} KiB chunks, {a.upload_size / MiB:g} MiB uploads, "
            f"checksum {a.checksum}; MB = 10^6 bytes)", "",
            "| target | conc | chunks/s | MB/s | p50 ms | p99 ms | max ms | refused | errors | chunks/s per round |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    meds: dict[tuple[str, int], dict[str, float]] = {}
    for c in concs:
        for t in targets:
            rs = results.get((t, c), [])
            if not rs:
                why = "; ".join(sorted(set(failures.get((t, c), ["not run"]))))
                out.append(f"| {t} | {c} | – | – | – | – | – | – | – | {why} |")
                continue
            m = meds[(t, c)] = median_result(rs)
            per_round = ", ".join(f"{r.chunks_per_s:.0f}" for r in rs)
            note = f" ({len(failures[(t, c)])} failed to start)" if failures.get((t, c)) else ""
            out.append(f"| {t} | {c} | {m['chunks_per_s']:.0f} | {m['mb_per_s']:.0f} | {m['p50_ms']:.1f} | "
                       f"{m['p99_ms']:.1f} | {m['max_ms']:.1f} | {m['refusals']} | {m['errors']} | "
                       f"{per_round}{note} |")
    if "gateway" in targets and "tus-node" in targets:
        out += ["", "## Gateway / tus-node", "",
                "| conc | chunks/s ratio | p99 ratio | goal |", "|---:|---:|---:|---|"]
        top = max(concs)
        for c in concs:
            g, n = meds.get(("gateway", c)), meds.get(("tus-node", c))
            if not g or not n or not n["chunks_per_s"] or not n["p99_ms"]:
                out.append(f"| {c} | – | – | not measured |")
                continue
            rate, p99 = g["chunks_per_s"] / n["chunks_per_s"], g["p99_ms"] / n["p99_ms"]
            goals = [f"chunks/s >= {GOAL_RATE_RATIO:g}x: {'met' if rate >= GOAL_RATE_RATIO else 'NOT met'}"]
            if c == top:
                goals.append(f"p99 <= {GOAL_P99_RATIO:g}x: {'met' if p99 <= GOAL_P99_RATIO else 'NOT met'}")
            out.append(f"| {c} | {rate:.2f} | {p99:.2f} | {'; '.join(goals)} |")
    if a.xadd and results.get(("xadd", 0)):
        m = median_result(results[("xadd", 0)])
        out += ["", f"Raw XADD ceiling (embedded Valkey, AOF everysec, pipeline depth 16, "
                f"{a.chunk // KiB} KiB): {m['chunks_per_s']:.0f} entries/s, {m['mb_per_s']:.0f} MB/s"]
    out += ["", f"- load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"]
    return "\n".join(out)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_peers", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--concurrency", default="32,256", help="comma-separated concurrent uploads")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--targets", default=",".join(TARGETS), help="subset of " + ",".join(TARGETS))
    p.add_argument("--chunk", type=tusload.parse_size, default=256 * KiB)
    p.add_argument("--upload-size", type=tusload.parse_size, default=8 * MiB)
    p.add_argument("--checksum", choices=("none", "sha1", "crc32c"), default="none",
                   help="none by default: the tus Node server does not verify checksums")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--settle", type=float, default=1.0, help="idle seconds after a peer starts")
    p.add_argument("--gateway-args", default="", help="extra arguments for `unggah up`, space-separated")
    p.add_argument("--xadd", action="store_true", help="also measure raw XADD each round, for reference")
    p.add_argument("--json", default=None, help="also write every single result to this file (JSON lines)")
    a = p.parse_args(argv)
    a.gateway_args = a.gateway_args.split()
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        raise SystemExit(f"unknown targets: {', '.join(sorted(unknown))}")
    concs = [int(x) for x in a.concurrency.split(",")]
    tus_install = None
    if "tus-node" in targets:
        log("installing @tus/server and @tus/file-store from npm ...")
        tus_install = peers.install_tus_node()
    if "nginx" in targets:
        peers.ensure_nginx()
    details = machine_details(tus_install)
    results: dict[tuple[str, int], list[Result]] = {}
    failures: dict[tuple[str, int], list[str]] = {}
    jsonl = open(a.json, "w") if a.json else None
    try:
        for rnd in range(a.rounds):
            # Rotate the order each round so no target always runs first (or right after another).
            order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
            for c in concs:
                for t in order:
                    log(f"round {rnd + 1}/{a.rounds}: {t} at {c} uploads ...")
                    r = measure(t, c, a, tus_install)
                    if isinstance(r, str):
                        log(f"  {t}: {r}")
                        failures.setdefault((t, c), []).append(r)
                        continue
                    log("  " + r.row())
                    results.setdefault((t, c), []).append(r)
                    if jsonl:
                        jsonl.write(msgspec.json.encode({"round": rnd + 1, **msgspec.to_builtins(r)}).decode() + "\n")
            if a.xadd:
                from loadtest import bench_xadd
                log(f"round {rnd + 1}/{a.rounds}: raw XADD ...")
                r = bench_xadd.run_embedded("everysec", payload_size=a.chunk, seconds=min(a.duration, 10.0),
                                            depth=16)
                log("  " + r.row())
                results.setdefault(("xadd", 0), []).append(r)
    finally:
        if jsonl:
            jsonl.close()
        if tus_install:
            shutil.rmtree(tus_install, ignore_errors=True)
    print(report(results, failures, targets, concs, details, a))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
