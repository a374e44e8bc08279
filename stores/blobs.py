"""Where stored files live. The ingester writes, and the validator reads, through the
BlobStore interface alone, so an S3-compatible store can be added without touching either.

Every method is synchronous and may block (disk, fsync); the callers run them in a worker
thread. `blob_store(settings)` is the one place that picks the implementation.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from pathlib import Path
from typing import BinaryIO, Protocol

from unggah.config import Settings


class BlobStore(Protocol):
    def write(self, writes: list[tuple[str, int, bytes]]) -> None:
        """Write each (upload_id, offset, data) at its offset; durable when this returns.
        Positional, so writing the same entry twice changes nothing."""

    def finalize(self, upload_id: str, length: int) -> str:
        """Move the complete upload to its immutable place; its sha256 (hex). Idempotent."""

    def concat(self, final_id: str, part_ids: list[str]) -> None:
        """Build a final upload's bytes from its stored partials, in order. Idempotent."""

    def discard(self, upload_id: str) -> None:
        """Drop the bytes of a terminated, incomplete upload."""

    def open_stored(self, upload_id: str) -> BinaryIO:
        """The complete upload's bytes, to read (a context manager). FileNotFoundError if it is
        not stored."""


def blob_store(settings: Settings) -> BlobStore:
    """The blob store the settings name (today: the directory `blob_path`)."""
    return LocalBlobStore(settings.blob_path)


class LocalBlobStore:
    """A directory: `partial/<id>` while bytes arrive, `stored/<id>` read-only once complete."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.partial_dir = self.root / "partial"
        self.stored_dir = self.root / "stored"
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        self.stored_dir.mkdir(parents=True, exist_ok=True)

    def partial_path(self, upload_id: str) -> Path:
        return self.partial_dir / upload_id

    def stored_path(self, upload_id: str) -> Path:
        return self.stored_dir / upload_id

    def write(self, writes: list[tuple[str, int, bytes]]) -> None:
        fds: dict[str, int] = {}
        created = False
        try:
            for upload_id, offset, data in writes:
                fd = fds.get(upload_id)
                if fd is None:
                    path = self.partial_path(upload_id)
                    created = created or not path.exists()
                    fd = fds[upload_id] = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
                view = memoryview(data)
                while view:
                    n = os.pwrite(fd, view, offset)
                    view, offset = view[n:], offset + n
            # One fsync per file per batch: the acknowledgement that follows promises durability,
            # and a new file's name is durable only once its directory is synced too.
            for fd in fds.values():
                os.fsync(fd)
            if created:
                _fsync_dir(self.partial_dir)
        finally:
            for fd in fds.values():
                os.close(fd)

    def finalize(self, upload_id: str, length: int) -> str:
        src, dst = self.partial_path(upload_id), self.stored_path(upload_id)
        if not dst.exists():
            if not src.exists():
                if length != 0:
                    raise FileNotFoundError(f"no bytes on disk for upload {upload_id}")
                src.touch()
            size = src.stat().st_size
            if size != length:
                raise ValueError(f"upload {upload_id} has {size} bytes on disk, expected {length}")
            os.chmod(src, 0o444)
            os.replace(src, dst)
            _fsync_dir(self.stored_dir)
        return _sha256(dst)

    def concat(self, final_id: str, part_ids: list[str]) -> None:
        if self.stored_path(final_id).exists():
            return
        # Built under a name of its own and renamed whole: two ingesters may assemble the same
        # final at once (its assembly can be queued twice), and neither may truncate the
        # other's file while that one is being finalised.
        tmp = self.partial_dir / f"{final_id}.concat-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            with open(tmp, "wb") as out:
                for part in part_ids:
                    with open(self.stored_path(part), "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.partial_path(final_id))
        finally:
            tmp.unlink(missing_ok=True)

    def discard(self, upload_id: str) -> None:
        try:
            os.unlink(self.partial_path(upload_id))
        except FileNotFoundError:
            pass

    def open_stored(self, upload_id: str) -> BinaryIO:
        return open(self.stored_path(upload_id), "rb")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
