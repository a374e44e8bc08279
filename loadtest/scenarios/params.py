"""Rehearsal parameters, free of Locust and gevent so the runner can import them
without monkey-patching its own process. Each field is read from REHEARSE_<NAME>."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, fields

KiB = 1024


@dataclass
class Params:
    """Scenario knobs. Each field is read from REHEARSE_<NAME> (upper case)."""

    scenario: str = "deadline-rush"
    out: str = "rehearsal-out"
    pairs: int = 8
    operators: int = 3  # per pair
    users: int = 0  # 0: pairs * operators
    rows: int = 20_000  # supporter rows per pair
    rows_per_list: int = 5_000  # rows per CSV file
    row_bytes: int = 150
    scans: int = 100  # scans per pair (B.1-KWK statements and KTP-el)
    scan_bytes: int = 200 * KiB
    chunk: int = 256 * KiB
    # Wall-clock plan (epoch seconds). 0: derived from import time and `duration`.
    start_at: float = 0.0
    close_at: float = 0.0  # no new file is started after this (the server's window closes here)
    end_at: float = 0.0  # the load stops; uploads still open then are "partial"
    duration: float = 60.0
    close_fraction: float = 0.75
    # Surge: ramp (users grow linearly), step (jump), flat (all users from the start).
    surge: str = "ramp"
    surge_share: float = 0.4  # the surge covers this last share of the window before close
    base_share: float = 0.25  # share of the users online before the surge
    think: float = 1.0  # seconds between files (before the surge; a tenth of it during the surge)
    spawn_rate: float = 0.0  # users/s; 0: all at once
    # Network and client behaviour.
    cut_rate: float = 0.0  # share of PATCHes cut mid-body by the client
    stall: float = 0.3  # a cut PATCH stalls up to this long before the connection is dropped
    impatient_share: float = 0.0  # share of clients that retry at once, ignoring Retry-After
    impatient_burst: int = 25  # refusals in a row after which an impatient client gives up a while
    impatient_pause: float = 1.0  # ... this long, then the operator clicks "upload" again
    no_checksum_share: float = 0.0  # share of the polite clients that send no Upload-Checksum
    # Share of operators using tus-js-client with its default options: Retry-After ignored, retries after
    # 0, 1, 3 and 5 s, then the upload is given up (and the verdict fails). What most teams ship.
    tusjs_share: float = 0.5
    timeout: float = 30.0  # client request timeout, s
    probe_after_close: bool = False  # each operator tries one creation after close (expect 403)
    tokens: str = ""  # comma-separated bearer tokens; pair i uses tokens[i % n]
    seed: int = 1

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Params":
        env = os.environ if env is None else env
        p = cls()
        for f in fields(cls):
            raw = env.get("REHEARSE_" + f.name.upper())
            if raw is None or raw == "":
                continue
            if f.type in ("int",):
                value: object = int(float(raw))
            elif f.type in ("float",):
                value = float(raw)
            elif f.type in ("bool",):
                value = raw.strip().lower() in ("1", "true", "yes", "on")
            else:
                value = raw
            setattr(p, f.name, value)
        now = time.time()
        if not p.start_at:
            p.start_at = now
        if not p.end_at:
            p.end_at = p.start_at + p.duration
        if not p.close_at:
            p.close_at = p.start_at + p.close_fraction * (p.end_at - p.start_at)
        if not p.users:
            p.users = p.pairs * p.operators
        return p

    def to_env(self) -> dict[str, str]:
        out = {}
        for k, v in asdict(self).items():
            out["REHEARSE_" + k.upper()] = ("1" if v else "0") if isinstance(v, bool) else str(v)
        return out

    @property
    def token_list(self) -> list[str]:
        return [t.strip() for t in self.tokens.split(",") if t.strip()]


def pair_name(i: int) -> str:
    return f"paslon-{i + 1:02d}"
