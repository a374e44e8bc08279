"""Receipts on the client side: fetch the server's public key, verify a receipt
against it and against what we sent, save it next to the file.

The server publishes its Ed25519 public key (PEM; several PEM blocks when it
keeps old keys after a rotation) at `GET /receipts/public-key` and adds a
`receipt` object (unggah.receipts.Receipt) to the status JSON once stored.
A server without receipts (404 there, or no field) is fine: we say so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import msgspec

from client.state import write_atomic
from client.transport import Http
from unggah import receipts as rc

_PEM = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.S)

VERIFIED = "verified"
INVALID = "invalid"
UNAVAILABLE = "unavailable"  # the server issues no receipts
MISSING = "missing"  # the server issues receipts but none came for this file (yet)


@dataclass
class KeyRing:
    keys: dict[str, object]  # key_id -> Ed25519PublicKey
    note: str = ""

    @property
    def available(self) -> bool:
        return bool(self.keys)


def parse_keys(pem: bytes) -> dict[str, object]:
    out = {}
    for block in _PEM.findall(pem):
        key = rc.load_public(block)
        out[rc.key_id(key)] = key
    return out


async def fetch_keys(http: Http, base: str) -> KeyRing:
    resp = await http.send("GET", base + "/receipts/public-key", tus=False, count=False)
    if resp.status == 404:
        return KeyRing({}, "the server issues no signed receipts (no /receipts/public-key)")
    if resp.status != 200:
        return KeyRing({}, f"could not fetch the receipt key: {resp.describe()}")
    try:
        keys = parse_keys(resp.body)
    except ValueError as e:
        return KeyRing({}, f"the receipt key at {base}/receipts/public-key is unreadable: {e}")
    if not keys:
        return KeyRing({}, f"no Ed25519 public key at {base}/receipts/public-key")
    return KeyRing(keys)


def check(receipt: dict, ring: KeyRing, *, upload_id: str | None, size: int, sha256: str) -> str | None:
    """None when the receipt is genuine and about exactly this file; else what is wrong."""
    kid = receipt.get("key_id") if isinstance(receipt, dict) else None
    key = ring.keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        if not ring.keys:
            return "no public key to verify it with"
        key = next(iter(ring.keys.values()))  # verify() names both key ids in its error
    try:
        payload = rc.verify(receipt, key)
    except rc.ReceiptError as e:
        return str(e)
    if payload.sha256.lower() != sha256.lower():
        return f"the receipt is for sha256 {payload.sha256}, the file has {sha256}"
    if payload.size != size:
        return f"the receipt is for {payload.size} bytes, the file has {size}"
    if upload_id and payload.upload_id != upload_id:
        return f"the receipt is for upload {payload.upload_id}, not {upload_id}"
    return None


def receipt_path(file: str | Path) -> Path:
    p = Path(file)
    return p.with_name(p.name + ".receipt.json")


def save(file: str | Path, receipt: dict) -> Path:
    """The receipt exactly as issued (a unggah.receipts.Receipt), verifiable later with
    `unggah.receipts.verify(path.read_bytes(), public_key)`: its canonical encoding and nothing
    else (no indentation, no trailing newline), the only form that verifies."""
    out = receipt_path(file)
    # Round-trip through the Struct so the file holds the receipt's fields and nothing else.
    # No fsync: the server signs deterministically and hands out the same receipt again.
    r = msgspec.convert(receipt, rc.Receipt)
    write_atomic(out, rc.canonical_receipt(r), durable=False)
    return out
