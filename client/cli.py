"""`unggah push` and `unggah status`: the candidate team's side of unggah.

Registered as subcommands of `unggah` (commands/cli.py calls add_parsers); this
module imports nothing heavy until a command runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_PREFLIGHT = 0, 1, 2, 3


def parse_size(text: str) -> int:
    """'256k', '4m', '4MiB', '1000' -> bytes (binary units)."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(t[-1:], 1)
    if t[-1:] in "kmg":
        t = t[:-1]
    try:
        n = int(float(t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4m, 256k, 1000000)") from None
    if n <= 0:
        raise argparse.ArgumentTypeError("the size must be positive")
    return n


def add_parsers(sub) -> None:
    p = sub.add_parser("push", help="check and upload supporter lists and scans (resumable, tus 1.0)",
                       description="Preflight supporter lists, upload files and folders resumably, "
                                   "wait until the server has stored them, and save signed receipts.")
    p.add_argument("paths", nargs="+", metavar="FILE_OR_FOLDER")
    p.add_argument("--server", required=True, help="unggah server, e.g. https://unggah.example "
                                                   "(or any tus creation URL, e.g. http://host/files/)")
    p.add_argument("--token", default=None, help="bearer token of your pair (default: $UNGGAH_TOKEN)")
    p.add_argument("--parallel", type=int, default=4, help="files uploaded at the same time (default 4)")
    p.add_argument("--chunk-size", type=parse_size, default=4 << 20, help="bytes per PATCH (default 4m)")
    p.add_argument("--election", help="the election's TOML file: check every row as the server will")
    p.add_argument("--force", action="store_true", help="upload even a list whose template is invalid")
    p.add_argument("--state", help="local state file (default: $UNGGAH_CLIENT_STATE or ~/.unggah/push-state.json)")
    p.add_argument("--wait", type=float, default=120.0, help="seconds to wait for storage after the last byte")
    p.add_argument("--checksum", choices=("auto", "crc32c", "sha256", "sha1", "none"), default="auto",
                   help="per-chunk Upload-Checksum (auto: crc32c if the server offers it)")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    p.add_argument("--json", action="store_true", help="print the final report as JSON on stdout")
    p.set_defaults(func=cmd_push)

    s = sub.add_parser("status", help="your pair's progress: supporters counted, spread, what is missing")
    s.add_argument("--server", required=True)
    s.add_argument("--token", default=None, help="bearer token of your pair (default: $UNGGAH_TOKEN)")
    s.add_argument("--json", action="store_true", help="print the server's JSON as is")
    s.set_defaults(func=cmd_status)


# ---------------------------------------------------------------- push

def _token(args) -> str | None:
    return args.token or os.environ.get("UNGGAH_TOKEN") or None


def cmd_push(args: argparse.Namespace) -> int:
    import asyncio

    import msgspec

    from client.api import PushReport, push
    from client.state import StateError

    if args.parallel < 1:
        print("unggah push: --parallel must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    if args.election and not Path(args.election).is_file():
        print(f"unggah push: election file not found: {args.election}", file=sys.stderr)
        return EXIT_USAGE

    def show_preflight(p) -> None:
        print(p.summary, flush=True)
        print(flush=True)

    try:
        report: PushReport = asyncio.run(push(
            args.paths, args.server, _token(args), parallel=args.parallel, chunk_size=args.chunk_size,
            election=args.election, force=args.force, state_path=args.state, checksum=args.checksum,
            wait=args.wait, progress=not args.no_progress, on_preflight=None if args.json else show_preflight))
    except FileNotFoundError as e:
        print(f"unggah push: {e}", file=sys.stderr)
        return EXIT_USAGE
    except StateError as e:
        print(f"unggah push: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\nunggah push: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    if args.json:
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
    else:
        print(format_report(report))
    if report.stopped:
        return EXIT_PREFLIGHT
    return EXIT_OK if report.ok else EXIT_INCOMPLETE


def _mb(n: float) -> str:
    from client.progress import human_bytes
    return human_bytes(n)


def format_report(r) -> str:
    if r.stopped:
        return f"BERHENTI / STOPPED: {r.stopped}"
    c = r.counts()
    stored, uploaded = c.get("stored", 0), c.get("uploaded", 0)
    pending, failed = c.get("pending", 0), c.get("failed", 0)
    rate = r.bytes_total / r.seconds if r.seconds > 0 else 0
    out = ["", f"Ringkasan / Summary: {len(r.files)} files, {_mb(r.bytes_total)} in {r.seconds:.1f} s "
               f"({_mb(rate)}/s); sent {_mb(r.bytes_sent)} this run; {r.retries} retries for {r.requests} requests",
           f"  tersimpan / stored: {stored}   menunggu / pending: {pending}   gagal / failed: {failed}"
           + (f"   sent, storage not confirmed: {uploaded}" if uploaded else "")]
    resumed = [f for f in r.files if 0 < f.resumed_from < f.size]
    if resumed:
        out.append(f"  resumed {len(resumed)} file(s) from where the server had them "
                   f"({_mb(sum(f.resumed_from for f in resumed))} not sent again)")
    verified = sum(1 for f in r.files if f.receipt_status == "verified")
    earlier = sum(1 for f in r.files if f.receipt_status == "saved earlier")
    invalid = [f for f in r.files if f.receipt_status == "invalid"]
    missing = [f for f in r.files if f.receipt_status == "missing"]
    if verified or earlier or invalid or missing:
        out.append(f"  tanda terima / receipts: {verified} verified and saved as <file>.receipt.json"
                   + (f", {earlier} saved earlier" if earlier else "")
                   + (f", {len(invalid)} INVALID" if invalid else "")
                   + (f", {len(missing)} not issued yet" if missing else ""))
    elif r.receipts:
        out.append(f"  tanda terima / receipts: none — {r.receipts}")
    for title, files in (("GAGAL / FAILED", [f for f in r.files if f.state == "failed"]),
                         ("MENUNGGU / PENDING", [f for f in r.files if f.state == "pending"])):
        if files:
            out += ["", f"{title}:"] + [f"  {f.path}: {f.reason}" for f in files[:50]]
            if len(files) > 50:
                out.append(f"  ... and {len(files) - 50} more (use --json for all)")
    if invalid:
        out += ["", "TANDA TERIMA TIDAK SAH / RECEIPT VERIFICATION FAILED (keep the file and report this):"]
        out += [f"  {f.path}: {f.receipt_error}" for f in invalid[:50]]
    not_counted = r.lists_not_counted()
    if not_counted:
        out += ["", "DAFTAR TIDAK DIHITUNG / LISTS NOT COUNTED (stored, but their rows count for nothing):"]
        out += [f"  {line}" for f in not_counted for line in describe_list(
            {"filename": f.path, "status": f.verdict, "message": f.verdict_message, "problems": f.verdict_problems})]
    if pending or failed:
        out += ["", "Simpan berkas asli. Jalankan perintah yang sama lagi untuk melanjutkan.",
                "Keep your local copies. Run the same command again: it resumes where the server stopped."]
    elif stored == len(r.files) and r.files and not_counted:
        out += ["", f"Semua berkas tersimpan, tetapi {len(not_counted)} daftar tidak dihitung (lihat di atas). / "
                    f"Every file is stored, but {len(not_counted)} list(s) count for nothing: see above, fix and "
                    "push the corrected list."]
    elif stored == len(r.files) and r.files:
        out += ["", "Semua berkas tersimpan di server. / Every file is stored on the server."]
    return "\n".join(out)


# ---------------------------------------------------------------- status

def _labels():
    try:
        from dukungan.reasons import REASONS
    except ImportError:
        return {}
    return {k: (v.label_id, v.label_en) for k, v in REASONS.items()}


def _n(x) -> str:
    return f"{int(x):,}".replace(",", ".") if isinstance(x, (int, float)) else str(x)


def _closes_at(value) -> dt.datetime | None:
    from unggah.times import parse
    return parse(value)


def _when(value) -> str:
    """A time from the server as a person reads it: ISO 8601 as the server wrote it (in the
    election's zone), or epoch milliseconds (an older server) as ISO 8601 in UTC."""
    from unggah.times import readable
    return readable(value)


def _pct(part: int, whole: int) -> str:
    """A share that never reads as nothing when there is something, nor as done when short:
    12 of 600,000 is "<0.1%", not "0.0%"; 599,999 of 600,000 is "99.9%", not "100.0%"."""
    if not whole or part >= whole:
        return "100%" if part >= whole else "0%"
    pct = 100.0 * part / whole
    if part and pct < 0.1:
        return "<0.1%"
    return f"{min(pct, 99.9):.1f}%"


def describe_list(f: dict) -> list[str]:
    """A list that counts for nothing (rejected, not validated): its name, why, and the cells."""
    status = {"rejected": "DITOLAK / REJECTED", "skipped": "TIDAK DIPERIKSA / NOT VALIDATED",
              "error": "GAGAL DIPERIKSA / VALIDATION FAILED"}.get(f.get("status", ""), str(f.get("status", "")).upper())
    why = f.get("message") or "no reason given"
    if f.get("status") == "skipped" and why.startswith("not validated: "):
        why = why[len("not validated: "):]  # the label says it already
    lines = [f"{f.get('filename') or f.get('id')}: {status}: {why}"]
    problems = f.get("problems") or []
    lines += [f"  - {x}" for x in problems[:10]]
    if len(problems) > 10:
        lines.append(f"  ... and {len(problems) - 10} more")
    return lines


def format_progress(p: dict, now: dt.datetime | None = None) -> str:
    """Render the /progress JSON (shape in docs/client.md). Also accepts a flat
    dukungan.progress.Progress (min_support, min_spread, ms_per_unit, units_meeting)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    labels = _labels()
    spread = p.get("spread") or {}
    minimum = p.get("minimum", p.get("min_support"))
    ms = p.get("ms", 0)
    shortfall = p.get("shortfall", max(0, (minimum or 0) - ms) if minimum is not None else None)
    units = spread.get("units", p.get("ms_per_unit")) or {}
    required = spread.get("required", p.get("min_spread"))
    met = spread.get("met", p.get("units_meeting"))
    n_units = spread.get("total", p.get("units") if isinstance(p.get("units"), int) else len(units))
    unit_kind = spread.get("unit_kind") or ("kab/kota" if units and len(next(iter(units))) == 5 else "kecamatan")
    out = [f"Pasangan / pair: {p.get('tenant', '?')}" + (f"  —  {p['election']}" if p.get("election") else "")]
    if minimum is not None:
        out.append(f"Dukungan MS / eligible supporters: {_n(ms)} dari / of minimum {_n(minimum)} ({_pct(ms, minimum)})"
                   + (f"; kurang / short by {_n(shortfall)}" if shortfall else "; TERPENUHI / met"))
    else:
        out.append(f"Dukungan MS / eligible supporters: {_n(ms)}")
    if p.get("ms_pending_external"):
        out.append(f"  of which {_n(p['ms_pending_external'])} also claimed by another pair (decided at field verification)")
    if required is not None:
        ok = met is not None and met >= required
        out.append(f"Sebaran / spread: {met} dari / of {n_units} {unit_kind} memenuhi; perlu / needed {required}"
                   + ("  TERPENUHI / met" if ok else f"  kurang / short by {max(0, required - (met or 0))}"))
    if units:
        low = sorted(units.items(), key=lambda kv: (kv[1], kv[0]))
        out.append("  per " + unit_kind + ": " + ", ".join(f"{k} {_n(v)}" for k, v in low[:12])
                   + (f", ... ({len(low) - 12} more)" if len(low) > 12 else ""))
    if p.get("correction_required"):
        out.append(f"Perbaikan / correction round: bring {_n(p['correction_required'])} supporters")
    out.append(f"Baris / rows: MS {_n(ms)}, BMS {_n(p.get('bms', sum((p.get('bms_by_reason') or {}).values())))}, "
               f"TMS {_n(p.get('tms', sum((p.get('tms_by_reason') or {}).values())))}")
    for title, key in (("BMS (bisa diperbaiki / fixable)", "bms_by_reason"), ("TMS (tidak memenuhi / ineligible)", "tms_by_reason"),
                       ("Catatan / flags", "flags_by_reason")):
        rows = p.get(key) or {}
        if rows:
            out.append(f"{title}:")
            for code, count in sorted(rows.items(), key=lambda kv: -kv[1]):
                lid, len_ = labels.get(code, ("", ""))
                out.append(f"  {code:<22} {_n(count):>9}  {lid}{' / ' + len_ if len_ else ''}")
    not_counted = p.get("lists_not_counted") or []
    if not_counted:
        out.append("DAFTAR TIDAK DIHITUNG / LISTS NOT COUNTED:")
        out += [f"  {line}" for f in not_counted for line in describe_list(f)]
    uploads = p.get("uploads") or {}
    if uploads:
        out.append("Unggahan / uploads: " + ", ".join(f"{k} {_n(v)}" for k, v in uploads.items() if not isinstance(v, dict)))
    w = p.get("window") or {}
    if w.get("open") is False:  # between rounds, or after the last
        out.append("Jendela / window: TUTUP / CLOSED"
                   + (f"; the next opens {_when(w['next_opens_at'])}" if w.get("next_opens_at") else ""))
    elif w:
        closes = _closes_at(w.get("closes_at"))
        line = f"Jendela / window: {w.get('name', '?')}"
        if closes is not None:
            left = (closes - now).total_seconds()
            if left > 0:
                h, rem = divmod(int(left), 3600)
                line += f", closes {_when(w.get('closes_at'))} — {h} h {rem // 60:02d} min left"
                if shortfall and left > 0:
                    line += f"; {_n(shortfall)} supporters still missing ({shortfall / max(left / 3600, 1e-9):,.0f}/h needed)"
            else:
                line += f", CLOSED at {_when(w.get('closes_at'))}"
        if w.get("extension"):
            line += f" (extended: {w['extension']})"
        out.append(line)
    computed = p.get("computed_at", p.get("computed_at_ms"))
    if computed is not None:
        out.append(f"Dihitung / counted at: {_when(computed)}")
    return "\n".join(out)


def cmd_status(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from client.api import fetch_progress

    status, data, problem = asyncio.run(fetch_progress(args.server, _token(args)))
    if status == 404:
        print("This server does not report progress (GET /progress answered 404): it is not an unggah server, "
              "or its progress endpoint is not enabled yet. Upload status per file: `unggah push` prints it, "
              "and GET <upload URL>/status answers it.", file=sys.stderr)
        return EXIT_INCOMPLETE
    if status in (401, 403):
        print(f"The server refused the token ({problem}). Pass --token or set UNGGAH_TOKEN.", file=sys.stderr)
        return EXIT_USAGE
    if data is None:
        print(f"unggah status: {problem or f'HTTP {status}'}", file=sys.stderr)
        return EXIT_INCOMPLETE
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print(format_progress(data))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="unggah")
    add_parsers(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
