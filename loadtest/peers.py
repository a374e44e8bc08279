"""Start and stop the servers we compare against, each on a free 127.0.0.1 port,
in its own temp folder, as its own process group (stopped by that PID).

- tus_node: the official tus Node server (@tus/server + @tus/file-store, from npm).
- nginx:    one nginx worker that reads every request body and answers like a
            tus server would (POST 201 + Location, PATCH 204): the HTTP ceiling.
            nginx cannot add Upload-Offset + Content-Length, so it sends no
            Upload-Offset; run the generator with sink=True against it.
- gateway:  this project's `unggah up` (gateway + embedded Valkey).

Usage as a script: python -m loadtest.peers nginx|tus-node|gateway  (prints the
URL, runs until Ctrl-C).
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from unggah import processes
from unggah.processes import free_port

TUS_NODE_PACKAGES = ["@tus/server@2", "@tus/file-store@2"]


class Peer:
    """A running server: its creation URL, process and temp folder."""

    def __init__(self, name: str, url: str, proc: subprocess.Popen, workdir: Path,
                 *, sink: bool = False, keep_workdir: bool = False) -> None:
        self.name = name
        self.url = url
        self.proc = proc
        self.workdir = workdir
        self.sink = sink  # True: answers carry no real Upload-Offset
        self.keep_workdir = keep_workdir

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the peer's process group (its PID is the group id, so an
        embedded Valkey or npm child goes too), SIGKILL if it lingers."""
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        # Children that ignored SIGTERM while the leader exited.
        _signal_group(self.proc.pid, signal.SIGKILL)
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, n: int = 20) -> str:
        out = []
        for f in sorted(self.workdir.glob("*.log")):
            try:
                lines = f.read_text(errors="replace").splitlines()[-n:]
            except OSError:
                continue
            out.append(f"--- {f.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def __enter__(self) -> "Peer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _spawn(args: list[str], workdir: Path, log_name: str, env: dict | None = None) -> subprocess.Popen:
    # New session: the child leads its own process group, so stop() reaches its children.
    return processes.start(args, env=dict(os.environ) if env is None else env, cwd=workdir, log=workdir / log_name,
                           session=True)


def wait_ready(peer: Peer, timeout: float = 30.0, path: str | None = None) -> None:
    """Poll with OPTIONS until the server answers anything below 500."""
    host, port, path0 = _split(peer.url)
    path = path or path0
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if peer.proc.poll() is not None:
            tail = peer.log_tail()
            peer.stop()
            raise RuntimeError(f"{peer.name} exited with {peer.proc.returncode}\n{tail}")
        try:
            c = http.client.HTTPConnection(host, port, timeout=2)
            c.request("OPTIONS", path, headers={"Tus-Resumable": "1.0.0"})
            status = c.getresponse().status
            c.close()
            if status < 500:
                return
            last = f"status {status}"
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    tail = peer.log_tail()
    peer.stop()
    raise RuntimeError(f"{peer.name} not ready after {timeout}s ({last})\n{tail}")


def _split(url: str) -> tuple[str, int, str]:
    from urllib.parse import urlsplit
    u = urlsplit(url)
    return u.hostname or "127.0.0.1", u.port or 80, u.path or "/"


# ---------------------------------------------------------------- tus Node

def install_tus_node(target: Path | None = None) -> Path:
    """npm-install @tus/server and @tus/file-store into a (temp) folder; returns it.
    Install once and pass it to start_tus_node() for every start."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        raise RuntimeError("node and npm are needed for the tus Node peer")
    folder = Path(target) if target else Path(tempfile.mkdtemp(prefix="tusnode-"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "package.json").write_text('{"name": "tus-node-peer", "private": true}\n')
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", *TUS_NODE_PACKAGES],
                   cwd=folder, check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    return folder


# Written from the documented API: Server({path, datastore}) and FileStore({directory}).
# Finished uploads are deleted after the response has gone (POST_FINISH fires after
# onUploadFinish and the reply), so a long benchmark does not fill the disk; that is one
# unlink per upload, outside the measured request.
TUS_NODE_JS = """\
import http from 'node:http';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { Server, EVENTS } from '@tus/server';
import { FileStore } from '@tus/file-store';

const [port, dataDir] = [Number(process.argv[2]), process.argv[3]];
const tus = new Server({
  path: '/files',
  datastore: new FileStore({ directory: dataDir }),
});
tus.on(EVENTS.POST_FINISH, (req, res, upload) => {
  const file = path.join(dataDir, upload.id);
  rm(file, { force: true }).catch(() => {});
  rm(file + '.json', { force: true }).catch(() => {});
});
const server = http.createServer((req, res) => tus.handle(req, res));
server.keepAliveTimeout = 75000;
server.listen(port, '127.0.0.1', () => console.log(`tus-node listening on 127.0.0.1:${port}`));
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
"""


def node_version() -> str:
    try:
        return subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "absent"


def tus_node_versions(install_dir: Path) -> str:
    import json
    out = []
    for pkg in ("server", "file-store"):
        try:
            meta = json.loads((install_dir / "node_modules" / "@tus" / pkg / "package.json").read_text())
            out.append(f"@tus/{pkg} {meta['version']}")
        except (OSError, ValueError, KeyError):
            out.append(f"@tus/{pkg} ?")
    return ", ".join(out)


def start_tus_node(install_dir: Path, port: int | None = None) -> Peer:
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="tusnode-run-"))
    (workdir / "files").mkdir()
    # The script lives in the install folder so its imports resolve against node_modules there.
    script = install_dir / "peer-server.mjs"
    script.write_text(TUS_NODE_JS)
    proc = _spawn(["node", str(script), str(port), str(workdir / "files")], workdir, "node.log")
    peer = Peer("tus-node", f"http://127.0.0.1:{port}/files", proc, workdir)
    wait_ready(peer, 30)
    return peer


# ---------------------------------------------------------------- nginx sink

def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)


def ensure_nginx() -> str:
    """Find nginx, installing Debian's nginx-light if it is missing (needs root)."""
    binary = nginx_binary()
    if binary:
        return binary
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError("nginx not found: apt-get install nginx-light")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    binary = nginx_binary()
    if not binary:
        raise RuntimeError("nginx-light installed but no nginx binary found")
    return binary


def nginx_version(binary: str | None = None) -> str:
    binary = binary or nginx_binary()
    if not binary:
        return "absent"
    r = subprocess.run([binary, "-v"], capture_output=True, text=True)
    return (r.stderr or r.stdout).strip().removeprefix("nginx version: ")


def nginx_conf(workdir: Path, port: int, body_buffer: int) -> str:
    # How the body gets read: `return` alone would run in the rewrite phase and
    # *discard* the body (maybe answering before it has arrived). `mirror` with
    # mirror_request_body reads the whole body into memory first (the buffer is
    # big enough for a chunk) in the precontent phase; the static handler then
    # fails (404 for POST on a missing file, 405 for PATCH) and error_page sends
    # that to @tus, which answers like a tus server. The mirror subrequest goes to
    # an internal location that does nothing.
    w = workdir
    return f"""\
worker_processes 1;
daemon off;
master_process on;
pid {w}/nginx.pid;
error_log {w}/error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {w}/client_body;
    proxy_temp_path {w}/proxy;
    fastcgi_temp_path {w}/fastcgi;
    uwsgi_temp_path {w}/uwsgi;
    scgi_temp_path {w}/scgi;
    client_max_body_size 0;
    client_body_buffer_size {body_buffer};
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {w}/empty;
        log_not_found off;
        location /files {{
            mirror /_discard;
            mirror_request_body on;
            error_page 403 404 405 = @tus;
        }}
        location = /_discard {{ internal; return 204; }}
        location @tus {{
            if ($request_method = POST) {{
                add_header Tus-Resumable 1.0.0 always;
                add_header Location /files/$request_id always;
                return 201;
            }}
            if ($request_method = OPTIONS) {{
                add_header Tus-Version 1.0.0 always;
                add_header Tus-Extension creation always;
                return 204;
            }}
            add_header Tus-Resumable 1.0.0 always;
            return 204;
        }}
    }}
}}
"""


def start_nginx(port: int | None = None, body_buffer: int = 1024 * 1024) -> Peer:
    """One nginx worker that reads whole bodies of up to `body_buffer` bytes into memory."""
    binary = ensure_nginx()
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="nginx-sink-"))
    # Started as root, the worker runs as an unprivileged user: it must be able to enter here.
    workdir.chmod(0o755)
    (workdir / "empty").mkdir()
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_conf(workdir, port, body_buffer))
    # -e: the error log from before the config is read goes here, not to /var/log.
    proc = _spawn([binary, "-c", str(conf), "-p", str(workdir), "-e", str(workdir / "error.log")],
                  workdir, "nginx.log")
    peer = Peer("nginx", f"http://127.0.0.1:{port}/files/", proc, workdir, sink=True)
    wait_ready(peer, 15)
    return peer


