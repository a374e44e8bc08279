"""Administrator commands: `unggah tenants ...`, `unggah receipt ...`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import msgspec

from buffer.connection import connect
from buffer.tenants import ROLES, TenantError, TenantStore
from unggah import receipts
from unggah.config import Settings


async def tenants(settings: Settings, args: argparse.Namespace) -> int:
    if settings.embedded:
        print("set UNGGAH_REDIS_URL to the running stack's Redis (printed by 'unggah up')", file=sys.stderr)
        return 2
    client = connect(settings.redis_url)
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
            for t in await store.list():
                print(f"tenant {t.id}  {t.name}")
            for p in await store.principals():
                state = "revoked" if p.revoked_at else "active"
                print(f"  token {p.token_hash[:12]}  {p.tenant:24} {p.role:9} {state:8} {p.name}")
        elif args.action == "revoke":
            p = await store.revoke(args.token_id)
            print(f"revoked token {p.token_hash[:12]} of {p.name} ({p.tenant}); it stops working at once")
        return 0
    except TenantError as e:
        print(f"unggah tenants: {e}", file=sys.stderr)
        return 1
    finally:
        await client.aclose()


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
        print(f"  {k}: {v}")
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
