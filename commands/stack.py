"""`unggah up`: the whole local stack in the foreground, and the supervisor of its children.

Embedded Valkey (unless a Redis URL is configured; with --cluster a local Valkey Cluster of
three primaries with a replica each, unggah.valkey.EmbeddedCluster), one gateway process, the
ingester processes, the validator and the auditor, each a child we hold by PID. The stack owns
them:

- SIGINT (Ctrl-C), SIGTERM or SIGHUP (the terminal closed) stops them in order: the gateway
  first (no new bytes), then the workers (they finish or release their entries), then Valkey
  (it fsyncs its AOF). SIGHUP used to kill `unggah up` alone and leave the children running: a
  second `unggah up` then started a second Valkey on the same AOF while the orphaned gateway
  still answered, a split brain.
- If `unggah up` itself dies without running any of its code (kill -9, the OOM killer), the
  kernel sends each child SIGTERM (PR_SET_PDEATHSIG, see unggah.processes.with_pdeathsig).
- A child that exits is started again, Valkey included (same data directory and port, so
  every other child's UNGGAH_REDIS_URL stays right), after a back-off that doubles while it
  keeps dying (a cluster node rejoins from its nodes.conf); each restart is logged with the
  exit code and counted on the supervisor's own /metrics (unggah_stack_child_restarts_total
  {child}, beside unggah_stack_child_up and unggah_stack_child_last_exit_code;
  metrics/supervisor.py), on stack_metrics_host:port
  (127.0.0.1 and a free port by default), announced to Prometheus as job unggah-stack.
- The auditor serves its own /metrics (what its chain witness finds lost) on audit_metrics_host
  and audit_metrics_port (0: a free port picked here, kept across its restarts), announced as
  job unggah-audit; each ingester gets a free port the same way (job unggah-ingest).
- <state_dir>/lock is flocked for the stack's life, with its PID and port in it: a second
  `unggah up` on the same state directory refuses and names them.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from metrics import supervisor as supervision
from metrics.targets import local_host, write_targets
from unggah.config import Settings
from unggah import processes
from unggah.processes import free_port
from unggah.valkey import DataDirLocked, EmbeddedCluster, EmbeddedValkey, lock_file, lock_holder

log = logging.getLogger("commands.stack")

# Back-off before restarting a child: a child that dies at once (bad config, port taken, Valkey
# refusing its AOF) must not be restarted in a tight loop, nor flood the log, but one that died
# once after a long life should be back quickly.
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0
STABLE_AFTER_S = 30.0  # up this long: the next death starts the back-off again from the first step
POLL_S = 0.2
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def running_url_file(settings: Settings) -> Path:
    """Where a running `unggah up` leaves its embedded Valkey's URL."""
    return Path(settings.state_dir) / "redis-url"


def running_cluster_file(settings: Settings) -> Path:
    """Left beside running_url_file by `unggah up --cluster`: that URL is one seed node of a
    cluster, so a command run beside the stack needs the cluster client (redis_cluster)."""
    return Path(settings.state_dir) / "redis-cluster"


def cluster_dir(settings: Settings) -> Path:
    """Where `unggah up --cluster` keeps its nodes (node-<port>/ each, and cluster.json)."""
    return Path(settings.state_dir) / "valkey-cluster"


def is_valkey(name: str) -> bool:
    """The supervisor's name for the embedded Valkey ("valkey") or a cluster node ("valkey-<port>")."""
    return name == "valkey" or name.startswith("valkey-")


def is_gateway(name: str) -> bool:
    """The supervisor's name for the gateway ("gateway") or one of several ("gateway-<i>")."""
    return name == "gateway" or name.startswith("gateway-")


def gateway_env(env: dict[str, str], port: int, process_port: int) -> dict[str, str]:
    """`env` for one of several gateway processes on `port` (`unggah up --gateways`, `unggah serve
    --workers`): one worker (it starts no processes of its own), SO_REUSEPORT, and its own
    process_port, where it alone is scraped and asked for readiness."""
    return {**env, "UNGGAH_WORKERS": "1", "UNGGAH_REUSE_PORT": "true",
            "UNGGAH_PROCESS_PORT": str(process_port), "UNGGAH_PORT": str(port)}


def lock_path(settings: Settings) -> Path:
    """The stack's lock: held (flock) by the running `unggah up`, with its PID and port."""
    return Path(settings.state_dir) / "lock"


class StackLocked(RuntimeError):
    """Another `unggah up` runs on this state directory."""


