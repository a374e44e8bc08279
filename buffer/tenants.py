"""Tenants (candidate pairs) and their access tokens.

A token is shown once when issued and stored only as its sha256. A revocation
takes effect on the very next request, on every gateway: a request looks its token
up (one HGETALL), except an append with a token its gateway already confirmed,
which the APPEND script checks against the revoked set of its partition in the
same step that appends (see buffer/scripts.py).

Roles:
  operator  - a pair's IT team: create, append, terminate and read its own tenant's uploads
  verifier  - the commission's verifiers and administrators: read every tenant's uploads and progress
  observer  - the election supervisor (Bawaslu): read-only progress, aggregate and per tenant
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time

import msgspec
import redis.asyncio as redis

from buffer import keys

ROLES = ("operator", "verifier", "observer")
TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
ALL = "*"


class Tenant(msgspec.Struct, kw_only=True):
    id: str
    name: str
    created_at: int


class Principal(msgspec.Struct, kw_only=True):
    """Who a token speaks for."""

    token_hash: str
    tenant: str  # "*" for commission roles
    role: str
    name: str  # the operator's or officer's name, for the audit trail
    created_at: int = 0
    revoked_at: int = 0

    @property
    def can_write(self) -> bool:
        return self.role == "operator"

    @property
    def reads_all(self) -> bool:
        return self.role == "verifier"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TenantError(ValueError):
    pass


class TenantStore:
    def __init__(self, client: redis.Redis) -> None:
        self.r = client

    async def add(self, tenant_id: str, name: str) -> Tenant:
        if not TENANT_ID.match(tenant_id):
            raise TenantError("a tenant id is 1-64 lower-case letters, digits, '.', '_' or '-', e.g. 'pangkalpinang-2024-paslon-1'")
        t = Tenant(id=tenant_id, name=name or tenant_id, created_at=int(time.time() * 1000))
        if not await self.r.hsetnx(keys.TENANTS, tenant_id, msgspec.json.encode(t)):
            raise TenantError(f"tenant {tenant_id} exists already")
        await self._audit("tenant-added", tenant_id, "admin", t.created_at)
        return t

    async def list(self) -> list[Tenant]:
        raw = await self.r.hgetall(keys.TENANTS)
        return sorted((msgspec.json.decode(v, type=Tenant) for v in raw.values()), key=lambda t: t.id)

    async def exists(self, tenant_id: str) -> bool:
        return bool(await self.r.hexists(keys.TENANTS, tenant_id))

    async def issue(self, tenant_id: str, name: str, role: str = "operator") -> tuple[str, Principal]:
        if role not in ROLES:
            raise TenantError(f"role must be one of {', '.join(ROLES)}")
        if role == "operator":
            if not await self.exists(tenant_id):
                raise TenantError(f"no tenant {tenant_id}; add it first with 'unggah tenants add'")
        else:
            tenant_id = ALL
        token = "ung_" + secrets.token_urlsafe(32)
        p = Principal(token_hash=hash_token(token), tenant=tenant_id, role=role, name=name,
                      created_at=int(time.time() * 1000))
        await self.r.hset(keys.token(p.token_hash), mapping=msgspec.structs.asdict(p))
        await self.r.sadd(keys.TOKENS, p.token_hash)
        await self._audit("token-issued", tenant_id, f"admin for {name} ({role}, token {p.token_hash[:12]})",
                          p.created_at)
        return token, p

    async def lookup(self, token: str) -> Principal | None:
        raw = await self.r.hgetall(keys.token(hash_token(token)))
        if not raw:
            return None
        p = msgspec.convert({k.decode(): v.decode() for k, v in raw.items()}, Principal, strict=False)
        return None if p.revoked_at else p

    async def principals(self) -> list[Principal]:
        out = []
        for h in await self.r.smembers(keys.TOKENS):
            raw = await self.r.hgetall(keys.token(h.decode()))
            if raw:
                out.append(msgspec.convert({k.decode(): v.decode() for k, v in raw.items()}, Principal, strict=False))
        return sorted(out, key=lambda p: (p.tenant, p.name, p.created_at))

    async def revoke(self, prefix: str) -> Principal:
        """Revoke by token-hash prefix (as `tenants list` shows it), at least 8 characters."""
        if len(prefix) < 8:
            raise TenantError("give at least 8 characters of the token id shown by 'unggah tenants list'")
        matches = [p for p in await self.principals() if p.token_hash.startswith(prefix)]
        if len(matches) != 1:
            raise TenantError(f"{len(matches)} tokens match {prefix!r}; give a longer prefix")
        p = matches[0]
        p.revoked_at = int(time.time() * 1000)
        # Every partition there can be, so it reaches gateways whatever their partition count.
        pipe = self.r.pipeline(transaction=False)
        for partition in range(keys.MAX_PARTITIONS):
            pipe.sadd(keys.revoked(partition), p.token_hash)
        await pipe.execute()
        await self.r.hset(keys.token(p.token_hash), "revoked_at", p.revoked_at)
        await self._audit("token-revoked", p.tenant, f"admin for {p.name} (token {p.token_hash[:12]})", p.revoked_at)
        return p

    async def _audit(self, event: str, tenant: str, actor: str, at: int) -> None:
        # Token events are rare: they all go to partition 0's chain.
        await self.r.xadd(keys.audit(0), {"ev": event, "t": tenant, "a": actor, "at": at})
