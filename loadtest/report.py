"""The rehearsal report: what a run of `loadtest.rehearse` saw, in one page.

Reads the output folder (journal.json from the Locust clients, verification.json
from the zero-loss check, buffer.json, faults.json, run.json, Locust's own
locust.json) and writes `summary.json` (machine-readable) and `report.md`.

    python -m loadtest.report OUT_DIR     # rebuild both from a finished run's folder

Sections: verdict (one line), per pair, zero-loss check, the error taxonomy in
the words of the reported failures, latency, throughput over time, buffer
fill, faults, window. docs/rehearsal.md explains how to read each one.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter, defaultdict
from pathlib import Path

MB = 1e6

# The symptoms reported from past deadline nights, and what the rehearsal counts for each.
TAXONOMY = [
    ("timeouts", "uploads hanging, then 'error sistem'", lambda k: k == "timeout"),
    ("connection errors", "'error sistem' (connection reset or refused, not injected)",
     lambda k: k in ("connection", "connection-reset", "connection-refused")),
    ("unexpected 5xx", "502 Bad Gateway / 500", lambda k: k.startswith("5xx:")),
    ("refused by the server, with reason", "'tertolak oleh server' (refused by the server)",
     lambda k: k.startswith("refused:")),
    ("offset conflicts (409), resumed", "(none: a resume, not a failure)", lambda k: k.startswith("conflict:")),
    ("other client errors (4xx)", "'419 page expired' and similar", lambda k: k.startswith("http:")),
]


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile: a value that actually occurred."""
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v), max(1, math.ceil(q * len(v)))) - 1]


def _load(out: Path, name: str, default):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return default


def classify(f: dict, state: str | None, lost: set[str]) -> str:
    if f["outcome"] == "complete":
        if f["url"] in lost:
            return "lost"
        return "stored" if state == "stored" else "not verified"
    if f["outcome"] == "abandoned":  # the client gave it up (tus-js-client's onError), created or not
        return "abandoned"
    if f["url"]:
        return "partial"
    if f["outcome"] == "refused":
        return "refused"
    if f["outcome"] == "error":
        return "error"
    return "not created"  # still trying to create when the run ended