def lock_state_dir(settings: Settings, port: int) -> int:
    """Take <state_dir>/lock for this process's life (the fd is close-on-exec, so no child
    keeps it after we are gone); the fd, kept open until the stack has stopped."""
    path = lock_path(settings)
    fd = lock_file(path, {"pid": os.getpid(), "port": port, "host": settings.host,
                          "state_dir": str(Path(settings.state_dir).resolve())})
    if fd is None:
        holder = lock_holder(path)
        raise StackLocked(
            f"another `unggah up` is running on {settings.state_dir} (pid {holder.get('pid', '?')}, "
            f"port {holder.get('port', '?')}); stop it first (Ctrl-C in its terminal, or "
            f"kill {holder.get('pid', '<pid>')}), or use another state_dir.")
    return fd


def _say(text: str, err: bool = False) -> None:
    # After SIGHUP the terminal is gone and a write fails with EIO; that must not cut short the
    # orderly stop it is reporting.
    try:
        print(text, file=sys.stderr if err else sys.stdout, flush=True)
    except OSError:
        pass


def _child(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Its own session: Ctrl-C (SIGINT to the terminal's process group) reaches only `unggah up`,
    # which then stops the children in order (gateway, workers, Valkey last). PR_SET_PDEATHSIG
    # covers the case where `unggah up` cannot: it was killed outright.
    return processes.start(processes.command(*args), env=env, session=True, pdeathsig=True)


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"{code} (killed by {signal.Signals(-code).name})"
        except ValueError:
            return str(code)
    return str(code)


@dataclass
class Child:
    """One supervised process: how to start it and where its back-off stands."""

    name: str
    launch: Callable[[], subprocess.Popen[bytes]]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    delay: float = BACKOFF_FIRST_S
    due: float | None = None  # when a dead child is started again

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    """Starts children, notices when one exits, and starts it again after its back-off."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.children: dict[str, Child] = {}
        supervision.reset()

    def add(self, name: str, launch: Callable[[], subprocess.Popen[bytes]],
            proc: subprocess.Popen[bytes] | None = None) -> Child:
        child = Child(name, launch)
        self.children[name] = child
        if proc is None:
            proc = launch()
        child.proc, child.started_at = proc, time.monotonic()
        supervision.child_started(name)
        return child

    def check(self) -> None:
        now = time.monotonic()
        for c in self.children.values():
            if c.proc is not None and c.due is None and c.proc.poll() is not None:
                if now - c.started_at >= STABLE_AFTER_S:
                    c.delay = BACKOFF_FIRST_S
                c.due = now + c.delay
                supervision.child_exited(c.name, c.proc.returncode)
                hint = ""
                if c.name == "valkey":
                    hint = f"; see {self.settings.state_dir}/valkey/valkey.log"
                elif is_valkey(c.name):
                    hint = f"; see {cluster_dir(self.settings)}/node-{c.name.removeprefix('valkey-')}/valkey.log"
                log.warning(f"{c.name} exited with code {_describe(c.proc.returncode)} after "
                            f"{now - c.started_at:.1f}s; restart {c.restarts + 1} in {c.delay:.1f}s{hint}",
                            extra={"child": c.name, "pid": c.proc.pid, "exit_code": c.proc.returncode,
                                   "restart": c.restarts + 1, "delay_s": c.delay})
            if c.due is not None and now >= c.due:
                self._restart(c, now)

    def _restart(self, c: Child, now: float) -> None:
        try:
            proc = c.launch()
        except (OSError, DataDirLocked) as e:
            c.delay = min(c.delay * 2, BACKOFF_MAX_S)
            c.due = now + c.delay
            log.error(f"{c.name} could not be started: {e}; next try in {c.delay:.1f}s",
                      extra={"child": c.name, "error": str(e), "delay_s": c.delay})
            return
        c.proc, c.started_at, c.due = proc, now, None
        c.restarts += 1
        c.delay = min(c.delay * 2, BACKOFF_MAX_S)
        log.warning(f"{c.name} restarted (pid {proc.pid}, restart {c.restarts})",
                    extra={"child": c.name, "pid": proc.pid, "restarts": c.restarts})
        supervision.child_restarted(c.name)

    def stop(self, valkey: EmbeddedValkey | EmbeddedCluster | None) -> None:
        """Gateway first (no new bytes), then the workers, Valkey last (it fsyncs its AOF; a
        cluster's nodes all at once)."""
        gateway = [c for n, c in self.children.items() if is_gateway(n)]
        workers = [c for n, c in self.children.items() if not is_gateway(n) and not is_valkey(n)]
        for group in (gateway, workers):
            for c in group:
                if c.running:
                    c.proc.send_signal(signal.SIGTERM)
            for c in group:
                if c.proc is None:
                    continue
                try:
                    c.proc.wait(30)
                except subprocess.TimeoutExpired:
                    log.warning(f"{c.name} did not stop within 30s; killing it", extra={"child": c.name})
                    c.proc.kill()
                    c.proc.wait()
        if valkey:
            valkey.stop()


def up(settings: Settings, port: int | None = None, ingesters: int | None = None, cluster: bool = False,
       gateways: int | None = None) -> int:
    """`cluster`: a local Valkey Cluster (EmbeddedCluster, in <state_dir>/valkey-cluster) in place
    of the single embedded Valkey; every child gets UNGGAH_REDIS_CLUSTER=1 and a seed node's URL.
    `gateways` (default: settings.workers): gateway processes on the one port (SO_REUSEPORT),
    supervised one by one as gateway-0 ..., each also alone on a free port of its own
    (gateway_env)."""
    if cluster and not settings.embedded:
        _say(f"unggah up: --cluster starts a local Valkey Cluster, but a Redis URL is configured "
             f"({settings.redis_url}); drop one or the other (a configured cluster: set redis_url "
             f"and redis_cluster, and run `unggah up` without --cluster)", err=True)
        return 2
    port = port or settings.port
    n_ingest = settings.ingest_processes if ingesters is None else ingesters
    n_gateways = settings.workers if gateways is None else gateways
    if n_gateways < 1:
        _say("unggah up: --gateways must be at least 1", err=True)
        return 2
    env = dict(os.environ)
    valkey: EmbeddedValkey | EmbeddedCluster | None = None
    stopped_by: list[str] = []

    def on_signal(signum, frame):  # noqa: ARG001
        if not stopped_by:
            log.info(f"{signal.Signals(signum).name}: stopping", extra={"signal": signal.Signals(signum).name})
        stopped_by.append(signal.Signals(signum).name)

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)

    try:
        lock_fd = lock_state_dir(settings, port)
    except StackLocked as e:
        _say(f"unggah up: {e}", err=True)
        return 1

    sup = Supervisor(settings)
    metrics_server = supervision.StackMetricsServer(settings.stack_metrics_host, settings.stack_metrics_port)
    try:
        try:
            # Before any child: a port that cannot be had stops the stack while nothing runs.
            metrics_server.start()
        except OSError as e:
            _say(f"unggah up: the supervisor's /metrics cannot listen on {settings.stack_metrics_host}:"
                 f"{settings.stack_metrics_port}: {e}; choose another stack_metrics_port "
                 f"(UNGGAH_STACK_METRICS_PORT, or --metrics-port; 0 picks a free one)", err=True)
            return 1
        if cluster:
            # From this (the main) thread, as the single Valkey below: the death signal follows
            # the thread that forked each node.
            valkey = EmbeddedCluster(cluster_dir(settings), appendfsync=settings.appendfsync,
                                     maxmemory=settings.valkey_maxmemory, die_with_parent=True)
            try:
                valkey.start()
            except (DataDirLocked, RuntimeError) as e:
                valkey = None
                _say(f"unggah up: the local Valkey Cluster did not start: {e}", err=True)
                return 1
            for node in valkey.nodes:
                # A node that exits is started again on its port and directory: it replays its
                # AOF and rejoins (a former primary as the replica of the one that replaced it).
                sup.add(f"valkey-{node.port}", lambda node=node: valkey.spawn_node(node), proc=node.server.proc)
            env["UNGGAH_REDIS_URL"] = valkey.url
            env["UNGGAH_REDIS_CLUSTER"] = "1"
            # Each primary has a replica: a write is answered once the replica has it (WAIT),
            # so a primary killed the next moment loses nothing acknowledged.
            env["UNGGAH_WAIT_REPLICAS"] = str(max(settings.wait_replicas, 1))
            running_url_file(settings).write_text(valkey.url)
            running_cluster_file(settings).write_text("1\n")
        elif settings.embedded:
            # Started from this (the main) thread, which lives as long as the stack: the
            # death signal follows the thread that forked the child.
            valkey = EmbeddedValkey(Path(settings.state_dir) / "valkey", appendfsync=settings.appendfsync,
                                    maxmemory=settings.valkey_maxmemory, die_with_parent=True)
            try:
                valkey.start()
            except DataDirLocked as e:
                valkey = None
                _say(f"unggah up: {e}", err=True)
                return 1
            # Restarts reuse the object: same data directory, same port, hence the same URL.
            sup.add("valkey", lambda: valkey.spawn().proc, proc=valkey.proc)
            env["UNGGAH_REDIS_URL"] = valkey.url
            # So `unggah tenants`, `unggah dead`, ... run beside the stack find its Valkey.
            running_url_file(settings).write_text(valkey.url)
        env["UNGGAH_STATE_DIR"] = settings.state_dir
        if settings.election_file:  # from --election: every child judges by the same file
            env["UNGGAH_ELECTION_FILE"] = settings.election_file
        specs: dict[str, list[str]] = {}
        envs: dict[str, dict[str, str]] = {}
        if n_gateways == 1:
            specs["gateway"] = ["serve", "--port", str(port)]
            envs["gateway"] = {**env, "UNGGAH_WORKERS": "1"}  # it must not start processes of its own
            gateway_ports: dict[str, int] = {"gateway": port}
        else:
            gateway_ports = {f"gateway-{i}": free_port(settings.host) for i in range(n_gateways)}
            for name, own in gateway_ports.items():
                specs[name] = ["serve"]
                envs[name] = gateway_env(env, port, own)
        # Each ingester serves its own /metrics on a free port, kept across its restarts.
        metrics_ports = {f"ingest-{i}": free_port(settings.host) for i in range(n_ingest)}
        for i in range(n_ingest):
            specs[f"ingest-{i}"] = ["ingest", "--name", f"ingest-{i}",
                                    "--metrics-port", str(metrics_ports[f"ingest-{i}"])]
        # Exactly one validator: the only writer of the results store (<state_dir>/results.sqlite3).
        specs["validate"] = ["validate", "--name", "validate-0"]
        specs["audit"] = ["audit", "run"]
        # The auditor's /metrics: the configured port, or a free one kept across its restarts.
        audit_port = settings.audit_metrics_port or free_port(settings.audit_metrics_host)
        envs["audit"] = {**env, "UNGGAH_AUDIT_METRICS_HOST": settings.audit_metrics_host,
                         "UNGGAH_AUDIT_METRICS_PORT": str(audit_port)}
        for name, args in specs.items():
            # A crashed child is started again under the same name and arguments: an
            # ingester's pending entries are picked up again under its stable name.
            sup.add(name, lambda args=args, child_env=envs.get(name, env): _child(args, child_env))
        base = f"http://{settings.host}:{port}"
        for name, own in gateway_ports.items():
            try:
                ready = processes.wait_ready(f"http://{local_host(settings.host)}:{own}/readyz", 30,
                                             sup.children[name].proc, stopping=lambda: bool(stopped_by))
            except RuntimeError as e:
                raise RuntimeError(f"the gateway did not start: {e}") from None
            if not ready:
                return 0
        targets = write_targets(settings.state_dir, settings.host,
                                port if n_gateways == 1 else gateway_ports, metrics_ports,
                                stack_port=metrics_server.port, stack_host=settings.stack_metrics_host,
                                audit_port=audit_port, audit_host=settings.audit_metrics_host)
        if isinstance(valkey, EmbeddedCluster):
            kind = (f" (embedded Valkey Cluster: {valkey.primaries} primaries with {valkey.replicas} replica(s) "
                    f"each, ports {' '.join(str(n.port) for n in valkey.nodes)}, AOF {settings.appendfsync})")
        elif valkey:
            kind = f" (embedded Valkey, AOF {settings.appendfsync})"
        else:
            kind = ""
        gateway_metrics = (" ".join(f"http://{local_host(settings.host)}:{p}/metrics" for p in gateway_ports.values())
                           if n_gateways > 1 else base + "/metrics")  # several: each process at its own port
        _say(f"unggah is up (pid {os.getpid()}; Ctrl-C stops it)\n"
             f"  tus endpoint  {base}/files/"
             f"{f'  ({n_gateways} gateway processes on the port)' if n_gateways > 1 else ''}\n"
             f"  status        {base}/files/<id>/status\n"
             f"  metrics       {gateway_metrics}\n"
             f"  health        {base}/healthz  {base}/readyz\n"
             f"  redis         {env.get('UNGGAH_REDIS_URL', settings.redis_url)}"
             f"{kind}\n"
             f"  ingesters     {n_ingest}, metrics at "
             f"{' '.join(f'http://{settings.host}:{p}/metrics' for p in metrics_ports.values()) or '-'}\n"
             f"  prometheus    file_sd targets in {targets}\n"
             f"  supervisor    {metrics_server.url}  (child restarts, up, last exit code)\n"
             f"  auditor       http://{local_host(settings.audit_metrics_host)}:{audit_port}/metrics  "
             f"(acknowledged data the audit chain finds lost)\n"
             f"  validation    {base}/progress  {base}/verdicts.csv  (results in {settings.results_path})\n"
             f"  election      {settings.election_file or 'none: lists are stored but not validated (unggah up --election election.toml)'}\n"
             f"  state         {settings.state_dir}")
        while not stopped_by:
            sup.check()
            time.sleep(POLL_S)
        return 0
    finally:
        sup.stop(valkey)
        metrics_server.stop()
        if valkey:
            running_url_file(settings).unlink(missing_ok=True)
            running_cluster_file(settings).unlink(missing_ok=True)
        os.ftruncate(lock_fd, 0)  # stopped: nothing to name any more
        os.close(lock_fd)
        _say("unggah stopped")
