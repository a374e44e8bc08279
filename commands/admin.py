"""Administrator commands: `unggah tenants ...`, `unggah receipt ...`."""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import msgspec

from buffer.connection import connect
from buffer.tenants import ROLES, Principal, Tenant, TenantError, TenantStore
from unggah import receipts
from unggah.config import Settings
from unggah.times import iso


async def tenants(settings: Settings, args: argparse.Namespace) -> int:
    if settings.embedded:
        print("set UNGGAH_REDIS_URL to the running stack's Redis (printed by 'unggah up')", file=sys.stderr)
        return 2
    client = connect(settings.redis_url, cluster=settings.redis_cluster)
    store = TenantStore(client)
    try:
        if args.action == "add":
            t = await store.add(args.tenant, args.name or "")
            print(f"added tenant {t.id} ({t.name})")
        elif args.action == "issue":
            token, p = await store.issue(args.tenant or "*", args.name, args.role)
            scope = p.tenant if p.tenant != "*" else "all tenants"
            print(f"token for {p.name} ({p.role}, {scope}); it is shown only now, keep it secret:\n{token}")
        elif args.action == "list":
            print(format_tenants(await store.list(), await store.principals()))
        elif args.action == "revoke":
            p = await store.revoke(args.token_id)
            print(f"revoked token {p.token_hash[:12]} of {p.name} ({p.tenant}); it stops working at once")
        return 0
    except TenantError as e:
        print(f"unggah tenants: {e}", file=sys.stderr)
        return 1
    finally:
        await client.aclose()


