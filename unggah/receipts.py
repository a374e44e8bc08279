"""Signed receipts: proof of what a team submitted and when, verifiable offline.

A receipt is a payload (tenant, upload, file name, size, sha256, server times,
window) and an Ed25519 signature over the payload's canonical JSON. Ed25519
signatures are deterministic, so the gateway can sign a stored upload's receipt
whenever it is asked and always hand out the same bytes; nothing extra is stored.

The canonical form (the only one that verifies): the JSON orjson writes for it,
that is UTF-8, no whitespace at all, object keys in sorted order (the Structs'
fields are declared in that order, so `msgspec.to_builtins` + `orjson.dumps`
give it too), strings with only `"`, `\\` and control characters escaped (as
orjson escapes them), integers in plain decimal, no field repeated, no field
unknown, none missing (but see the file name). A receipt document is
`{"alg":"Ed25519","key_id":...,"payload":{canonical payload},"signature":...}`
in that form, with `signature` the standard padded base64 of the 64 signature
bytes and `key_id` as `key_id()` gives it. `verify` re-encodes what it parsed
and refuses the receipt unless the bytes it was given are exactly that: a saved
receipt file is the canonical receipt and nothing before or after it (no
trailing newline); in a saved `/status` answer (whose other members are not
signed) the `receipt` member's value is. One-byte changes that keep the meaning
(whitespace, escapes, key order, number forms, base64 padding bits) fail.

The file name: `filename` holds it as text when its bytes are valid UTF-8
(also the empty name); otherwise `filename` is absent and `filename_b64` holds
the bytes, standard padded base64. Exactly one of the two is present, and a
`filename_b64` of valid UTF-8 is refused (it has the `filename` form). Build
payloads with `payload_for`, which picks the form from the bytes; receipts of
UTF-8 names sign the same bytes as receipts issued before `filename_b64` existed.

Key handling: the private key is a PEM file (created on first use, mode 0600);
the public key is published at /receipts/public-key and printed by
`unggah receipt public-key`. To rotate, create a new key file and keep the old
public key published alongside: receipts name their key by `key_id`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path

import msgspec
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from msgspec import UNSET, UnsetType


class ReceiptPayload(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Fields in sorted order: that is the canonical key order (checked below).
    completed_at: int  # all bytes received
    created_at: int  # ms since the epoch, server clock
    filename: str | UnsetType = UNSET  # the name, when its bytes are valid UTF-8
    filename_b64: str | UnsetType = UNSET  # else its bytes, base64
    sha256: str
    size: int
    stored_at: int  # all bytes durably stored
    tenant: str
    upload_id: str
    window: str = ""  # the registration window the upload belongs to

    @property
    def filename_bytes(self) -> bytes:
        """The file name's bytes as the uploader sent them."""
        if isinstance(self.filename_b64, str):
            return base64.b64decode(self.filename_b64)
        return self.filename.encode() if isinstance(self.filename, str) else b""


