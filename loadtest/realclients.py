"""Run the real tus-js-client (loadtest/realclients/tusjs_run.mjs) from Python.

Why: our own load generators speak tus the way we think clients do; candidate teams' web
pages use the official tus-js-client with its defaults (whole file in one PATCH, retries at
0/1/3/5 s, Retry-After ignored). The benchmark and the CI smoke test drive that exact
client, installed from the pinned loadtest/realclients/package.json, never a global copy.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent / "realclients"
DRIVER = HERE / "tusjs_run.mjs"


class Unavailable(RuntimeError):
    """node/npm missing or the install failed (offline): callers skip with this reason."""


def node_available() -> str | None:
    """None when node and npm are on PATH, else the reason to skip."""
    missing = [t for t in ("node", "npm") if shutil.which(t) is None]
    return f"not found: {', '.join(missing)}" if missing else None


def ensure_installed(folder: Path = HERE, timeout: float = 300.0) -> Path:
    """npm-install the pinned package.json into folder/node_modules once.

    Reinstalls only when the installed tus-js-client is not the pinned version, so a
    repeated run costs nothing and never reaches the network."""
    reason = node_available()
    if reason:
        raise Unavailable(reason)
    pinned = json.loads((folder / "package.json").read_text())["dependencies"]
    if _installed_matches(folder, pinned):
        return folder
    lock = (folder / "package-lock.json").exists()
    args = ["npm", "ci" if lock else "install", "--no-audit", "--no-fund", "--loglevel=error"]
    try:
        r = subprocess.run(args, cwd=folder, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise Unavailable(f"{' '.join(args)} timed out after {timeout:.0f}s") from e
    if r.returncode != 0 or not _installed_matches(folder, pinned):
        tail = (r.stderr or r.stdout).strip().splitlines()[-5:]
        raise Unavailable(f"{' '.join(args)} failed ({r.returncode}): " + " | ".join(tail))
    return folder


def _installed_matches(folder: Path, pinned: dict[str, str]) -> bool:
    for name, version in pinned.items():
        try:
            meta = json.loads((folder / "node_modules" / name / "package.json").read_text())
        except (OSError, ValueError):
            return False
        if meta.get("version") != version:
            return False
    return True


def installed_versions(folder: Path = HERE) -> dict[str, str]:
    out = {}
    for name in json.loads((folder / "package.json").read_text())["dependencies"]:
        try:
            out[name] = json.loads((folder / "node_modules" / name / "package.json").read_text())["version"]
        except (OSError, ValueError, KeyError):
            out[name] = "?"
    return out


def run_tusjs(endpoint: str, *, uploads: int = 1, size: int = 0, chunk_size: int | None = None,
              parallel_uploads: int | None = None, headers: dict | None = None,
              rate: float | None = None, duration: float | None = None, lazy: bool = False,
              timeout: float = 600.0, env: dict | None = None, file: str | None = None,
              metadata: dict | None = None) -> dict:
    """Run one batch of tus-js-client uploads and return the driver's JSON result.

    The driver enforces `timeout` itself (unfinished uploads are reported, not lost); the
    subprocess gets a margin on top and is killed by PID if it still hangs."""
    ensure_installed()
    spec = {"endpoint": endpoint, "uploads": uploads, "size": size, "timeout": timeout}
    if chunk_size:
        spec["chunkSize"] = chunk_size
    if parallel_uploads:
        spec["parallelUploads"] = parallel_uploads
    if headers:
        spec["headers"] = headers
    if rate and duration:
        spec["rate"], spec["duration"] = rate, duration
    if lazy:
        spec["lazy"] = True
    if file:
        spec["file"] = file  # its bytes, once per upload, instead of random bodies
    if metadata:
        spec["metadata"] = metadata
    node_env = dict(env or os.environ)
    # Room for 1000 x 4 MiB bodies in one process; the client itself is left at its defaults.
    node_env.setdefault("NODE_OPTIONS", "--max-old-space-size=8192")
    proc = subprocess.Popen(["node", str(DRIVER), json.dumps(spec)], cwd=HERE, env=node_env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout + (duration or 0) + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise RuntimeError(f"tus-js-client driver hung; stderr: {err[-2000:]}")
    if proc.returncode != 0 or not out.strip():
        raise RuntimeError(f"tus-js-client driver exited {proc.returncode}: {err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def distinct_bodies(n: int, size: int, seed: int = 7) -> Iterator[bytes]:
    """n bodies of `size` bytes that differ (a numbered prefix on one random template)."""
    template = random.Random(seed).randbytes(size)
    for i in range(n):
        prefix = f"upload-{i}-".ljust(min(32, size), ".").encode()
        yield prefix + template[len(prefix):]


def run_tuspy(endpoint: str, *, uploads: int, size: int, chunk_size: int | None = None,
              timeout: float = 600.0) -> dict:
    """`uploads` tuspy uploads at once, one thread each, with tuspy's defaults.

    tuspy's defaults are stricter than tus-js-client's: no retries at all (`retries=0`),
    and the whole file in one PATCH (`chunk_size` = sys.maxsize), so any refusal is a failed
    upload. Same result shape as run_tusjs."""
    from tusclient import client as tus_client

    result: dict = {"client": f"tuspy {importlib.metadata.version('tuspy')}", "started": uploads,
                    "succeeded": 0, "failed": 0, "unfinished": 0, "errors": {}, "urls": []}
    lock = threading.Lock()

    def one(body: bytes, i: int) -> None:
        kw = {"chunk_size": chunk_size} if chunk_size else {}
        try:
            up = tus_client.TusClient(endpoint).uploader(file_stream=io.BytesIO(body),
                                                         metadata={"filename": f"tuspy-{i}.bin"}, **kw)
            up.upload()
        except Exception as e:  # noqa: BLE001 - every failure is a counted result here
            status = getattr(e, "status_code", None)
            with lock:
                result["failed"] += 1
                key = str(status) if status else type(e).__name__
                result["errors"][key] = result["errors"].get(key, 0) + 1
            return
        with lock:
            result["succeeded"] += 1
            result["urls"].append(up.url)

    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=(b, i), daemon=True)
               for i, b in enumerate(distinct_bodies(uploads, size))]
    for t in threads:
        t.start()
    deadline = t0 + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    result["unfinished"] = sum(t.is_alive() for t in threads)
    result["wall_s"] = time.monotonic() - t0
    result["mb_s"] = result["succeeded"] * size / (1 << 20) / result["wall_s"]
    return result


def run_push(endpoint: str, *, uploads: int, size: int, chunk_size: int | None = None,
             parallel: int | None = None, timeout: float = 600.0) -> dict:
    """`unggah push` of a folder of `uploads` files, `parallel` at a time (default: all).

    Runs the installed command as a user would, in its own process, with its own state
    file; only against unggah (it reads unggah's status and receipts)."""
    folder = Path(tempfile.mkdtemp(prefix="unggah-push-bench-"))
    try:
        for i, body in enumerate(distinct_bodies(uploads, size)):
            (folder / f"scan-{i:05d}.bin").write_bytes(body)
        args = [sys.executable, "-m", "commands.cli", "push", str(folder), "--server", endpoint.split("/files")[0],
                "--parallel", str(parallel or uploads), "--no-progress", "--json", "--wait", "120",
                "--state", str(folder / "push-state.json")]
        if chunk_size:
            args += ["--chunk-size", str(chunk_size)]
        t0 = time.monotonic()
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout + 180, stdin=subprocess.DEVNULL)
        wall = time.monotonic() - t0
        if not r.stdout.strip():
            raise RuntimeError(f"unggah push exited {r.returncode}: {r.stderr[-2000:]}")
        report = json.loads(r.stdout.strip().splitlines()[-1])
        states: dict[str, int] = {}
        for f in report["files"]:
            states[f["state"]] = states.get(f["state"], 0) + 1
        ok = states.get("stored", 0) + states.get("uploaded", 0)
        upload_s = report.get("upload_seconds") or wall
        return {"client": "unggah push", "started": uploads, "succeeded": ok, "failed": uploads - ok,
                "unfinished": 0, "errors": {k: v for k, v in states.items() if k not in ("stored", "uploaded")},
                "stored": states.get("stored", 0),
                "urls": [f["url"] for f in report["files"] if f.get("url")], "wall_s": upload_s,
                "mb_s": ok * size / (1 << 20) / upload_s, "retries": report.get("retries", 0)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
