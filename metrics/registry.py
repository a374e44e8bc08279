"""Every metric unggah exposes, defined in one place.

Conventions (https://prometheus.io/docs/practices/naming/): `unggah_` prefix,
base units in the name (`_seconds`, `_bytes`), counters end in `_total`.
Labels are bounded: method, route template (never the raw path), status
code, reason code, partition, entry kind. No per-upload label anywhere; the
tenant label appears only on the per-pair progress gauges.

Metric objects are module globals registered in role registries: a gateway
process serves `GATEWAY`, an ingester serves `INGEST`. Both include the
`COMMON` metrics (validation, per-pair progress, window) so whichever process
runs that code exposes them. `unggah up`'s supervisor serves `STACK` alone
(its children's restarts, up and last exit code; metrics/supervisor.py), and the
auditor `AUDIT` alone (the acknowledged data its chain witness finds lost:
the same ACKED_LOST series as the gateways', from its own target).
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from typing import Iterable

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector,
                               ProcessCollector, disable_created_metrics)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# `_created` series double every counter's cardinality and no query here uses them.
disable_created_metrics()

VERSION = "0.1.0"

# Request latency: small chunks answer in milliseconds; a PATCH's duration includes
# the client sending its body (up to entry_bytes x n), so the tail reaches minutes.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# One buffer commit (Lua APPEND, plus WAITAOF when configured): server-side only.
APPEND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
BATCH_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

_LABEL_OK = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def label(value: object, default: str = "other") -> str:
    """A label value from a code we do not fully control: bounded, or `other`."""
    s = str(value)
    return s if _LABEL_OK.match(s) else default


# --- gateway: HTTP -------------------------------------------------------

HTTP_REQUESTS = Counter(
    "unggah_http_requests_total", "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "code"], registry=None)
HTTP_DURATION = Histogram(
    "unggah_http_request_duration_seconds",
    "Time from request start to the answer, including reading the body, by method and route template.",
    ["method", "route"], buckets=HTTP_BUCKETS, registry=None)
HTTP_IN_FLIGHT = Gauge(
    "unggah_http_requests_in_flight", "HTTP requests being handled now.", registry=None)
REFUSALS = Counter(
    "unggah_refusals_total",
    "Problem responses (status >= 400), by their machine-readable reason (the Unggah-Reason header) and code.",
    ["reason", "code"], registry=None)

# --- gateway: tus and the buffer -------------------------------------------

RECEIVED_BYTES = Counter(
    "unggah_received_bytes_total", "Upload bytes accepted into the buffer (duplicates not counted).",
    registry=None)
APPENDS_ACCEPTED = Counter(
    "unggah_appends_accepted_total",
    "Appends (PATCH, or creation-with-upload with a body) answered with success.", registry=None)
APPENDS_REJECTED = Counter(
    "unggah_appends_rejected_total", "Appends refused, by reason.", ["reason"], registry=None)
UPLOADS_CREATED = Counter(
    "unggah_uploads_created_total", "Uploads created (Idempotency-Key replays not counted).", registry=None)
UPLOADS_TERMINATED = Counter(
    "unggah_uploads_terminated_total", "Incomplete uploads terminated by their client (tus DELETE).",
    registry=None)
BUFFER_APPEND_DURATION = Histogram(
    "unggah_buffer_append_duration_seconds",
    "One buffer commit: the atomic append script, plus WAITAOF when configured.",
    buckets=APPEND_BUCKETS, registry=None)
EVENT_LOOP_LAG = Histogram(
    "unggah_event_loop_lag_seconds",
    "How late the gateway's event loop ran a timer (sampled every 100 ms). Every request, a refusal too, "
    "waits about this long on top of its own work: high means the gateway process is CPU-bound.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1), registry=None)
GC_PAUSE = Histogram(
    "unggah_gc_pause_seconds",
    "How long each of the gateway's garbage collections held its event loop, by generation. Collections of "
    "several ms show up in the event-loop lag and in the time to answer a refusal.",
    ["generation"], buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25), registry=None)
SHUTTING_DOWN = Gauge(
    "unggah_gateway_shutting_down", "1 once the gateway received SIGTERM and is draining.", registry=None)

# --- ingest ----------------------------------------------------------------

INGEST_ENTRIES = Counter(
    "unggah_ingest_entries_total",
    "Stream entries processed and acknowledged, by kind (data, fin, concat, drop).", ["kind"], registry=None)
INGEST_BYTES = Counter(
    "unggah_ingest_bytes_total", "Upload bytes written to the blob store and acknowledged.", registry=None)
INGEST_BATCH_DURATION = Histogram(
    "unggah_ingest_batch_duration_seconds", "Time to process one batch read from a partition.",
    buckets=BATCH_BUCKETS, registry=None)
INGEST_REDELIVERIES = Counter(
    "unggah_ingest_redeliveries_total",
    "Entries processed again: reclaimed from an idle consumer, or this consumer's own pending after a restart.",
    registry=None)
INGEST_DEAD_LETTERS = Counter(
    "unggah_ingest_dead_letters_total", "Entries moved to a dead-letter stream after too many deliveries.",
    registry=None)
INGEST_ERRORS = Counter(
    "unggah_ingest_errors_total", "Processing errors (the entry stays pending and is retried), by reason.",
    ["reason"], registry=None)
UPLOADS_STORED = Counter(
    "unggah_uploads_stored_total", "Uploads whose every byte is stored and verified.", registry=None)
UPLOADS_FAILED = Counter(
    "unggah_uploads_failed_total", "Uploads that ended failed, by reason.", ["reason"], registry=None)
ACKED_LOST = Counter(
    "unggah_acknowledged_lost_total", "Uploads found, after the buffer restarted, to hold less than had been "
    "acknowledged (found by a gateway's witness, or by the auditor's from the audit chain): 'bytes' (the upload is "
    "short), 'upload' (it is gone). Never expected under appendfsync always.",
    ["what"], registry=None)
ACKED_LOST_BYTES = Counter(
    "unggah_acknowledged_lost_bytes_total", "Acknowledged bytes the buffer came back without (their clients must send "
    "them again; statuses say from where).", registry=None)


def count_acknowledged_loss(upload_id: str, tenant: str, acked: int, now: int) -> None:
    """A witness's find (buffer/loss.py OnLoss), counted: the gateways' and the auditor's alike."""
    ACKED_LOST.labels("upload" if now < 0 else "bytes").inc()
    ACKED_LOST_BYTES.inc(acked - max(now, 0))

