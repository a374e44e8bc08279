"""Run the real tus-js-client (loadtest/realclients/tusjs_run.mjs) from Python.

Why: our own load generators speak tus the way we think clients do; candidate teams' web
pages use the official tus-js-client with its defaults (whole file in one PATCH, retries at
0/1/3/5 s, Retry-After ignored). The benchmark and the CI smoke test drive that exact
client, installed from the pinned loadtest/realclients/package.json, never a global copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
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


def run_tusjs(endpoint: str, *, uploads: int = 1, size: int, chunk_size: int | None = None,
              parallel_uploads: int | None = None, headers: dict | None = None,
              rate: float | None = None, duration: float | None = None,
              timeout: float = 600.0, env: dict | None = None) -> dict:
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
