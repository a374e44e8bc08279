"""The audit trail on disk: append-only JSON lines, one hash chain per partition.

Each record is {"seq", "id", "event", "prev", "hash"}: `id` is the audit stream
entry it came from, `event` the event's fields, `prev` the previous record's hash
and `hash` = sha256 over prev, seq, id and the canonical event. Changing,
removing or reordering any record breaks the chain from that point on, and
`verify` says where. What a chain cannot show by itself (records cut from its end,
a chain rewritten whole) shows against its head kept outside the system: `heads`
writes them, `verify` checks a chain against one.
"""

from __future__ import annotations

import collections
import hashlib
import os
from pathlib import Path

import msgspec
import orjson

GENESIS = "0" * 64


class Record(msgspec.Struct, kw_only=True):
    seq: int
    id: str
    event: dict[str, str]
    prev: str
    hash: str


def record_hash(prev: str, seq: int, entry_id: str, event: dict[str, str]) -> str:
    body = orjson.dumps({"prev": prev, "seq": seq, "id": entry_id, "event": event}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(body).hexdigest()


def chain_path(directory: str | os.PathLike[str], partition: int) -> Path:
    return Path(directory) / f"audit-p{partition}.jsonl"


def chain_partition(path: Path) -> int:
    return int(path.stem.removeprefix("audit-p"))


def last_record(path: Path) -> Record | None:
    if not path.exists():
        return None
    last = None
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                last = line
    return msgspec.json.decode(last, type=Record) if last is not None else None


# The most entries one read hands the auditor (ingest/audit.py reads COUNT 1000): a batch
# redelivered after a crash between fsync and acknowledgement is among the last this many.
REDELIVERY_WINDOW = 1000


class ChainGap(Exception):
    """An entry arrived after later entries were chained: skipping it would lose it."""


class Chain:
    """The writer of one partition's chain. Exactly one process writes a chain."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.seq, self.head, self.last_id = 0, GENESIS, "0-0"
        self.recent: collections.deque[str] = collections.deque(maxlen=REDELIVERY_WINDOW)
        if self.path.exists():
            with open(self.path, "rb") as f:
                tail = collections.deque((line for line in f if line.strip()), maxlen=REDELIVERY_WINDOW)
            for line in tail:
                rec = msgspec.json.decode(line, type=Record)
                self.recent.append(rec.id)
            if tail:
                self.seq, self.head, self.last_id = rec.seq, rec.hash, rec.id

    def append(self, entries: list[tuple[str, dict[str, str]]]) -> int:
        """Append stream entries not yet in the chain (ids above the last one); durable on return.
        Raises ChainGap, changing nothing, for an entry older than the last one and not in the chain."""
        seq, head, last_id = self.seq, self.head, self.last_id
        lines, added = [], []
        for entry_id, event in entries:
            if _id_key(entry_id) <= _id_key(last_id):
                if entry_id in self.recent or entry_id in added:
                    continue  # redelivered after a crash between fsync and acknowledgement
                raise ChainGap(f"audit entry {entry_id} arrived after {last_id} was chained; stopping rather "
                               "than dropping it (its stream keeps it)")
            seq += 1
            h = record_hash(head, seq, entry_id, event)
            lines.append(msgspec.json.encode(Record(seq=seq, id=entry_id, event=event, prev=head, hash=h)))
            head, last_id = h, entry_id
            added.append(entry_id)
        if lines:
            with open(self.path, "ab") as f:
                f.write(b"\n".join(lines) + b"\n")
                f.flush()
                os.fsync(f.fileno())
        self.seq, self.head, self.last_id = seq, head, last_id
        self.recent.extend(added)
        return len(lines)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class ChainProblem(msgspec.Struct):
    line: int
    problem: str


class Head(msgspec.Struct, kw_only=True):
    """Where one partition's chain stood: kept outside the system (the supervisor's copy), it
    lets `verify` see records removed from a chain's end, or a chain rewritten whole."""
    partition: int
    seq: int
    hash: str


class Heads(msgspec.Struct, kw_only=True):
    taken_at: str  # UTC, ISO 8601
    heads: list[Head]


def heads(directory: str | os.PathLike[str], partitions: list[int]) -> list[Head]:
    out = []
    for p in partitions:
        rec = last_record(chain_path(directory, p))
        out.append(Head(partition=p, seq=rec.seq if rec else 0, hash=rec.hash if rec else GENESIS))
    return out


def verify(path: str | os.PathLike[str], pinned: Head | None = None) -> tuple[int, str, ChainProblem | None]:
    """(records checked, head hash, first problem or None). `pinned`: a head kept earlier for
    this chain, which it must still pass through."""
    n, head, problem = _verify(path, pinned)
    if problem is None and pinned is not None and n < pinned.seq:
        problem = ChainProblem(n + 1, f"the chain ends at record {n}, but a head kept earlier is at record "
                                      f"{pinned.seq}: records were removed from its end")
    return n, head, problem


def _verify(path, pinned: Head | None) -> tuple[int, str, ChainProblem | None]:
    prev, seq, last_id = GENESIS, 0, "0-0"
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = msgspec.json.decode(line, type=Record)
            except msgspec.DecodeError as e:
                return seq, prev, ChainProblem(n, f"not a record: {e}")
            if rec.seq != seq + 1:
                return seq, prev, ChainProblem(n, f"sequence jumps from {seq} to {rec.seq}: records were removed "
                                                  "or reordered")
            if rec.prev != prev:
                return seq, prev, ChainProblem(n, "does not link to the record before it: a record was removed, "
                                                  "inserted or reordered")
            if record_hash(rec.prev, rec.seq, rec.id, rec.event) != rec.hash:
                return seq, prev, ChainProblem(n, "its hash does not match its contents: the record was altered")
            if _id_key(rec.id) <= _id_key(last_id):
                return seq, prev, ChainProblem(n, "entry ids go backwards: records were reordered")
            if pinned is not None and rec.seq == pinned.seq and rec.hash != pinned.hash:
                return seq, prev, ChainProblem(n, "differs from the head kept earlier for this record: the chain "
                                                  "was rewritten up to here")
            prev, seq, last_id = rec.hash, rec.seq, rec.id
    return seq, prev, None


def read(path: str | os.PathLike[str]):
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield msgspec.json.decode(line, type=Record)