def format_tenants(tenants: list[Tenant], principals: list[Principal]) -> str:
    """`unggah tenants list`: each tenant with its own tokens under it, then the tokens that
    act for all tenants. (Printed tenants first and every token after, they all seemed to
    belong to the last tenant.)"""
    def line(p: Principal) -> str:
        state = "revoked" if p.revoked_at else "active"
        issued = datetime.datetime.fromtimestamp(p.created_at / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return f"  token {p.token_hash[:12]}  {p.role:9} {state:8} issued {issued}  {p.name}"

    by_tenant: dict[str, list[Principal]] = {}
    for p in principals:
        by_tenant.setdefault(p.tenant, []).append(p)
    out = []
    for t in tenants:
        out.append(f"tenant {t.id}  {t.name}")
        out += [line(p) for p in by_tenant.pop(t.id, [])] or ["  (no tokens)"]
    if by_tenant.get("*"):
        out.append("all tenants (admin and verifier tokens)")
        out += [line(p) for p in by_tenant.pop("*")]
    for tenant_id, ps in sorted(by_tenant.items()):  # tokens of a tenant no longer listed
        out.append(f"tenant {tenant_id}  (not in the tenant list)")
        out += [line(p) for p in ps]
    return "\n".join(out) if out else "no tenants yet: add one with 'unggah tenants add <id>'"


def receipt(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "public-key":
        print(receipts.public_pem(receipts.load_or_create_key(settings.receipt_key_path)), end="")
        return 0
    try:
        pem = Path(args.public_key).read_bytes()
        data = Path(args.file).read_bytes()
        payload = receipts.verify(data, receipts.load_public(pem))
    except (OSError, ValueError) as e:
        print(f"NOT VALID: {e}", file=sys.stderr)
        return 1
    print("valid receipt:")
    for k, v in msgspec.structs.asdict(payload).items():
        if v is msgspec.UNSET:
            continue
        if k == "filename_b64":  # a name that is not UTF-8: its bytes, then as they read
            v = f"{v}  ({payload.filename_bytes!r})"
        elif k in RECEIPT_TIMES and isinstance(v, int):
            # Signed as epoch milliseconds (server clock); shown in UTC, with the signed number.
            v = f"{iso(v)}  ({v} ms)" if v else "-"
        print(f"  {k}: {v}")
    return 0


# The receipt's times (unggah.receipts.ReceiptPayload), signed as integer milliseconds.
RECEIPT_TIMES = ("created_at", "completed_at", "stored_at")


def show_event(event: dict) -> str:
    """One audit event for `unggah audit show`: its fields sorted, `at` (epoch ms in the chain)
    as ISO 8601 in UTC, to the millisecond like the record itself."""
    def value(k: str, v) -> object:
        if k == "at" and isinstance(v, str) and v.isdigit():
            return iso(int(v))
        return v
    return " ".join(f"{k}={value(k, v)}" for k, v in sorted(event.items()))


async def audit(settings: Settings, args: argparse.Namespace) -> int:
    from ingest.audit import audit_dir
    from ingest.audit import run as run_auditor
    from unggah import auditlog

    if args.action == "run":
        if settings.embedded:
            print("set UNGGAH_REDIS_URL to the running stack's Redis", file=sys.stderr)
            return 2
        return await run_auditor(settings)
    directory = Path(args.dir) if args.dir else audit_dir(settings)
    chains, strays = auditlog.chain_files(directory)
    if not chains and not strays and not (args.action == "verify" and args.heads):  # with heads: all missing
        print(f"no audit chains in {directory}", file=sys.stderr)
        return 2
    if args.action == "heads":
        taken = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        kept = auditlog.take_heads(directory, list(range(settings.partitions)), taken)
        print(msgspec.json.format(msgspec.json.encode(kept)).decode())
        return 0
    if args.action == "verify":
        kept = None
        if args.heads:
            try:
                kept = auditlog.load_heads(Path(args.heads).read_bytes())
            except (OSError, auditlog.HeadsError) as e:
                print(f"cannot read heads from {args.heads}: {e}", file=sys.stderr)
                return 2
        reports = auditlog.verify_trail(directory, kept)
        for rep in reports:
            print(f"{rep.name}: {rep.text}")
        return 0 if all(rep.ok for rep in reports) else 1
    for f in strays:
        print(f"{f.name}: skipped, not named as a chain file (audit-p<partition>.jsonl)", file=sys.stderr)
    for f in chains.values():  # show
        for rec in auditlog.read(f):
            e = rec.event
            if args.upload and e.get("u") != args.upload:
                continue
            if args.tenant and e.get("t") != args.tenant:
                continue
            print(f"{f.name}:{rec.seq} " + show_event(e))
    return 0


def add_parsers(sub) -> None:
    t = sub.add_parser("tenants", help="candidate pairs and their access tokens")
    tsub = t.add_subparsers(dest="action", required=True)
    a = tsub.add_parser("add", help="add a tenant (a candidate pair of an election)")
    a.add_argument("tenant", help="id, e.g. pangkalpinang-2024-paslon-1")
    a.add_argument("--name", help="display name")
    i = tsub.add_parser("issue", help="issue a token (printed once)")
    i.add_argument("tenant", nargs="?", help="the tenant, for operators")
    i.add_argument("--name", required=True, help="who gets the token, e.g. 'operator 3 (Budi)'")
    i.add_argument("--role", choices=ROLES, default="operator")
    tsub.add_parser("list", help="tenants and tokens (ids only, never the tokens)")
    r = tsub.add_parser("revoke", help="revoke a token at once")
    r.add_argument("token_id", help="the token id shown by 'list' (at least 8 characters)")

    rc = sub.add_parser("receipt", help="signed receipts")
    rsub = rc.add_subparsers(dest="action", required=True)
    rsub.add_parser("public-key", help="print the public key that verifies this server's receipts")
    v = rsub.add_parser("verify", help="verify a receipt offline")
    v.add_argument("file", help="the receipt JSON")
    v.add_argument("--public-key", required=True, help="the server's public key (PEM)")

    au = sub.add_parser("audit", help="the hash-chained audit trail")
    asub = au.add_subparsers(dest="action", required=True)
    asub.add_parser("run", help="the auditor process (exactly one; `unggah up` starts it)")
    for name, text in (("verify", "detect any altered, removed or reordered record"),
                       ("heads", "print each chain's head, to keep outside the system (JSON)"),
                       ("show", "print the trail, optionally for one tenant or upload")):
        x = asub.add_parser(name, help=text)
        x.add_argument("--dir", help="folder of audit-p*.jsonl (default: <state_dir>/audit)")
        if name == "verify":
            x.add_argument("--heads", help="heads kept earlier (`unggah audit heads`): also detect records "
                                           "removed from a chain's end, or a chain rewritten or deleted whole")
        if name == "show":
            x.add_argument("--tenant")
            x.add_argument("--upload")
