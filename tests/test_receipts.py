"""Signed receipts: fetched from the status endpoint once stored, verifiable offline with the
published key; a tampered receipt fails."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import orjson

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
        return subprocess.run([sys.executable, "-m", "unggah.cli", "receipt", "verify", str(tmp_path / name),
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
    import pytest
    other = receipts.Ed25519PrivateKey.generate()
    with pytest.raises(receipts.ReceiptError):
        receipts.verify(receipt, other.public_key())


async def test_no_receipt_before_storage(gateway, http):
    url = await create(http, gateway, 10)
    await patch(http, url, 0, b"abc")
    async with http.get(url + "/status") as resp:
        assert "receipt" not in await resp.json()