# --- common: validation, per-pair progress, registration window ---------------

VALIDATION_ROWS = Counter(
    "unggah_validation_rows_total", "Supporter rows validated, by verdict status (MS, BMS, TMS) and reason code.",
    ["status", "reason"], registry=None)
PAIR_SUPPORTERS = Gauge(
    "unggah_pair_supporters", "Supporters counted (MS, distinct NIK) for a candidate pair.", ["tenant"],
    registry=None)
PAIR_MIN_SUPPORT = Gauge(
    "unggah_pair_min_support", "The minimum number of supporters the pair needs.", ["tenant"], registry=None)
PAIR_UNITS_MEETING = Gauge(
    "unggah_pair_units_meeting", "Region units (kab/kota or kecamatan) where the pair has support.", ["tenant"],
    registry=None)
PAIR_MIN_SPREAD = Gauge(
    "unggah_pair_min_spread", "The number of units the pair needs support in.", ["tenant"], registry=None)

# --- stack: `unggah up`'s supervisor (metrics/supervisor.py sets these) ---------

STACK_CHILD_RESTARTS = Counter(
    "unggah_stack_child_restarts_total",
    "Children of `unggah up` started again after they exited, by child (valkey, gateway, ingest-N, validate, "
    "audit).", ["child"], registry=None)
STACK_CHILD_UP = Gauge(
    "unggah_stack_child_up",
    "1 while the child of `unggah up` runs; 0 from when the supervisor sees it exit until it is started again.",
    ["child"], registry=None)
STACK_CHILD_LAST_EXIT_CODE = Gauge(
    "unggah_stack_child_last_exit_code",
    "The exit code of the child's last exit (negative: killed by that signal, -9 SIGKILL); absent until it "
    "first exits.", ["child"], registry=None)


class WindowCollector(Collector):
    """Seconds until the current registration window closes, computed at scrape time
    (a gauge set once would go stale). Absent while no window is known."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closes_at: float | None = None

    def set(self, closes_at: float | None) -> None:
        with self._lock:
            self._closes_at = closes_at

    def describe(self) -> Iterable[GaugeMetricFamily]:
        yield GaugeMetricFamily("unggah_window_close_seconds", "")
        yield GaugeMetricFamily("unggah_window_closes_timestamp_seconds", "")

    def collect(self) -> Iterable[GaugeMetricFamily]:
        with self._lock:
            closes_at = self._closes_at
        if closes_at is None:
            return
        yield GaugeMetricFamily(
            "unggah_window_close_seconds",
            "Seconds until the current registration window closes (negative once it has closed).",
            value=closes_at - time.time())
        yield GaugeMetricFamily(
            "unggah_window_closes_timestamp_seconds",
            "When the current registration window closes, as a Unix time.", value=closes_at)


WINDOW = WindowCollector()


class BuildInfo(Collector):
    """`unggah_build_info{version, role} 1`: which kind of process a target is (gateway, ingest, stack, audit)."""

    def __init__(self, role: str) -> None:
        self.role = role

    def describe(self) -> Iterable[GaugeMetricFamily]:
        yield GaugeMetricFamily("unggah_build_info", "")

    def collect(self) -> Iterable[GaugeMetricFamily]:
        g = GaugeMetricFamily("unggah_build_info", "Always 1; labels name the version and the process role.",
                              labels=["version", "role"])
        g.add_metric([VERSION, self.role], 1)
        yield g

# The buffer budget admission control enforces, when it changes at run time;
# 0 = not set (the gateway reports settings.buffer_budget).
_budget = {"bytes": 0}


# --- setters other packages call ------------------------------------------------

def set_window_close(closes_at: dt.datetime | float | None) -> None:
    """The current registration window's close (aware datetime or Unix seconds); None: no window."""
    if isinstance(closes_at, dt.datetime):
        if closes_at.tzinfo is None:
            raise ValueError("closes_at must be timezone-aware")
        closes_at = closes_at.timestamp()
    WINDOW.set(None if closes_at is None else float(closes_at))