def build(out: str | Path) -> dict:
    out = Path(out)
    journal = _load(out, "journal.json", {})
    verification = _load(out, "verification.json", {"ran": False, "passed": False, "lost_bytes": None})
    buffer = _load(out, "buffer.json", {"samples": [], "budget": 0, "source": ""})
    faults = _load(out, "faults.json", [])
    run = _load(out, "run.json", {})
    locust_stats = _load(out, "locust.json", [])
    scenario = run.get("scenario", journal.get("params", {}).get("scenario", "?"))
    t0 = run.get("start_at") or journal.get("params", {}).get("start_at", 0.0)
    close_at = run.get("close_at") or journal.get("params", {}).get("close_at", 0.0)
    end_at = run.get("end_at") or journal.get("params", {}).get("end_at", 0.0)
    duration = max(1e-9, end_at - t0)
    files = [f for f in journal.get("files", []) if f["kind"] != "probe"]
    states = verification.get("states", {})
    lost_urls = {u["url"] for u in verification.get("lost_uploads", [])}
    counts = Counter(journal.get("counts", {}))

    # ---- per pair
    pairs = []
    plan = {p["pair"]: p for p in journal.get("pairs", [])}
    by_pair: dict[str, list[dict]] = defaultdict(list)
    for f in files:
        by_pair[f["pair"]].append(f)
    missing_total = 0
    started_total = 0
    for name in sorted(plan):
        fs = by_pair.get(name, [])
        cls = Counter()
        stored_bytes = 0
        secs = []
        for f in fs:
            c = classify(f, states.get(f["url"]), lost_urls)
            cls[c] += 1
            if c == "stored":
                stored_bytes += f["size"]
                secs.append(f["completed_at"] - f["first_attempt"])
        # The server's clock is the only clock: a file whose one creation attempt reached the server
        # after close, and was refused for that, was not started in time (the client sent it too late).
        late = [f for f in fs if f["refused_reason"] == "window-closed" and f["attempts"] == 1]
        started = [f for f in fs if f["first_attempt"] < close_at and f not in late]
        not_stored = sum(1 for f in started if classify(f, states.get(f["url"]), lost_urls) != "stored")
        missing_total += not_stored
        started_total += len(started)
        reasons = Counter(f["refused_reason"] for f in fs if f["refused_reason"])
        abandoned_why = Counter(f.get("abandoned") or "upload abandoned" for f in fs
                                if f["outcome"] == "abandoned")
        pp = plan[name]
        pairs.append({
            "pair": name, "planned_files": pp["planned_files"], "planned_bytes": pp["planned_bytes"],
            "started_before_close": len(started), "stored": cls["stored"], "refused": cls["refused"],
            "partial": cls["partial"], "not_created": cls["not created"], "errors": cls["error"],
            "lost": cls["lost"], "abandoned": cls["abandoned"], "abandoned_symptoms": dict(abandoned_why),
            "not_verified": cls["not verified"], "never_started": pp["not_started_files"],
            "stored_bytes": stored_bytes,
            "stored_share_of_plan": stored_bytes / pp["planned_bytes"] if pp["planned_bytes"] else None,
            "everything_started_stored": not_stored == 0, "arrived_after_close": len(late),
            "refusal_reasons": dict(reasons),
            "file_seconds_p95": pct(secs, 0.95),
        })

    # ---- taxonomy
    taxonomy = []
    for label, symptom, match in TAXONOMY:
        kinds = {k: v for k, v in counts.items() if match(k)}
        taxonomy.append({"what": label, "reported_as": symptom, "count": sum(kinds.values()), "by_kind": kinds})
    partial_files = sum(p["partial"] for p in pairs)
    never_created = sum(p["refused"] + p["not_created"] for p in pairs)
    taxonomy.append({"what": "partial uploads at the end", "reported_as": "'79% uploaded at the deadline'",
                     "count": partial_files, "by_kind": {}})
    taxonomy.append({"what": "files never created before close", "reported_as": "'21% lost to errors'",
                     "count": never_created, "by_kind": {}})
    abandoned_by_kind: Counter = Counter()
    for q in pairs:
        abandoned_by_kind.update(q["abandoned_symptoms"])
    abandoned_total = sum(abandoned_by_kind.values())
    taxonomy.append({"what": "uploads abandoned by the client after its retries",
                     "reported_as": "'upload gagal' (tus-js-client gave up: onError)",
                     "count": abandoned_total, "by_kind": dict(abandoned_by_kind)})
    taxonomy.append({"what": "acknowledged bytes lost", "reported_as": "data overwritten or lost (Sidoarjo 2020)",
                     "count": verification.get("lost_bytes"), "by_kind": {}})
    taxonomy.append({"what": "injected by the rehearsal", "reported_as": "(the fault under test)",
                     "count": counts.get("cut:injected", 0), "by_kind": {"cut:injected": counts.get("cut:injected", 0)}})

    # ---- latency
    latency = {}
    for name, values in sorted(journal.get("latency_ms", {}).items()):
        latency[name] = {"count": len(values), "p50": pct(values, 0.5), "p95": pct(values, 0.95),
                         "p99": pct(values, 0.99), "max": max(values) if values else None,
                         "unit": "s" if name == "file seconds" else "ms"}
    by_client: dict[str, list[float]] = defaultdict(list)
    client_files: Counter = Counter()
    client_stored: Counter = Counter()
    client_refusals: Counter = Counter()
    client_abandoned: Counter = Counter()
    for f in files:
        client_files[f["client"]] += 1
        client_refusals[f["client"]] += sum(f["refusals"].values()) + sum(
            v for k, v in f["errors"].items() if k.startswith("refused:"))
        client_abandoned[f["client"]] += f["outcome"] == "abandoned"
        if classify(f, states.get(f["url"]), lost_urls) == "stored":
            client_stored[f["client"]] += 1
            by_client[f["client"]].append(f["completed_at"] - f["first_attempt"])
    clients = {c: {"files": client_files[c], "stored": client_stored[c], "refusals": client_refusals[c],
                   "abandoned": client_abandoned[c],
                   "file_seconds_p50": pct(by_client[c], 0.5), "file_seconds_p95": pct(by_client[c], 0.95)}
               for c in sorted(client_files)}
    locust_requests = [{"name": s.get("name"), "method": s.get("method"), "requests": s.get("num_requests"),
                        "failures": s.get("num_failures")} for s in locust_stats if isinstance(s, dict)]

    # ---- throughput over time (tenths of the run)
    timeline = {int(k): v for k, v in journal.get("timeline", {}).items()}
    acked = sum(v.get("bytes", 0) for v in timeline.values())
    stored_bytes = sum(p["stored_bytes"] for p in pairs)
    stored_files = sum(p["stored"] for p in pairs)
    first = journal.get("t_first_request") or t0
    last = max((f["completed_at"] for f in files if f["completed_at"]), default=end_at)
    busy_seconds = max(1.0, last - first)
    load_seconds = duration
    window_5s = [sum(timeline.get(s + i, {}).get("bytes", 0) for i in range(5)) / 5 for s in
                 range(0, int(duration) + 1)]
    width = max(1, math.ceil(duration / 10))
    n_buckets = math.ceil(duration / width)
    buckets = []
    samples = buffer.get("samples", [])
    for b in range(n_buckets):
        lo, hi = b * width, (b + 1) * width
        secs = [v for s, v in timeline.items() if lo <= s < hi]
        agg: Counter = Counter()
        for v in secs:
            agg.update(v)
        buf = [s["bytes"] for s in samples if lo <= s["t"] < hi and s.get("bytes") is not None]
        buckets.append({
            "from_s": round(lo, 1), "to_s": round(hi, 1),
            "acked_MBps": agg.get("bytes", 0) / width / MB,
            "created": agg.get("created", 0), "completed": agg.get("completed", 0),
            "refused": sum(v for k, v in agg.items() if k.startswith("refused:")),
            "errors": sum(v for k, v in agg.items() if k.startswith(("5xx:", "timeout", "connection"))),
            "buffer_peak_MB": (max(buf) / MB) if buf else None,
        })
    throughput = {"acked_bytes": acked, "acked_MBps_mean": acked / load_seconds / MB,
                  "acked_MBps_peak_5s": max(window_5s, default=0) / MB,
                  "stored_files": stored_files, "stored_bytes": stored_bytes,
                  "stored_MBps_mean": stored_bytes / load_seconds / MB, "files_per_s": stored_files / load_seconds,
                  "load_seconds": load_seconds, "busy_seconds": busy_seconds,
                  "acked_MBps_busy": acked / busy_seconds / MB, "timeline": buckets}

    # ---- buffer
    high_ratio = 0.8
    extra = (run.get("stack") or {}).get("extra_env") or {}
    if "UNGGAH_BUFFER_HIGH_RATIO" in extra:
        high_ratio = float(extra["UNGGAH_BUFFER_HIGH_RATIO"])
    budget = buffer.get("budget") or 0
    vals = [s for s in samples if s.get("bytes") is not None]
    interval = (samples[1]["t"] - samples[0]["t"]) if len(samples) > 1 else 0.5
    buf_summary = {
        "source": buffer.get("source") or "none", "budget": budget or None,
        "high_watermark": int(budget * high_ratio) if budget else None,
        "peak": max((s["bytes"] for s in vals), default=None),
        "seconds_above_high": (sum(1 for s in vals if s["bytes"] >= budget * high_ratio) * interval) if budget else None,
        "seconds_unreadable": sum(1 for s in samples if s.get("bytes") is None) * interval,
        "sparkline": sparkline([s.get("bytes") for s in samples], budget or None),
        "samples": [[s["t"], s.get("bytes")] for s in samples],
    }

    # ---- window (deadline) and fault
    probes = journal.get("probes", [])
    window = None
    if probes or scenario == "deadline-rush":
        window = {"close_s": round(close_at - t0, 1), "closes_local": (run.get("window") or {}).get("closes_local"),
                  "grace_seconds": (run.get("window") or {}).get("grace_seconds"),
                  "probes": len(probes),
                  "probes_refused_window_closed": sum(1 for p in probes if p["status"] == 403
                                                      and p["reason"] == "window-closed"),
                  "probes_accepted": sum(1 for p in probes if p["status"] == 201),
                  "appends_after_close": counts.get("append-after-close", 0),
                  "creations_refused_window_closed": counts.get("refused:window-closed", 0),
                  "first_attempt_arrived_after_close": sum(p["arrived_after_close"] for p in pairs),
                  "expired_after_grace": counts.get("expired", 0)}
    fault = fault_summary(scenario, faults, counts, files, window, buf_summary, verification)

    # ---- verdict
    reasons = []
    if not verification.get("ran"):
        reasons.append("the zero-loss check did not run")
    elif not verification.get("passed"):
        reasons.append(f"{verification['lost_bytes']:,} acknowledged bytes lost in "
                       f"{len(verification.get('lost_uploads', []))} uploads")
    if missing_total:
        bad = [p["pair"] for p in pairs if not p["everything_started_stored"]]
        reasons.append(f"{missing_total} of {started_total} files started before close not stored "
                       f"({len(bad)} of {len(pairs)} pairs: {', '.join(bad[:6])}{'...' if len(bad) > 6 else ''})")
    if abandoned_total:
        # A client that gives up after its retries (tus-js-client's defaults) turns every refusal
        # that outlasts them into a lost file: the operator sees "upload failed", whatever the cause.
        worst = ", ".join(f"{k} ({v})" for k, v in abandoned_by_kind.most_common(3))
        reasons.append(f"{abandoned_total} uploads abandoned by their clients after their retries "
                       f"({sum(1 for q in pairs if q['abandoned'])} of {len(pairs)} pairs): {worst}")
    unexpected = taxonomy[2]["count"]
    if unexpected:
        reasons.append(f"{unexpected} unexpected 5xx answers")
    if window and run.get("embedded") and window["probes_accepted"]:
        reasons.append(f"{window['probes_accepted']} uploads created after the window closed")
    if fault.get("expected") and not fault.get("happened"):
        reasons.append(f"the fault did not happen ({fault.get('why', 'see faults')})")
    ok = not reasons
    refused = taxonomy[3]
    line = (f"{'PASS' if ok else 'FAIL'} {scenario}: "
            f"{verification.get('lost_bytes') if verification.get('ran') else '?'} acknowledged bytes lost; "
            f"{sum(p['everything_started_stored'] for p in pairs)}/{len(pairs)} pairs stored everything started "
            f"before close ({stored_files} files, {stored_bytes / MB:.1f} MB, "
            f"{sum(p['stored_bytes'] for p in pairs) / max(1, sum(p['planned_bytes'] for p in pairs)):.0%} of plan); "
            f"{refused['count']} refusals with reason, {taxonomy[0]['count']} timeouts, {unexpected} unexpected 5xx, "
            f"{abandoned_total} uploads abandoned"
            + ("" if ok else " -- " + "; ".join(reasons)))

    summary = {
        "scenario": scenario, "verdict": {"ok": ok, "status": "PASS" if ok else "FAIL", "line": line,
                                          "reasons": reasons},
        "run": {k: run.get(k) for k in ("base", "target", "embedded", "argv", "locust_cmd", "params", "stack",
                                        "window", "fault_at", "fault_for", "outage_signal")}
        | {"start_at": t0, "close_s": round(close_at - t0, 2), "end_s": round(end_at - t0, 2),
           "users_max": journal.get("users_max"),
           "first_request_s": round(journal.get("t_first_request", t0) - t0, 2)},
        "zero_loss": {k: v for k, v in verification.items() if k != "states"},
        "params": journal.get("params", {}), "pairs": pairs, "taxonomy": taxonomy, "latency": latency, "clients": clients,
        "locust_requests": locust_requests, "throughput": throughput, "buffer": buf_summary,
        "window": window, "fault": fault, "fault_events": faults,
        "files": {"html": "locust.html", "json": "summary.json", "journal": "journal.json", "logs": "logs/"},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "report.md").write_text(render_text(summary))
    return summary


