"""One typed settings object, loaded once: defaults < TOML file < UNGGAH_* environment.

Every knob the gateway, the ingesters and the embedded stack read lives here,
so the README's configuration table can be checked against this file alone.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

import msgspec

from buffer import keys

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Where to reach Redis/Valkey. Empty: start the embedded Valkey under state_dir.
    redis_url: str = ""
    # redis_url names one seed node of a Valkey/Redis Cluster: the client reads the rest of the
    # topology from it (redis-py's RedisCluster.from_url). `unggah up --cluster` sets both.
    redis_cluster: bool = False
    # Local state: embedded Valkey data, blob store, results database.
    state_dir: str = ".unggah"

    host: str = "127.0.0.1"
    port: int = 8080
    # `unggah serve` runs this many gateway processes, all listening on `port` (SO_REUSEPORT: the
    # kernel spreads new connections over them), and starts any that exits again. Every process
    # keeps its own admission gate; buffer, tokens and windows live in Redis (docs/architecture.md).
    workers: int = 1
    # Listen on `port` with SO_REUSEPORT, beside other processes that do: set by `serve --workers`
    # for its processes; set it alone to run several `unggah serve` under another supervisor.
    reuse_port: bool = False
    # This process alone also listens here (0: not at all). With several processes on one port, a
    # request to `port` reaches any of them, so Prometheus scrapes each at its own port (one target
    # per process) and readiness is asked of each. `serve --workers N` gives process i
    # process_port + i (0: a free port each), and writes them to <state_dir>/prometheus-gateways.json.
    process_port: int = 0
    # Public base URL used in Location headers when behind a proxy; empty: derived from the request.
    public_url: str = ""

    # Stream partitions. Fixed for the life of a deployment: upload ids carry their partition.
    partitions: int = 8
    # Embedded Valkey only: AOF fsync policy and memory ceiling. "always" is the policy under
    # which an acknowledged append survives a Valkey or machine crash (docs/architecture.md).
    appendfsync: Literal["everysec", "always", "no"] = "always"
    valkey_maxmemory: str = "2gb"
    # With an external Redis: after each append, WAITAOF numlocal numreplicas before answering.
    waitaof_local: int = 0
    waitaof_replicas: int = 0
    waitaof_timeout_ms: int = 1000
    # WAIT numreplicas (within waitaof_timeout_ms) after each write before answering: the write
    # is then in a replica's memory, so a primary killed the next moment loses nothing once its
    # replica is promoted. Cheaper than waitaof_replicas by three orders of magnitude (a replica
    # reports its AOF fsyncs once a second; docs/architecture.md). `unggah up --cluster` sets 1.
    wait_replicas: int = 0

    # tus limits.
    max_upload_bytes: int = 2 * GiB
    # A PATCH body is committed to the stream in entries of at most this size.
    entry_bytes: int = 1 * MiB
    # A PATCH that carries Upload-Checksum is verified before anything is committed,
    # so it must be held in memory: cap its size (413 above, advertised in OPTIONS).
    checksum_patch_max_bytes: int = 32 * MiB
    upload_ttl_seconds: int = 7 * 24 * 3600
    idempotency_ttl_seconds: int = 24 * 3600
    # A creation whose Idempotency-Key is still in flight for longer than this is
    # treated as finished (its worker died); retries then get the upload it made.
    idempotency_inflight_seconds: int = 60
    # The gateway process that marked a creation in flight keeps a lease on it this long,
    # renewed several times within it while the process lives; a retry after the lease lapsed
    # (the process was killed mid-body) takes the creation over at once (gateway/tus.py).
    idempotency_owner_lease_seconds: float = 5.0

    # Ingest.
    blob_dir: str = ""  # empty: <state_dir>/blobs
    ingest_block_ms: int = 1000
    ingest_read_count: int = 8
    ingest_claim_idle_ms: int = 30_000
    ingest_max_deliveries: int = 5
    ingest_processes: int = 1

    # `unggah up`'s supervisor serves its own /metrics (child restarts, up, last exit code) here:
    # this host only, by default. Port 0: a free one picked at each start, printed and written to
    # <state_dir>/prometheus-targets.json (job unggah-stack).
    stack_metrics_host: str = "127.0.0.1"
    stack_metrics_port: int = 0
    # The auditor (`unggah audit run`) serves its own /metrics (acknowledged data its chain
    # witness finds lost) here. Port 0: a free one, picked by `unggah up` at each start (kept
    # across the auditor's restarts, printed and written to prometheus-targets.json as job
    # unggah-audit), or by the kernel for an auditor started alone (logged).
    audit_metrics_host: str = "127.0.0.1"
    audit_metrics_port: int = 0

    # Access: "tokens" requires a bearer token on every request except OPTIONS, health and
    # metrics; "off" serves one open tenant, "public" (local trials and benchmarks only).
    auth: Literal["tokens", "off"] = "tokens"
    # Ed25519 key that signs receipts; empty: <state_dir>/receipt-key.pem, created on first use.
    receipt_key_file: str = ""
    # The election's TOML (windows, extensions, thresholds). Empty: no window is enforced.
    election_file: str = ""
    # Validation results (SQLite, WAL; written by `unggah validate`, read by the gateway).
    # Empty: <state_dir>/results.sqlite3.
    results_db: str = ""

    # Admission control (per gateway process unless said otherwise).
    # Pieces read and committed at once; further ones wait in per-tenant queues served in turn.
    append_slots: int = 16
    # Of those, pieces whose bodies are being read and checksummed at once: the gateway's own
    # CPU work. Few keeps every event-loop turn short, so a refusal is answered within a turn
    # or two; a piece waiting for Redis to commit it holds no read slot, so group commit under
    # appendfsync always still has all append_slots (at most append_slots take effect).
    append_read_slots: int = 2
    # While several tenants are active, pieces each tenant may have in progress at once.
    append_tenant_slots: int = 1
    # Waiting pieces per process: a memory bound on waiters (each holds a few KiB in the
    # gateway, gateway/reads.py). Creation control keeps the queue far below it.
    append_queue: int = 4096
    # The longest a piece waits for its turn before it is refused. Waiting is the default: a
    # refused append costs a standard client one of its few retries. Chosen below the shortest
    # timeout a real client or proxy puts on a request whose body is not being read (nginx's
    # 60 s proxy timeouts; tus-js-client, tuspy and browsers set none): docs/operations.md.
    append_max_wait_ms: int = 45_000
    # New uploads are held while the work already admitted would take longer than this (the
    # active uploads' bytes still to come over the measured commit rate), and let in as it
    # drains; so admitted work stays well inside append_max_wait_ms even when uploads arrive
    # faster than they can be served.
    create_target_wait_ms: int = 5_000
    # A creation held this long is refused (503, Retry-After): arrivals stayed beyond capacity
    # all that while. Nothing was created, so nothing is lost.
    create_hold_ms: int = 30_000
    # Buffered bytes (all partitions) the gateway lets the stream hold. Above high_ratio of it
    # new uploads are refused; at the budget appends are refused too. 0: 75% of valkey_maxmemory.
    buffer_budget_bytes: int = 0
    buffer_high_ratio: float = 0.8
    # Per-connection read-ahead (aiohttp read_bufsize). Small keeps waiting requests from
    # consuming CPU outside their fair turn; large reads long bodies with fewer wake-ups.
    read_buffer_bytes: int = 16 * KiB
    # Bytes taken off a socket per read (gateway/reads.py). Without this cap the event loop
    # reads up to 256,000 at once, past read_buffer_bytes. 0: the loop's own read size.
    read_chunk_bytes: int = 16 * KiB

    # What comes before a request (gateway/reads.py). The longest request line or header the
    # gateway reads (Upload-Metadata included; advertised as Unggah-Max-Header-Bytes), and how
    # many headers; beyond either the answer is 431 headers-too-large.
    max_header_bytes: int = 16 * KiB
    max_headers: int = 100
    # A request head must be complete this long after its first byte (nginx allows 60 s).
    header_timeout_seconds: float = 30.0
    # A connection with no request in progress is closed after this long (nginx's 75 s).
    idle_timeout_seconds: float = 75.0
    # Connections open that have not yet shown a valid token; a new one beyond this is closed at
    # once, so a crowd of idle or tokenless connections cannot take the gateway's descriptors.
    max_unauthenticated_connections: int = 4096

    # A request body from which no byte arrives for this long is given up (408, then the
    # connection is closed; every byte that did arrive is kept): a stalled client must not hold
    # its reserved memory for ever.
    body_idle_seconds: float = 60.0
    # ... and so is one that brings fewer bytes a second than this over a whole body_idle_seconds:
    # a byte every few seconds is not an upload. 64 B/s is far below any mobile link that works.
    body_min_bytes_per_second: float = 64.0

    # Graceful shutdown (SIGTERM): the gateway turns unready, refuses new uploads and keeps
    # listening while appends are in flight, at least drain and at most grace seconds.
    shutdown_drain_seconds: float = 0.0
    shutdown_grace_seconds: float = 10.0

    log_level: str = "INFO"

    @property
    def blob_path(self) -> Path:
        return Path(self.blob_dir or os.path.join(self.state_dir, "blobs"))

    @property
    def results_path(self) -> Path:
        return Path(self.results_db or os.path.join(self.state_dir, "results.sqlite3"))

    @property
    def receipt_key_path(self) -> Path:
        return Path(self.receipt_key_file or os.path.join(self.state_dir, "receipt-key.pem"))

    @property
    def buffer_budget(self) -> int:
        return self.buffer_budget_bytes or int(parse_bytes(self.valkey_maxmemory) * 0.75)

    @property
    def embedded(self) -> bool:
        return not self.redis_url


def parse_bytes(text: str) -> int:
    """Valkey-style sizes: 2gb, 512mb, 100kb, or plain bytes."""
    t = text.strip().lower()
    for suffix, mult in (("gb", GiB), ("mb", MiB), ("kb", KiB), ("b", 1)):
        if t.endswith(suffix):
            return int(float(t[: -len(suffix)]) * mult)
    return int(t)


ENV_PREFIX = "UNGGAH_"


def _env_overrides(env: dict[str, str]) -> dict[str, object]:
    fields = {f.name: f for f in msgspec.structs.fields(Settings)}
    out: dict[str, object] = {}
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        name = key[len(ENV_PREFIX):].lower()
        if name not in fields:
            raise ConfigError(f"{key} is not a setting; known: " + ", ".join(sorted(ENV_PREFIX + n.upper() for n in fields)))
        out[name] = raw
    return out


class ConfigError(ValueError):
    pass


def load(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None, **overrides: object) -> Settings:
    """Build the settings. `path` (or $UNGGAH_CONFIG) names an optional TOML file."""
    env = dict(os.environ if env is None else env)
    data: dict[str, object] = {}
    path = path or env.get(ENV_PREFIX + "CONFIG")
    if path:
        try:
            with open(path, "rb") as f:
                data.update(tomllib.load(f))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from e
    data.update(_env_overrides(env))
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        # strict=False lets environment strings convert to ints.
        settings = msgspec.convert(data, Settings, strict=False)
    except msgspec.ValidationError as e:
        raise ConfigError(f"invalid setting: {e}") from e
    _check(settings)
    return settings


def _check(s: Settings) -> None:
    if not 1 <= s.partitions <= keys.MAX_PARTITIONS:
        raise ConfigError(f"partitions must be between 1 and {keys.MAX_PARTITIONS}")
    if s.entry_bytes < 4 * KiB:
        raise ConfigError("entry_bytes must be at least 4096")
    if s.checksum_patch_max_bytes < s.entry_bytes:
        raise ConfigError("checksum_patch_max_bytes must be at least entry_bytes")
    if not 0 < s.buffer_high_ratio <= 1:
        raise ConfigError("buffer_high_ratio must be in (0, 1]")
    if s.append_slots < 1 or s.append_read_slots < 1 or s.append_queue < 0:
        raise ConfigError("append_slots and append_read_slots must be >= 1, and append_queue >= 0")
    if s.max_header_bytes < 1 * KiB or s.max_headers < 16:
        raise ConfigError("max_header_bytes must be at least 1024 and max_headers at least 16")
    if s.header_timeout_seconds < 0 or s.idle_timeout_seconds <= 0 or s.max_unauthenticated_connections < 1:
        raise ConfigError("header_timeout_seconds must be >= 0 (0: none), idle_timeout_seconds > 0 and "
                          "max_unauthenticated_connections >= 1")
    if s.read_chunk_bytes < 0 or 0 < s.read_chunk_bytes < 1 * KiB:
        raise ConfigError("read_chunk_bytes must be 0 (the event loop's own read size) or at least 1024")
    if not 0 < s.create_target_wait_ms < s.append_max_wait_ms:
        raise ConfigError("create_target_wait_ms must be above 0 and below append_max_wait_ms "
                          "(admitted work must be served before it would be refused)")
    if s.create_hold_ms < 0:
        raise ConfigError("create_hold_ms must be >= 0")
    if not 0.1 <= s.idempotency_owner_lease_seconds <= max(s.idempotency_inflight_seconds, 0.1):
        raise ConfigError("idempotency_owner_lease_seconds must be at least 0.1 and at most "
                          "idempotency_inflight_seconds (beyond it a creation no longer counts as in flight)")
    if s.redis_cluster and not s.redis_url:
        raise ConfigError("redis_cluster needs redis_url: one seed node of the cluster, such as "
                          "redis://10.0.0.5:6379 (`unggah up --cluster` starts a local one and sets both)")
    try:
        parse_bytes(s.valkey_maxmemory)
    except ValueError:
        raise ConfigError("valkey_maxmemory must be a size such as 2gb or 512mb") from None
    if not 1 <= s.workers <= 256:
        raise ConfigError("workers must be between 1 and 256 (gateway processes on one port)")
    if not 0 <= s.process_port <= 65535 - (s.workers - 1):
        raise ConfigError("process_port must be 0 (none; a free one each with workers > 1) or a port with "
                          "room for one per worker above it")
    if not 0 <= s.stack_metrics_port <= 65535:
        raise ConfigError("stack_metrics_port must be between 0 (a free port) and 65535")
    if not 0 <= s.audit_metrics_port <= 65535:
        raise ConfigError("audit_metrics_port must be between 0 (a free port) and 65535")
    if s.ingest_block_ms >= 10_000:
        # Blocking reads must stay well under the client socket timeout (see buffer/connection.py).
        raise ConfigError("ingest_block_ms must be below 10000")