def set_buffer_budget(nbytes: int) -> None:
    """The buffer ceiling admission control enforces (0: unset)."""
    _budget["bytes"] = max(int(nbytes), 0)


def buffer_budget() -> int:
    return _budget["bytes"]


def set_pair_progress(tenant: str, supporters: int, min_support: int, *,
                      units_meeting: int | None = None, min_spread: int | None = None) -> None:
    """A candidate pair's counted supporters against its minimum (and spread, when known)."""
    PAIR_SUPPORTERS.labels(tenant).set(supporters)
    PAIR_MIN_SUPPORT.labels(tenant).set(min_support)
    if units_meeting is not None:
        PAIR_UNITS_MEETING.labels(tenant).set(units_meeting)
    if min_spread is not None:
        PAIR_MIN_SPREAD.labels(tenant).set(min_spread)


def clear_pair_progress(tenant: str | None = None) -> None:
    for g in (PAIR_SUPPORTERS, PAIR_MIN_SUPPORT, PAIR_UNITS_MEETING, PAIR_MIN_SPREAD):
        if tenant is None:
            g.clear()
        else:
            try:
                g.remove(tenant)
            except KeyError:
                pass


def record_validation(status: str, reason: str = "", rows: int = 1) -> None:
    """Count validated rows: status MS/BMS/TMS, reason a code from dukungan.reasons ('' for none)."""
    VALIDATION_ROWS.labels(label(status), label(reason or "none")).inc(rows)


# --- registries ---------------------------------------------------------------

COMMON = [VALIDATION_ROWS, PAIR_SUPPORTERS, PAIR_MIN_SUPPORT, PAIR_UNITS_MEETING, PAIR_MIN_SPREAD, WINDOW]
GATEWAY_METRICS = [HTTP_REQUESTS, HTTP_DURATION, HTTP_IN_FLIGHT, REFUSALS, RECEIVED_BYTES, APPENDS_ACCEPTED,
                   APPENDS_REJECTED, UPLOADS_CREATED, UPLOADS_TERMINATED, BUFFER_APPEND_DURATION, SHUTTING_DOWN,
                   EVENT_LOOP_LAG, GC_PAUSE, ACKED_LOST, ACKED_LOST_BYTES]
INGEST_METRICS = [INGEST_ENTRIES, INGEST_BYTES, INGEST_BATCH_DURATION, INGEST_REDELIVERIES,
                  INGEST_DEAD_LETTERS, INGEST_ERRORS, UPLOADS_STORED, UPLOADS_FAILED]
STACK_METRICS = [STACK_CHILD_RESTARTS, STACK_CHILD_UP, STACK_CHILD_LAST_EXIT_CODE]
AUDIT_METRICS = [ACKED_LOST, ACKED_LOST_BYTES]

# Label values known in advance start at zero, so rate() has a series from the first scrape.
for _generation in ("0", "1", "2"):
    GC_PAUSE.labels(_generation)
for _what in ("bytes", "upload"):
    ACKED_LOST.labels(_what)
for _kind in ("data", "fin", "concat", "drop"):
    INGEST_ENTRIES.labels(_kind)
for _reason in ("sha256-mismatch", "dead-letter"):
    UPLOADS_FAILED.labels(_reason)
for _reason in ("corrupt-entry", "write-failed", "entry-failed"):
    INGEST_ERRORS.labels(_reason)


def collectors(role: str) -> list[Collector]:
    """The metrics a process of this role exposes (the gateway adds its buffer collector)."""
    if role == "stack":  # the supervisor runs none of the upload path's code
        return STACK_METRICS + [BuildInfo(role)]
    if role == "audit":  # the auditor: its chain witness's loss counts (ingest/audit.py)
        return AUDIT_METRICS + [BuildInfo(role)]
    return (GATEWAY_METRICS if role == "gateway" else INGEST_METRICS) + COMMON + [BuildInfo(role)]


def make_registry(role: str, extra: Iterable[Collector] = ()) -> CollectorRegistry:
    """A fresh registry for one process (or one in-process app in tests). The metric
    objects are shared module globals; registering them in several registries is fine."""
    reg = CollectorRegistry(auto_describe=True)
    for c in collectors(role) + list(extra):
        reg.register(c)
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    return reg


def metric_names(cs: Iterable[Collector]) -> set[str]:
    """Every series name the collectors can expose, with the suffixes of their type."""
    names: set[str] = set()
    for c in cs:
        for fam in c.describe():
            if fam.type == "counter":
                names.add(fam.name + "_total")
            elif fam.type == "histogram":
                names.update(fam.name + s for s in ("_bucket", "_sum", "_count"))
            elif fam.type == "info":
                names.add(fam.name + "_info")
            else:
                names.add(fam.name)
    return names