def fault_summary(scenario, events, counts, files, window, buf, verification) -> dict:
    whats = [e["what"] for e in events]
    skipped = next((e for e in events if e["what"] == "fault skipped"), None)
    if scenario == "ingest-outage":
        began = any(w.startswith("ingesters stopped") or w.startswith("ingesters terminated") for w in whats)
        ended = any(w.startswith("ingesters continued") or w.startswith("ingesters restarted") for w in whats)
        shed = {k: v for k, v in counts.items() if k in ("refused:buffer-high", "refused:buffer-full")}
        return {"expected": True, "kind": "ingest outage", "happened": began and ended or bool(
                    any("hook" in w for w in whats)),
                "skipped": skipped["why"] if skipped else None, "shedding": shed, "shed_total": sum(shed.values()),
                "buffer_peak": buf["peak"], "why": "skipped" if skipped else "no outage event"}
    if scenario == "redis-restart":
        killed = any(w.startswith("valkey killed") for w in whats)
        back = any(w.startswith("valkey restarted") for w in whats)
        seen = {k: v for k, v in counts.items() if k in ("refused:buffer-unavailable", "timeout", "connection",
                                                         "connection-reset", "connection-refused")
                or k.startswith("5xx:")}
        return {"expected": True, "kind": "redis restart", "happened": killed and back or bool(
                    any("hook" in w for w in whats)),
                "skipped": skipped["why"] if skipped else None, "client_saw": seen,
                "lost_bytes_after_restart": verification.get("lost_bytes"), "why": "skipped" if skipped else
                "no restart event"}
    if scenario == "flaky-network":
        cut = [f for f in files if f["cuts"]]
        return {"expected": True, "kind": "connections cut mid-PATCH", "happened": counts.get("cut:injected", 0) > 0,
                "cuts": counts.get("cut:injected", 0), "uploads_cut": len(cut),
                "uploads_cut_completed": sum(1 for f in cut if f["outcome"] == "complete"),
                "resumes": sum(f["resumes"] for f in files),
                "impatient_gave_up": counts.get("gave-up-and-retried", 0), "why": "no PATCH was cut"}
    if scenario == "deadline-rush":
        happened = bool(window and (window["probes_refused_window_closed"] or window["creations_refused_window_closed"]))
        return {"expected": True, "kind": "the server's window closes", "happened": happened,
                "why": "no creation was refused with window-closed"}
    return {"expected": False, "happened": False}


