"""Signed receipts: fetched from the status endpoint once stored, verifiable offline with the
published key; a tampered receipt fails."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys

import msgspec
import orjson
import pytest

from client import receipts as crc
from tests.conftest import child_env, create, patch, wait_stored
from unggah import receipts


async def test_receipt_is_signed_and_verifiable_offline(gateway, ingester, http, tmp_path, settings):
    data = b"NIK,NAMA\n" * 1000
    url = await create(http, gateway, len(data), Upload_Metadata="filename ZGFmdGFyLmNzdg==")
    await patch(http, url, 0, data)
    st = await wait_stored(http, url)
    receipt = st["receipt"]
    async with http.get(gateway.url + "/receipts/public-key") as resp:
        pem = await resp.text()
    payload = receipts.verify(receipt, receipts.load_public(pem))
    assert payload.sha256 == hashlib.sha256(data).hexdigest() and payload.size == len(data)
    assert payload.filename == "daftar.csv" and payload.upload_id == url.rsplit("/", 1)[1]
    assert payload.created_at <= payload.completed_at <= payload.stored_at
    # Deterministic: asking again gives the same bytes.
    assert (await wait_stored(http, url))["receipt"] == receipt

    (tmp_path / "key.pem").write_text(pem)
    (tmp_path / "good.json").write_bytes(orjson.dumps(receipt))
    tampered = dict(receipt, payload=dict(receipt["payload"], size=receipt["payload"]["size"] - 1))
    (tmp_path / "bad.json").write_bytes(orjson.dumps(tampered))

    def verify(name):
        return subprocess.run([sys.executable, "-m", "commands.cli", "receipt", "verify", str(tmp_path / name),
                               "--public-key", str(tmp_path / "key.pem")], env=child_env(settings),
                              capture_output=True, text=True, timeout=60)
    good = verify("good.json")
    assert good.returncode == 0 and "valid receipt" in good.stdout
    bad = verify("bad.json")
    assert bad.returncode == 1 and "NOT VALID" in bad.stderr
    # What a team saves is the whole status answer; that verifies too, and its tampering shows.
    (tmp_path / "status.json").write_bytes(orjson.dumps(st))
    assert verify("status.json").returncode == 0
    (tmp_path / "status-bad.json").write_bytes(orjson.dumps(dict(st, receipt=tampered)))
    assert verify("status-bad.json").returncode == 1
    # Not JSON at all: a clear NOT VALID, no traceback.
    (tmp_path / "photo.json").write_bytes(b"\xff\xd8\xff not json")
    not_json = verify("photo.json")
    assert not_json.returncode == 1 and "not JSON" in not_json.stderr and "Traceback" not in not_json.stderr


async def test_receipt_from_another_key_is_rejected(gateway, ingester, http):
    url = await create(http, gateway, 3)
    await patch(http, url, 0, b"abc")
    receipt = (await wait_stored(http, url))["receipt"]
    other = receipts.Ed25519PrivateKey.generate()
    with pytest.raises(receipts.ReceiptError):
        receipts.verify(receipt, other.public_key())


async def test_no_receipt_before_storage(gateway, http):
    url = await create(http, gateway, 10)
    await patch(http, url, 0, b"abc")
    async with http.get(url + "/status") as resp:
        assert "receipt" not in await resp.json()


# ---------------------------------------------------------------- one canonical form

# Inserted at every position (every byte value replaces every byte, and every byte is deleted):
# whitespace, number and escape characters, JSON punctuation, base64 padding, bytes outside ASCII.
INSERTED = b' \t\n\r\x0c0123456789-+.eE"\\/,:{}[]u=Aa\x00\x7f\xc3\xa9\xff'


def one_byte_changes(data: bytes):
    """(first byte touched, end, changed data) for every replacement, deletion and (of the bytes
    above) insertion of one byte; an insertion touches nothing: first == end."""
    for i in range(len(data)):
        for b in range(256):
            if b != data[i]:
                yield i, i + 1, data[:i] + bytes([b]) + data[i + 1:]
        yield i, i + 1, data[:i] + data[i + 1:]
    for i in range(len(data) + 1):
        for b in INSERTED:
            yield i, i, data[:i] + bytes([b]) + data[i:]


def verifies(data: bytes, public) -> receipts.ReceiptPayload | None:
    try:
        return receipts.verify(data, public)
    except receipts.ReceiptError:
        return None


async def stored_receipt(gateway, http, metadata: str = "filename ZGFmdGFyIGtlbHVyYWhhbi5jc3Y="):
    data = b"NIK,NAMA\n" * 10
    url = await create(http, gateway, len(data), Upload_Metadata=metadata)
    await patch(http, url, 0, data)
    await wait_stored(http, url)
    async with http.get(url + "/status") as resp:
        status = await resp.read()  # what a user saves from the browser or curl
    async with http.get(gateway.url + "/receipts/public-key") as resp:
        public = receipts.load_public(await resp.text())
    return status, public


async def test_no_one_byte_change_of_a_receipt_the_client_saved_verifies(gateway, ingester, http, tmp_path):
    status, public = await stored_receipt(gateway, http)
    saved = crc.save(tmp_path / "daftar.csv", orjson.loads(status)["receipt"]).read_bytes()
    original = receipts.verify(saved, public)
    assert saved == receipts.canonical_receipt(receipts.Receipt(
        payload=original, key_id=receipts.key_id(public), signature=orjson.loads(saved)["signature"]))
    # Every byte of a saved receipt is signed content or checked exactly: none may change.
    verified = [(i, changed) for i, _, changed in one_byte_changes(saved) if verifies(changed, public)]
    assert verified == []


async def test_no_one_byte_change_inside_the_receipt_of_a_saved_status_answer_verifies(gateway, ingester, http):
    """The status answer's other members (state, bytes_received, ...) are not signed: a change
    there may verify, but only ever to the same payload; inside its receipt, none verifies."""
    status, public = await stored_receipt(gateway, http)
    original = receipts.verify(status, public)
    raw = orjson.dumps(orjson.loads(status)["receipt"])
    start = status.index(raw)
    end = start + len(raw)
    inside, outside = [], []
    for first, last, changed in one_byte_changes(status):
        touches = (start <= first < end) if last > first else (start < first < end)
        payload = verifies(changed, public)
        if payload is not None:
            (inside if touches else outside).append(payload)
    assert inside == []
    assert outside and all(p == original for p in outside)


async def test_a_receipt_with_the_meaning_kept_but_not_its_canonical_form_is_refused(gateway, ingester, http):
    status, public = await stored_receipt(gateway, http)
    receipt = orjson.loads(status)["receipt"]
    good = orjson.dumps(receipt)
    assert receipts.verify(good, public)
    sig = receipt["signature"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    # The last character before "==" carries 4 unused bits: flipping one keeps the same 64 bytes.
    flipped = sig[:-3] + alphabet[alphabet.index(sig[-3]) ^ 1] + "=="
    assert receipts.base64.b64decode(flipped) == receipts.base64.b64decode(sig)
    variants = {
        "indented": orjson.dumps(receipt, option=orjson.OPT_INDENT_2),
        "a trailing newline": good + b"\n",
        "keys in another order": orjson.dumps(dict(reversed(receipt.items()))),
        "payload keys in another order": orjson.dumps(dict(receipt, payload=dict(reversed(receipt["payload"].items())))),
        "an escaped character": good.replace(b'"daftar', b'"\\u0064aftar'),
        "another number form": good.replace(b'"size":90', b'"size":9.0e1'),
        "a repeated key": good.replace(b'"size":90', b'"size":91,"size":90'),
        "an unknown field": good.replace(b'"size":90', b'"size":90,"note":""'),
        "a missing field with a default": good.replace(b',"window":""', b''),
        "a null file name b64": good.replace(b'"sha256"', b'"filename_b64":null,"sha256"'),
        "non-canonical base64 in the signature": good.replace(sig.encode(), flipped.encode()),
    }
    for what, data in variants.items():
        assert data != good, what
        with pytest.raises(receipts.ReceiptError):
            receipts.verify(data, public)
        # And the same as a parsed object (what the client checks).
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        if what not in ("indented", "a trailing newline", "an escaped character", "a repeated key"):
            with pytest.raises(receipts.ReceiptError):
                receipts.verify(parsed, public)


def test_a_name_that_is_not_utf8_keeps_its_bytes_in_the_receipt(tmp_path):
    key = receipts.Ed25519PrivateKey.generate()
    name = b"daftar-\xff\xfe-\xe9.csv"  # Latin-1 and garbage: not UTF-8
    payload = receipts.payload_for(tenant="p-1", upload_id="1-a", filename=name, size=3, sha256="ab" * 32,
                                   created_at=1, completed_at=2, stored_at=3, window="w")
    assert payload.filename is receipts.UNSET and payload.filename_bytes == name
    receipt = msgspec.to_builtins(receipts.sign(payload, key))
    saved = crc.save(tmp_path / "x.csv", receipt)
    back = receipts.verify(saved.read_bytes(), key.public_key())
    assert back.filename_bytes == name and back == payload
    # A UTF-8 name stays text; the empty name too.
    for text in ("daftar.csv", "daftar pemilih é.csv", ""):
        p = receipts.payload_for(tenant="p-1", upload_id="1-a", filename=text.encode(), size=3, sha256="ab" * 32,
                                 created_at=1, completed_at=2, stored_at=3)
        assert p.filename == text and p.filename_b64 is receipts.UNSET
        assert receipts.verify(receipts.canonical_receipt(receipts.sign(p, key)), key.public_key()) == p
    # A UTF-8 name in the bytes form, or both forms at once, is not a receipt's form.
    with pytest.raises(ValueError):
        receipts.sign(receipts.ReceiptPayload(tenant="p", upload_id="1-a", filename_b64="YWJj", size=3,
                                              sha256="ab" * 32, created_at=1, completed_at=2, stored_at=3), key)
    with pytest.raises(ValueError):
        receipts.sign(msgspec.structs.replace(payload, filename="x"), key)


async def test_a_name_that_is_not_utf8_round_trips_its_bytes_through_the_gateway(gateway, ingester, http):
    name = b"daftar-\xff\xfe.csv"
    status, public = await stored_receipt(gateway, http, "filename " + base64.b64encode(name).decode())
    assert receipts.verify(status, public).filename_bytes == name
