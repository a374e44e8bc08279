"""`unggah check FILE --election election.toml [--scans DIR] [--json]` and `unggah template OUT.xlsx`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import msgspec

from .election import ElectionError
from .export import write_verdicts_csv
from .preflight import check_file, format_summary
from .region import CodeListError
from .template import write_template


def add_parsers(sub) -> None:
    """`check` and `template` on a subparsers object: `unggah`'s own command line adds them
    with this, and so does `python -m dukungan.cli` (build_parser)."""
    c = sub.add_parser("check", help="judge a supporter list (CSV/XLSX) exactly as the server will")
    c.add_argument("file")
    c.add_argument("--election", required=True, help="the election's TOML file")
    c.add_argument("--scans", help="folder of scans named <NIK>_ktp.jpg / <NIK>_pernyataan.pdf")
    c.add_argument("--json", action="store_true", help="machine-readable report on stdout")
    c.add_argument("--export", help="write every row's verdict to this CSV")
    c.set_defaults(func=check)
    t = sub.add_parser("template", help="write a blank XLSX supporter-list template")
    t.add_argument("out")
    t.set_defaults(func=template)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="unggah", description="Periksa daftar dukungan / check a supporter list")
    add_parsers(ap.add_subparsers(dest="command", required=True))
    return ap


def template(args: argparse.Namespace) -> int:
    write_template(args.out)
    print(f"Templat kosong ditulis / blank template written: {args.out}")
    return 0


def check(args: argparse.Namespace) -> int:
    """Exit status: 0 file accepted (rows may still be BMS/TMS), 1 file rejected, 2 usage/config error."""
    if not Path(args.file).exists():
        print(f"Berkas tidak ditemukan / file not found: {args.file}", file=sys.stderr)
        return 2
    try:
        report = check_file(args.file, args.election, scans=args.scans)
    except (ElectionError, CodeListError, ValueError, OSError) as e:
        print(f"Konfigurasi pemilihan salah / election configuration error: {e}", file=sys.stderr)
        return 2
    if args.export and report.verdicts is not None:
        write_verdicts_csv(report.verdicts.rows(), args.export)
    if args.json:
        data = msgspec.to_builtins(report)
        data.pop("verdicts", None)
        try:
            text = msgspec.json.encode(data).decode()
        except UnicodeEncodeError:
            # A scan file name that is not UTF-8 (Python keeps its bytes as surrogates): escaped.
            text = json.dumps(data, ensure_ascii=True)
        sys.stdout.write(text + "\n")
    else:
        print(format_summary(report))
    return 1 if report.rejected else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