BARS = " ▁▂▃▄▅▆▇█"


def sparkline(values: list, top: float | None) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return ""
    top = top or max(vals) or 1
    # At most 80 characters: each one the peak of its stretch.
    step = max(1, math.ceil(len(values) / 80))
    out = []
    for i in range(0, len(values), step):
        part = [v for v in values[i:i + step] if v is not None]
        if not part:
            out.append("×")
            continue
        out.append(BARS[min(8, int(round(8 * max(part) / top)))])
    return "".join(out)


def _f(v, fmt: str = "{:.0f}", none: str = "-") -> str:
    return none if v is None else fmt.format(v)


def _kind(k: str) -> str:
    """A counted kind without its class prefix ("refused:buffer-full" -> "buffer-full"); a symptom
    sentence such as "upload abandoned after 4 retries: 503 buffer-full" is kept whole."""
    head, sep, rest = k.partition(":")
    return rest if sep and " " not in head else k


def render_text(s: dict) -> str:
    r = s["run"]
    L = [f"# Rehearsal report: {s['scenario']}", "", f"**{s['verdict']['line']}**", ""]
    L += ["## Run", "",
          f"- target: {r.get('base')} ({'embedded stack started by the runner' if r.get('embedded') else 'deployed, not controlled'})",
          f"- command: `python -m loadtest.rehearse {' '.join(r.get('argv') or [])}`",
          f"- load: {r['end_s']:.0f} s; no new upload after {r['close_s']:.0f} s; first request at "
          f"{r['first_request_s']:.1f} s; up to {r.get('users_max')} operators"]
    p = s.get("params") or r.get("params") or {}
    if p:
        L.append(f"- plan: {p.get('pairs')} pairs x {p.get('operators')} operators; per pair {p.get('rows'):,} rows "
                 f"in lists of {p.get('rows_per_list'):,} ({p.get('row_bytes')} B/row) and {p.get('scans')} scans of "
                 f"{p.get('scan_bytes', 0) / 1024:.0f} KiB; chunk {p.get('chunk', 0) / 1024:.0f} KiB; surge "
                 f"{p.get('surge')}")
    if r.get("stack"):
        st = r["stack"]
        L.append(f"- stack: {st['ingesters']} ingester(s), {st['partitions']} partitions, AOF {st['appendfsync']}, "
                 f"maxmemory {st['maxmemory']}, buffer budget {_f(st.get('buffer_budget'), '{:,}', 'default')} B"
                 + (f", {st['extra_env']}" if st.get("extra_env") else ""))
    if r.get("window"):
        L.append(f"- window: closes {r['window']['closes_local']}, grace {r['window']['grace_seconds']} s")
    L += ["", "## Per pair", "",
          "| pair | planned files | started before close | stored | refused | partial | not created | abandoned | "
          "lost | stored MB | of plan | all started stored | p95 file s |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for q in s["pairs"]:
        L.append(f"| {q['pair']} | {q['planned_files']} | {q['started_before_close']} | {q['stored']} | "
                 f"{q['refused']} | {q['partial']} | {q['not_created']} | "
                 f"{'**' + str(q['abandoned']) + '**' if q['abandoned'] else 0} | {q['lost']} | "
                 f"{q['stored_bytes'] / MB:.1f} | {_f(q['stored_share_of_plan'], '{:.0%}')} | "
                 f"{'yes' if q['everything_started_stored'] else '**no**'} | {_f(q['file_seconds_p95'], '{:.1f}')} |")
    for q in s["pairs"]:
        if q.get("abandoned"):
            L.append(f"- {q['pair']}: " + "; ".join(f"{v} x {k}" for k, v in sorted(
                q["abandoned_symptoms"].items(), key=lambda x: -x[1])))
    z = s["zero_loss"]
    L += ["", "## Zero-loss check", ""]
    if z.get("ran"):
        L += [f"- uploads the clients believe complete: {z['acknowledged_complete']}; stored with the client's "
              f"sha256: {z['verified_stored']}",
              f"- unfinished uploads with acknowledged bytes: {z['unfinished_checked']}; all acknowledged bytes "
              f"still there: {z['unfinished_intact']}",
              f"- acknowledged offsets that went backwards: {z['regressed_bytes']} bytes",
              f"- **lost acknowledged bytes: {z['lost_bytes']:,}** ({'passed' if z['passed'] else 'FAILED'})"]
        for u in z.get("lost_uploads", [])[:10]:
            L.append(f"  - {u['pair']} {u['name']}: {u['bytes']:,} B, {u['why']}")
    else:
        L.append("- did not run")
    L += ["", "## What went wrong, in the words of the reports", "",
          "| what the rehearsal counts | reported as | count | detail |", "|---|---|---|---|"]
    for t in s["taxonomy"]:
        detail = ", ".join(f"{_kind(k)} {v}" for k, v in sorted(t["by_kind"].items(), key=lambda x: -x[1]))
        L.append(f"| {t['what']} | {t['reported_as']} | {_f(t['count'], '{:,}', '?')} | {detail} |")
    L += ["", "## Latency", "", "| request | count | p50 | p95 | p99 | max |", "|---|---|---|---|---|---|"]
    for name, v in s["latency"].items():
        u = v["unit"]
        fmt = "{:.2f} s" if u == "s" else "{:.0f} ms"
        label = "whole file, first attempt to last ack" if name == "file seconds" else name + " (as expected)"
        L.append(f"| {label} | {v['count']} | {_f(v['p50'], fmt)} | {_f(v['p95'], fmt)} | "
                 f"{_f(v['p99'], fmt)} | {_f(v['max'], fmt)} |")
    if s["clients"]:
        L += ["", "| clients | files | stored | abandoned | refusals seen | file p50 | file p95 |",
              "|---|---|---|---|---|---|---|"]
        for c, v in s["clients"].items():
            L.append(f"| {c} | {v['files']} | {v['stored']} | {v.get('abandoned', 0)} | {v['refusals']} | "
                     f"{_f(v['file_seconds_p50'], '{:.2f} s')} | {_f(v['file_seconds_p95'], '{:.2f} s')} |")
    t = s["throughput"]
    L += ["", "## Throughput", "",
          f"- acknowledged: {t['acked_bytes'] / MB:.1f} MB, {t['acked_MBps_mean']:.2f} MB/s on average, "
          f"{t['acked_MBps_peak_5s']:.2f} MB/s at the busiest 5 s, {t['acked_MBps_busy']:.2f} MB/s from the first "
          f"request to the last completed file ({t['busy_seconds']:.0f} s)",
          f"- stored and verified: {t['stored_files']} files, {t['stored_bytes'] / MB:.1f} MB, "
          f"{t['stored_MBps_mean']:.2f} MB/s, {t['files_per_s']:.1f} files/s over {t['load_seconds']:.0f} s", "",
          "| seconds | acked MB/s | created | completed | refused | errors | buffer peak MB |",
          "|---|---|---|---|---|---|---|"]
    for b in t["timeline"]:
        L.append(f"| {b['from_s']:g}-{b['to_s']:g} | {b['acked_MBps']:.2f} | {b['created']} | {b['completed']} | "
                 f"{b['refused']} | {b['errors']} | {_f(b['buffer_peak_MB'], '{:.1f}')} |")
    bf = s["buffer"]
    L += ["", "## Buffer fill", "",
          f"- source: {bf['source']}; budget {_f(bf['budget'], '{:,}')} B, high watermark "
          f"{_f(bf['high_watermark'], '{:,}')} B; peak {_f(bf['peak'], '{:,}')} B; above the high watermark "
          f"{_f(bf['seconds_above_high'], '{:.1f}')} s; unreadable {bf['seconds_unreadable']:.1f} s",
          f"- over the run (0 .. budget; × unreadable): `{bf['sparkline']}`"]
    if s["window"]:
        w = s["window"]
        L += ["", "## Window", "",
              f"- closed at {w['close_s']} s ({w.get('closes_local') or 'client-side close'}), grace "
              f"{_f(w.get('grace_seconds'))} s",
              f"- creations after close: {w['probes']} probes, {w['probes_refused_window_closed']} refused 403 "
              f"window-closed, {w['probes_accepted']} accepted; other creations refused window-closed: "
              f"{w['creations_refused_window_closed']} ({w['first_attempt_arrived_after_close']} of them files sent "
              "just before close whose only attempt reached the server after it: not counted as started in time)",
              f"- appends accepted after close (grace): {w['appends_after_close']}; refused as expired: "
              f"{w['expired_after_grace']}"]
    f = s["fault"]
    L += ["", "## Fault", ""]
    if f.get("expected"):
        L.append(f"- {f['kind']}: {'happened' if f['happened'] else '**did not happen**'}"
                 + (f" (skipped: {f['skipped']})" if f.get("skipped") else ""))
        for k, v in f.items():
            if k not in ("expected", "kind", "happened", "skipped", "why"):
                L.append(f"- {k.replace('_', ' ')}: {v}")
    for e in s["fault_events"]:
        detail = {k: v for k, v in e.items() if k not in ("t", "what")}
        L.append(f"- {e['t']:.2f} s: {e['what']}" + (f" {detail}" if detail else ""))
    L += ["", "## Files", "",
          "- `locust.html`: Locust's report (requests, failures by message, charts)",
          "- `summary.json`: everything above, machine-readable; `journal.json`: every file as the clients saw it",
          "- `verification.json`, `buffer.json`, `faults.json`, `run.json`, `logs/`", ""]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m loadtest.report OUT_DIR", file=sys.stderr)
        return 2
    s = build(args[0])
    print(render_text(s))
    return 0 if s["verdict"]["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
