"""The `unggah` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import msgspec

from client import cli as client_cli
from dukungan import cli as dukungan_cli
from unggah import config, logs


def _settings(args: argparse.Namespace) -> config.Settings:
    overrides = {}
    if getattr(args, "port", None) is not None:
        overrides["port"] = args.port
    if getattr(args, "election_file", None):
        overrides["election_file"] = str(Path(args.election_file).resolve())
    if getattr(args, "workers", None) is not None:  # `unggah serve --workers`
        overrides["workers"] = args.workers
    if getattr(args, "process_port", None) is not None:  # `unggah serve --process-port`
        overrides["process_port"] = args.process_port
    if getattr(args, "stack_metrics_port", None) is not None:  # `unggah up --metrics-port`
        overrides["stack_metrics_port"] = args.stack_metrics_port
    s = config.load(getattr(args, "config", None), **overrides)
    if s.embedded and args.command != "up":
        # Beside a running `unggah up` (same state_dir), use its embedded Valkey.
        from commands.stack import running_cluster_file, running_url_file
        url_file = running_url_file(s)
        if url_file.exists():
            s = msgspec.structs.replace(s, redis_url=url_file.read_text().strip(),
                                        redis_cluster=running_cluster_file(s).exists())
    return s


def _process_settings(args: argparse.Namespace, what: str) -> config.Settings | None:
    """Settings for a process that runs against a configured Redis (serve, ingest, validate)."""
    s = _settings(args)
    logs.setup(s.log_level)
    if s.embedded:
        print(f"unggah {what} needs UNGGAH_REDIS_URL; use 'unggah up' for the whole stack "
              "on the embedded Valkey", file=sys.stderr)
        return None
    return s


def cmd_up(args: argparse.Namespace) -> int:
    from commands.stack import up

    s = _settings(args)
    logs.setup(s.log_level)
    if s.election_file:
        # A wrong election file found now, not by the validator after the first list arrives.
        from dukungan.election import ElectionError, load_election
        try:
            load_election(s.election_file)
        except (ElectionError, OSError) as e:
            print(f"unggah up: the election file cannot be used: {e}", file=sys.stderr)
            return 2
    return up(s, port=args.port, ingesters=args.ingesters, cluster=args.cluster, gateways=args.gateways)


def cmd_election_example(args: argparse.Namespace) -> int:
    """`unggah election example [--codes FILE]`: a commented election on stdout."""
    import datetime as dt

    from dukungan.example import example_election
    from dukungan.region import synthetic_code_list_text

    codes = args.codes or "wilayah-kepmendagri.csv"
    if args.codes:
        Path(args.codes).write_text(synthetic_code_list_text(), encoding="utf-8")
    print(example_election(codes, dt.date.today(), synthetic=bool(args.codes)), end="")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvloop

    from gateway.app import make_app
    from gateway.lifecycle import serve

    s = _process_settings(args, "serve")
    if s is None:
        return 2
    if s.workers > 1:
        from commands.workers import serve_workers
        return serve_workers(s)  # N processes of the line below on one port
    return uvloop.run(serve(make_app, s))  # SIGTERM: unready, refuse new uploads, drain, exit 0


def cmd_ingest(args: argparse.Namespace) -> int:
    import uvloop

    from ingest.worker import run

    s = _process_settings(args, "ingest")
    if s is None:
        return 2
    return uvloop.run(run(s, args.name, metrics_port=args.metrics_port))


def cmd_validate(args: argparse.Namespace) -> int:
    import uvloop

    from validator.worker import run

    s = _process_settings(args, "validate")
    if s is None:
        return 2
    return uvloop.run(run(s, args.name))


def cmd_dead(args: argparse.Namespace) -> int:
    import uvloop

    from ingest.deadletters import main

    s = _settings(args)
    return uvloop.run(main(s, args))


def cmd_tenants(args: argparse.Namespace) -> int:
    import uvloop

    from commands.admin import tenants

    return uvloop.run(tenants(_settings(args), args))


def cmd_audit(args: argparse.Namespace) -> int:
    import uvloop

    from commands.admin import audit

    s = _settings(args)
    logs.setup(s.log_level)
    return uvloop.run(audit(s, args))


def cmd_receipt(args: argparse.Namespace) -> int:
    from commands.admin import receipt

    return receipt(_settings(args), args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unggah", description="Load-tolerant resumable upload gateway (tus 1.0)")
    p.add_argument("--config", help="TOML settings file (default: $UNGGAH_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the whole local stack (embedded Valkey, gateway, ingesters)")
    up.add_argument("--port", type=int, help="gateway port (default 8080)")
    up.add_argument("--ingesters", type=int, help="ingester processes (default: ingest_processes)")
    up.add_argument("--gateways", type=int, help="gateway processes on the one port (SO_REUSEPORT; default: workers)")
    up.add_argument("--metrics-port", dest="stack_metrics_port", type=int, metavar="PORT",
                    help="port of the supervisor's own /metrics (child restarts; default: stack_metrics_port, "
                         "0: a free one)")
    up.add_argument("--cluster", action="store_true",
                    help="a local Valkey Cluster (3 primaries with a replica each, AOF on, in "
                         "<state_dir>/valkey-cluster) in place of the single embedded Valkey; every "
                         "process talks to it with the cluster client")
    up.add_argument("--election", dest="election_file", metavar="TOML",
                    help="the election's file: its windows are enforced and lists judged by it "
                         "(default: $UNGGAH_ELECTION_FILE; none: lists are stored, not validated)")
    up.set_defaults(func=cmd_up)

    el = sub.add_parser("election", help="election files: `unggah election example > election.toml`")
    el_sub = el.add_subparsers(dest="election_command", required=True)
    ex = el_sub.add_parser("example", help="print a commented example election (its window open from today)")
    ex.add_argument("--codes", metavar="CSV", help="also write an invented code list to this file and use it, "
                                                   "to try the stack out (never for a real election)")
    ex.set_defaults(func=cmd_election_example)

    serve = sub.add_parser("serve", help="run only the gateway against UNGGAH_REDIS_URL")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, help="gateway processes on the one port (SO_REUSEPORT), each "
                                                   "started again if it exits (default: workers, 1)")
    serve.add_argument("--process-port", dest="process_port", type=int, metavar="PORT",
                       help="each process also listens alone on PORT + i, for its /metrics and /readyz "
                            "(default: process_port; 0: a free one each with --workers > 1)")
    serve.set_defaults(func=cmd_serve)

    ing = sub.add_parser("ingest", help="run one ingester process against UNGGAH_REDIS_URL")
    ing.add_argument("--name", default="ingest-0", help="stable consumer name (its pending entries survive restarts)")
    ing.add_argument("--metrics-port", type=int, help="serve /metrics on this port (0: any free one; default: none)")
    ing.set_defaults(func=cmd_ingest)

    val = sub.add_parser("validate", help="validate stored uploads into the results store (run exactly one)")
    val.add_argument("--name", default="validate-0", help="stable consumer name (its pending entries survive restarts)")
    val.set_defaults(func=cmd_validate)

    dukungan_cli.add_parsers(sub)  # check, template: the preflight, the same code as the validator's

    dead = sub.add_parser("dead", help="list or replay dead-lettered entries")
    dead.add_argument("action", choices=["list", "replay"])
    dead.add_argument("ids", nargs="*", help="dead-letter entry ids to replay (default: all)")
    dead.add_argument("--upload", help="only entries of this upload")
    dead.set_defaults(func=cmd_dead)

    from commands.admin import add_parsers
    add_parsers(sub)
    sub.choices["tenants"].set_defaults(func=cmd_tenants)
    sub.choices["receipt"].set_defaults(func=cmd_receipt)
    sub.choices["audit"].set_defaults(func=cmd_audit)

    client_cli.add_parsers(sub)  # push, status: the team's side
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except config.ConfigError as e:
        print(f"unggah: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
