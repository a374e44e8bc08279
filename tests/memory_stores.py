"""Second implementations of the stores' Protocols, in memory: they prove the seams.

If the ingester, the validator or the gateway reached past `BlobStore` or `ResultsReader`
into the SQLite file or the blob directory, a test that hands them these would fail. They
are honest implementations of our own interfaces (small, but whole), not stand-ins for a
server: Valkey stays real in every test.
"""

from __future__ import annotations

import hashlib
import io
import threading
from typing import Iterator

from stores.results import ACCEPTED, FileRecord, ScanRecord, StoredRow


class MemoryBlobStore:
    """BlobStore in a dict: partial bytes while they arrive, immutable bytes once stored."""

    def __init__(self) -> None:
        self.partial: dict[str, bytearray] = {}
        self.stored: dict[str, bytes] = {}
        self.lock = threading.Lock()  # the callers run each method in a worker thread

    def write(self, writes: list[tuple[str, int, bytes]]) -> None:
        with self.lock:
            for upload_id, offset, data in writes:
                buf = self.partial.setdefault(upload_id, bytearray())
                if len(buf) < offset:
                    buf.extend(b"\0" * (offset - len(buf)))
                buf[offset:offset + len(data)] = data

    def finalize(self, upload_id: str, length: int) -> str:
        with self.lock:
            if upload_id not in self.stored:
                data = bytes(self.partial.pop(upload_id, b""))
                if len(data) != length:
                    raise ValueError(f"upload {upload_id} has {len(data)} bytes, expected {length}")
                self.stored[upload_id] = data
            return hashlib.sha256(self.stored[upload_id]).hexdigest()

    def concat(self, final_id: str, part_ids: list[str]) -> None:
        with self.lock:
            if final_id not in self.stored:
                self.partial[final_id] = bytearray(b"".join(self.stored[p] for p in part_ids))

    def discard(self, upload_id: str) -> None:
        with self.lock:
            self.partial.pop(upload_id, None)

    def open_stored(self, upload_id: str) -> io.BytesIO:
        with self.lock:
            if upload_id not in self.stored:
                raise FileNotFoundError(f"upload {upload_id} is not stored")
            return io.BytesIO(self.stored[upload_id])


class MemoryResults:
    """ResultsReader over what a test puts in: files, rows, scans, progress snapshots."""

    def __init__(self) -> None:
        self.files: dict[str, FileRecord] = {}
        self.rows: list[StoredRow] = []
        self.scans: dict[str, ScanRecord] = {}
        self.snapshots: dict[str, dict] = {}
        self.metas: dict[str, str] = {}

    def add(self, f: FileRecord, rows: list[StoredRow] = (), scan: ScanRecord | None = None) -> None:
        self.files[f.upload_id] = f
        self.rows += rows
        if scan is not None:
            self.scans[f.upload_id] = scan

    def available(self) -> bool:
        return True

    def file(self, upload_id: str) -> FileRecord | None:
        return self.files.get(upload_id)

    def scan(self, upload_id: str) -> ScanRecord | None:
        return self.scans.get(upload_id)

    def file_counts(self, upload_id: str) -> dict:
        mine = [r for r in self.rows if r.upload_id == upload_id]
        reasons: dict[str, int] = {}
        for r in mine:
            for code in r.reasons:
                reasons[code] = reasons.get(code, 0) + 1
        return {"counts": {k: sum(r.status == k for r in mine) for k in ("MS", "BMS", "TMS")},
                "reasons": reasons, "superseded": sum(r.superseded_by is not None for r in mine)}

    def progress(self, tenant: str) -> dict | None:
        return self.snapshots.get(tenant)

    def all_progress(self) -> dict[str, dict]:
        return dict(sorted(self.snapshots.items()))

    def upload_counts(self, tenant: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.files.values():
            if f.tenant == tenant:
                key = "lists" if f.kind == "list" else "scans" if f.kind in ("ktp", "statement", "scan") else "other"
                key += "" if f.status == ACCEPTED else "_" + f.status
                out[key] = out.get(key, 0) + 1
        return out

    def lists_not_counted(self, tenant: str, limit: int = 50) -> list[FileRecord]:
        out = [f for f in self.files.values() if f.tenant == tenant and f.kind == "list" and f.status != ACCEPTED]
        return out[::-1][:limit]

    def verdict_batches(self, tenant: str, upload_id: str | None = None,
                        batch: int = 5000) -> Iterator[list[tuple[StoredRow, str]]]:
        rows = [(r, self.files[r.upload_id].filename) for r in self.rows
                if (r.upload_id == upload_id if upload_id else self.files[r.upload_id].tenant == tenant)]
        for i in range(0, len(rows), batch):
            yield rows[i:i + batch]

    def meta(self, key: str) -> str | None:
        return self.metas.get(key)