class Receipt(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    alg: str = "Ed25519"
    key_id: str
    payload: ReceiptPayload
    signature: str  # base64


for _s in (ReceiptPayload, Receipt):
    assert list(_s.__struct_fields__) == sorted(_s.__struct_fields__), "fields must be in canonical (sorted) order"


def payload_for(*, filename: bytes | str, **fields) -> ReceiptPayload:
    """A payload for a file name as the uploader sent it (bytes): kept as `filename` text if it
    is valid UTF-8, else as `filename_b64`. The other fields are ReceiptPayload's."""
    if isinstance(filename, str):
        filename = filename.encode()
    try:
        return ReceiptPayload(filename=filename.decode("utf-8"), **fields)
    except UnicodeDecodeError:
        return ReceiptPayload(filename_b64=base64.b64encode(filename).decode(), **fields)


def canonical(payload: ReceiptPayload) -> bytes:
    """The bytes that are signed."""
    return orjson.dumps(msgspec.to_builtins(payload), option=orjson.OPT_SORT_KEYS)


def canonical_receipt(receipt: Receipt) -> bytes:
    """The one encoding of a whole receipt that verifies (as saved, or inside a status answer)."""
    return orjson.dumps(msgspec.to_builtins(receipt), option=orjson.OPT_SORT_KEYS)


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
    problem = _payload_problem(payload)
    if problem:
        raise ValueError(f"cannot sign this payload: {problem}")
    sig = key.sign(canonical(payload))
    return Receipt(payload=payload, key_id=key_id(key.public_key()), signature=base64.b64encode(sig).decode())


class _Status(msgspec.Struct):
    """A saved `/status` answer: only its receipt member is signed."""
    receipt: msgspec.Raw


NOT_CANONICAL = ("the receipt is not byte for byte in its one canonical form (compact JSON, keys sorted, "
                 "nothing before or after it): it was altered, or re-formatted by a tool; save it again as "
                 "the server's /status or `unggah push` gives it")


def verify(receipt: Receipt | dict | bytes, public: Ed25519PublicKey) -> ReceiptPayload:
    """The verified payload; raises ReceiptError if anything was altered, the key differs or the
    receipt is not exactly in its canonical form (see the module docstring).

    Also takes the whole `/files/<id>/status` answer, which is what a team saves: its
    `receipt` member is the receipt (the answer's other members are not signed)."""
    try:
        if isinstance(receipt, bytes):
            given = _receipt_bytes(receipt)
            receipt = msgspec.json.decode(given, type=Receipt)
        elif isinstance(receipt, dict):
            if "payload" not in receipt and isinstance(receipt.get("receipt"), dict):
                receipt = receipt["receipt"]
            try:
                given = orjson.dumps(receipt)
            except TypeError as e:
                raise ReceiptError(f"not a receipt: {e}") from None
            receipt = msgspec.convert(receipt, Receipt, strict=True)
        elif isinstance(receipt, Receipt):
            given = None
        else:
            raise ReceiptError("not a receipt: expected a JSON object with payload, key_id and signature")
    except msgspec.DecodeError as e:
        raise ReceiptError(f"not a receipt: the file is not JSON ({e})") from None
    except msgspec.ValidationError as e:
        raise ReceiptError(f"not a receipt: {e}") from None
    if receipt.alg != "Ed25519":
        raise ReceiptError(f"unknown signature algorithm {receipt.alg!r}")
    if receipt.key_id != key_id(public):
        raise ReceiptError(f"receipt was signed by key {receipt.key_id}, not by the key given ({key_id(public)})")
    problem = _payload_problem(receipt.payload)
    if problem:
        raise ReceiptError(f"not a receipt: {problem}")
    try:
        sig = base64.b64decode(receipt.signature, validate=True)
    except (binascii.Error, ValueError):
        sig = b""
    if len(sig) != 64 or base64.b64encode(sig).decode() != receipt.signature:
        raise ReceiptError("not a receipt: its signature is not the base64 of 64 bytes in canonical form")
    if given is not None and given != canonical_receipt(receipt):
        raise ReceiptError(NOT_CANONICAL)
    try:
        public.verify(sig, canonical(receipt.payload))
    except InvalidSignature:
        raise ReceiptError("signature does not match: the receipt was altered or not issued by this server") from None
    return receipt.payload


def _receipt_bytes(data: bytes) -> bytes:
    """The bytes that must be the canonical receipt: the whole file for a saved receipt, the
    `receipt` member's value for a saved status answer. No key may repeat anywhere in it."""
    try:
        json.loads(data, object_pairs_hook=_no_repeats)
    except _Repeated as e:
        raise ReceiptError(f"not a receipt: the JSON repeats the key {e.args[0]!r}") from None
    except (ValueError, RecursionError) as e:
        raise ReceiptError(f"not a receipt: the file is not JSON ({e})") from None
    top = msgspec.json.decode(data)
    if isinstance(top, dict) and "payload" not in top and isinstance(top.get("receipt"), dict):
        return bytes(msgspec.json.decode(data, type=_Status).receipt)
    if not isinstance(top, dict):
        raise ReceiptError("not a receipt: expected a JSON object with payload, key_id and signature")
    return data


class _Repeated(Exception):
    pass


def _no_repeats(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _Repeated(k)
        out[k] = v
    return out


def _payload_problem(p: ReceiptPayload) -> str | None:
    has_name, has_b64 = isinstance(p.filename, str), isinstance(p.filename_b64, str)
    if has_name == has_b64:
        return "the payload must hold exactly one of filename and filename_b64"
    if has_b64:
        try:
            raw = base64.b64decode(p.filename_b64, validate=True)
        except (binascii.Error, ValueError):
            return "filename_b64 is not base64"
        if base64.b64encode(raw).decode() != p.filename_b64:
            return "filename_b64 is not in canonical base64"
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return "filename_b64 holds a UTF-8 name, which a receipt carries as filename"
    return None


class ReceiptError(ValueError):
    pass