# ---------------------------------------------------------------- our gateway

def start_gateway(port: int | None = None, extra_args: list[str] | None = None,
                  timeout: float = 60.0) -> Peer:
    """`python -m commands.cli up --port PORT`: the gateway plus its embedded Valkey
    (AOF always, the default), run from a temp folder so its data lands there."""
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="unggah-up-"))
    # The child runs from a temp folder, and imports this checkout (processes.environment). The
    # caller's UNGGAH_* settings are the run's own: kept.
    env = processes.environment(**{k: v for k, v in os.environ.items() if k.startswith("UNGGAH_")})
    # Its own state (embedded Valkey AOF, blobs) in the temp folder, and never a Redis
    # URL inherited from the caller: the comparison is with the embedded Valkey.
    env.pop("UNGGAH_REDIS_URL", None)
    env["UNGGAH_STATE_DIR"] = str(workdir / "state")
    # The peers have no access control; compare like with like (tokens cost one GET per request:
    # bench_gateway measures with them on).
    env.setdefault("UNGGAH_AUTH", "off")
    proc = _spawn(processes.command("up", "--port", str(port), *(extra_args or [])),
                  workdir, "unggah.log", env=env)
    peer = Peer("gateway", f"http://127.0.0.1:{port}/files/", proc, workdir)
    wait_ready(peer, timeout)
    return peer


def main(argv: list[str] | None = None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m loadtest.peers")
    p.add_argument("peer", choices=("nginx", "tus-node", "gateway"))
    p.add_argument("--port", type=int, default=None)
    a = p.parse_args(argv)
    install = None
    if a.peer == "nginx":
        peer = start_nginx(a.port)
    elif a.peer == "tus-node":
        install = install_tus_node()
        peer = start_tus_node(install, a.port)
    else:
        peer = start_gateway(a.port)
    print(f"{peer.name} pid {peer.pid} at {peer.url}  (Ctrl-C stops it)", flush=True)
    try:
        peer.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        peer.stop()
        if install:
            shutil.rmtree(install, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
