"""Signed receipts: proof of what a team submitted and when, verifiable offline.

A receipt is a payload (tenant, upload, file name, size, sha256, server times,
window) and an Ed25519 signature over its canonical JSON (sorted keys, no
spaces). Ed25519 signatures are deterministic, so the gateway can sign a
stored upload's receipt whenever it is asked and always hand out the same
bytes; nothing extra is stored.

Key handling: the private key is a PEM file (created on first use, mode 0600);
the public key is published at /receipts/public-key and printed by
`unggah receipt public-key`. To rotate, create a new key file and keep the old
public key published alongside: receipts name their key by `key_id`.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import msgspec
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class ReceiptPayload(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    tenant: str
    upload_id: str
    filename: str
    size: int
    sha256: str
    created_at: int  # ms since the epoch, server clock
    completed_at: int  # all bytes received
    stored_at: int  # all bytes durably stored
    window: str = ""  # the registration window the upload belongs to


class Receipt(msgspec.Struct, kw_only=True):
    payload: ReceiptPayload
    alg: str = "Ed25519"
    key_id: str
    signature: str  # base64


def canonical(payload: ReceiptPayload) -> bytes:
    return orjson.dumps(msgspec.to_builtins(payload), option=orjson.OPT_SORT_KEYS)


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_or_create_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    p = Path(path)
    if p.exists():
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{p} does not hold an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    p.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    # Written whole under a temporary name, then linked into place: several gateways starting at
    # once on an empty state dir all end up with the one key that won, never a half-written file.
    tmp = p.with_name(f".{p.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, p)
    except FileExistsError:
        return load_or_create_key(p)
    finally:
        tmp.unlink()
    return key


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load_public(pem: str | bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def sign(payload: ReceiptPayload, key: Ed25519PrivateKey) -> Receipt:
    sig = key.sign(canonical(payload))
    return Receipt(payload=payload, key_id=key_id(key.public_key()), signature=base64.b64encode(sig).decode())


def verify(receipt: Receipt | dict | bytes, public: Ed25519PublicKey) -> ReceiptPayload:
    """The verified payload; raises ReceiptError if anything was altered or the key differs.

    Also takes the whole `/files/<id>/status` answer, which is what a team saves: its
    `receipt` member is the receipt."""
    try:
        if isinstance(receipt, bytes):
            receipt = msgspec.json.decode(receipt)
        if isinstance(receipt, dict):
            if "payload" not in receipt and isinstance(receipt.get("receipt"), dict):
                receipt = receipt["receipt"]
            receipt = msgspec.convert(receipt, Receipt)
        elif not isinstance(receipt, Receipt):
            raise ReceiptError("not a receipt: expected a JSON object with payload, key_id and signature")
    except msgspec.DecodeError as e:
        raise ReceiptError(f"not a receipt: the file is not JSON ({e})") from None
    except msgspec.ValidationError as e:
        raise ReceiptError(f"not a receipt: {e}") from None
    if receipt.alg != "Ed25519":
        raise ReceiptError(f"unknown signature algorithm {receipt.alg!r}")
    if receipt.key_id != key_id(public):
        raise ReceiptError(f"receipt was signed by key {receipt.key_id}, not by the key given ({key_id(public)})")
    try:
        public.verify(base64.b64decode(receipt.signature, validate=True), canonical(receipt.payload))
    except (InvalidSignature, ValueError):
        raise ReceiptError("signature does not match: the receipt was altered or not issued by this server") from None
    return receipt.payload


class ReceiptError(ValueError):
    pass
