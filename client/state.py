"""The local state file: which upload URL each file went to, and how far it got.

One JSON document, rewritten atomically (temp file, fsync, rename, fsync of the
folder) so a crash or kill -9 leaves either the old or the new version, never a
torn one. Writes are coalesced (at most every `interval` seconds): the offset
recorded here is only a hint, the server's HEAD is the truth, and an upload
whose creation was not yet flushed is found again through its Idempotency-Key.

Format (version 1):

    {
      "version": 1,
      "uploads": {
        "<key>": {
          "server": "http://host:8080/files/",   # creation URL
          "name": "daftar.csv", "path": "/abs/path/daftar.csv",
          "size": 123, "sha256": "<hex>",
          "generation": 0,                        # bumped when the server lost the upload
          "url": "http://host:8080/files/3-ab..", # null until created
          "offset": 0,                            # last offset the server acknowledged
          "state": "uploading" | "uploaded" | "stored" | "failed",
          "reason": null, "receipt": null,        # receipt file path once saved
          "updated_at": 1732420000.0
        }
      },
      "hashes": {"/abs/path/daftar.csv": {"size": 123, "mtime_ns": 1732..., "sha256": "<hex>"}}
    }

`<key>` is `<creation URL>|<file name>|<size>|<sha256>`: the same content under
the same name to the same server is the same upload, wherever the file sits and
whatever its mtime (mtime only decides whether the cached sha256 is still valid).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

VERSION = 1


def default_path() -> Path:
    env = os.environ.get("UNGGAH_CLIENT_STATE")
    if env:
        return Path(env)
    return Path.home() / ".unggah" / "push-state.json"


def upload_key(server: str, name: str, size: int, sha256: str) -> str:
    return f"{server}|{name}|{size}|{sha256}"


def write_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    """Temp file, fsync, rename, fsync of the folder: the old or the new content, never a mix.
    durable=False skips the fsyncs (still never torn; may be lost on power failure)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if not durable:
        return
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # e.g. Windows: no directory fsync
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


class StateFile:
    def __init__(self, path: str | os.PathLike[str], interval: float = 0.5) -> None:
        self.path = Path(path)
        self.interval = interval
        self.data: dict[str, Any] = {"version": VERSION, "uploads": {}, "hashes": {}}
        self._dirty = False
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._lock = asyncio.Lock()
        self.load()

    def load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise StateError(f"state file {self.path} is not valid JSON ({e}); move it away to start afresh") from None
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise StateError(f"state file {self.path} has an unknown format (version {data.get('version')!r})")
        data.setdefault("uploads", {})
        data.setdefault("hashes", {})
        self.data = data

    # -- entries

    @property
    def uploads(self) -> dict[str, dict[str, Any]]:
        return self.data["uploads"]

    def get(self, key: str) -> dict[str, Any] | None:
        return self.uploads.get(key)

    def put(self, key: str, **fields: Any) -> dict[str, Any]:
        e = self.uploads.setdefault(key, {})
        e.update(fields)
        e["updated_at"] = round(time.time(), 3)
        self.mark_dirty()
        return e

    def cached_hash(self, path: str, size: int, mtime_ns: int) -> str | None:
        h = self.data["hashes"].get(path)
        if h and h.get("size") == size and h.get("mtime_ns") == mtime_ns:
            return h.get("sha256")
        return None

    def remember_hash(self, path: str, size: int, mtime_ns: int, sha256: str) -> None:
        self.data["hashes"][path] = {"size": size, "mtime_ns": mtime_ns, "sha256": sha256}
        self.mark_dirty()

    # -- writing

    def mark_dirty(self) -> None:
        self._dirty = True
        if self._task is None or self._task.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop: flush_sync() at the end
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._flusher())

    async def _flusher(self) -> None:
        while self._dirty:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
            await self.flush()
            if self._wake.is_set():
                return

    async def flush(self) -> None:
        async with self._lock:
            if not self._dirty:
                return
            self._dirty = False
            data = orjson.dumps(self.data, option=orjson.OPT_INDENT_2)
            await asyncio.to_thread(write_atomic, self.path, data)

    def flush_sync(self) -> None:
        if self._dirty:
            self._dirty = False
            write_atomic(self.path, orjson.dumps(self.data, option=orjson.OPT_INDENT_2))

    async def close(self) -> None:
        """Write what is pending now and stop the background writer."""
        if self._task is not None and not self._task.done():
            self._wake.set()
            await self._task
        await self.flush()


class StateError(RuntimeError):
    pass
