"""The audit trail on disk: append-only JSON lines, one hash chain per partition.

Each record is {"seq", "partition", "id", "event", "prev", "hash"}: `id` is the audit
stream entry it came from, `event` the event's fields, `prev` the previous record's
hash and `hash` = sha256 over prev, seq, partition, id and the canonical event.
Changing, removing or reordering any record breaks the chain from that point on,
and `verify` says where. Because every hash covers the partition, a chain found in
another partition's file (files swapped, renamed or copied) breaks at its first
record. What a chain cannot show by itself (records cut from its end, a chain
rewritten whole, a chain file deleted or a whole new one added) shows against heads
kept outside the system: `take_heads` writes every chain's head and the set of
chains, `verify_trail` checks the chains on disk against them, set included.

Format: records written before `partition` existed (format 1: no `partition`
member, hash over prev, seq, id and event only) are still verified, by their own
formula; they cannot show which chain they belong to, so a swap of such chains
shows only against heads. A chain written on by this version continues with
format-2 records; a format-1 record after a format-2 one is refused.
"""

from __future__ import annotations

import collections
import hashlib
import os
import re
from pathlib import Path

import msgspec
import orjson

GENESIS = "0" * 64
CHAIN_NAME = re.compile(r"audit-p(0|[1-9][0-9]*)\.jsonl")


class Record(msgspec.Struct, kw_only=True, omit_defaults=True):
    seq: int
    partition: int | None = None  # None: a format-1 record (no chain identity in its hash)
    id: str
    event: dict[str, str]
    prev: str
    hash: str


def record_hash(prev: str, seq: int, entry_id: str, event: dict[str, str], partition: int | None) -> str:
    body = {"prev": prev, "seq": seq, "id": entry_id, "event": event}
    if partition is not None:
        body["partition"] = partition
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def chain_path(directory: str | os.PathLike[str], partition: int) -> Path:
    return Path(directory) / f"audit-p{partition}.jsonl"


def chain_partition(path: Path) -> int:
    """The partition a chain file is named for; ValueError if it is not named as chains are."""
    m = CHAIN_NAME.fullmatch(Path(path).name)
    if m is None:
        raise ValueError(f"{Path(path).name} is not named as a chain file (audit-p<partition>.jsonl)")
    return int(m.group(1))


def chain_files(directory: str | os.PathLike[str]) -> tuple[dict[int, Path], list[Path]]:
    """({partition: chain file}, files that look like chains but are not named as one is)."""
    chains, strays = {}, []
    for f in sorted(Path(directory).glob("audit-p*.jsonl")):
        try:
            chains[chain_partition(f)] = f
        except ValueError:
            strays.append(f)
    return dict(sorted(chains.items())), strays


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


class ChainMismatch(Exception):
    """A chain file holds another partition's chain: writing on would fork or mix chains."""


class Chain:
    """The writer of one partition's chain. Exactly one process writes a chain."""

    def __init__(self, path: str | os.PathLike[str], partition: int | None = None) -> None:
        self.path = Path(path)
        self.partition = chain_partition(self.path) if partition is None else partition
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
                if rec.partition is not None and rec.partition != self.partition:
                    raise ChainMismatch(f"{self.path} holds partition {rec.partition}'s chain, not partition "
                                        f"{self.partition}'s: chain files were swapped or renamed; run "
                                        "`unggah audit verify`")
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
            h = record_hash(head, seq, entry_id, event, self.partition)
            lines.append(msgspec.json.encode(Record(seq=seq, partition=self.partition, id=entry_id, event=event,
                                                    prev=head, hash=h)))
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


def entry_ms(entry_id: str) -> int:
    """When the buffer wrote a record's stream entry (ms, the buffer server's clock): its id's first part."""
    return _id_key(entry_id)[0]


def tail(path: str | os.PathLike[str], since_ms: int, block: int = 1 << 16) -> list[Record]:
    """The records at the end of a chain whose stream entries were written at `since_ms` or
    later, oldest first (none if there is no chain). Entry ids only rise along a chain, so it is
    read backwards from its end, and only as far as those records go, however long the chain."""
    out: list[Record] = []
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return out
    with f:
        pos = f.seek(0, os.SEEK_END)
        rest = b""
        while pos > 0:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            lines = (f.read(step) + rest).split(b"\n")
            # The first line may begin in the block before this one: kept for it.
            rest = lines.pop(0) if pos > 0 else b""
            for line in reversed(lines):
                if not line.strip():
                    continue
                rec = msgspec.json.decode(line, type=Record)
                if entry_ms(rec.id) < since_ms:
                    return out[::-1]
                out.append(rec)
    return out[::-1]


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
    """Every chain's head and the set of chains, as `unggah audit heads` prints them. `chains`
    (how many, the partitions listed in `heads`) is absent from heads taken before it existed."""
    taken_at: str  # UTC, ISO 8601
    chains: int | None = None
    heads: list[Head]


class HeadsError(ValueError):
    pass


def heads(directory: str | os.PathLike[str], partitions: list[int]) -> list[Head]:
    out = []
    for p in partitions:
        rec = last_record(chain_path(directory, p))
        out.append(Head(partition=p, seq=rec.seq if rec else 0, hash=rec.hash if rec else GENESIS))
    return out


def take_heads(directory: str | os.PathLike[str], partitions: list[int], taken_at: str) -> Heads:
    """The heads of these partitions' chains and of every chain on disk."""
    ps = sorted(set(partitions) | set(chain_files(directory)[0]))
    return Heads(taken_at=taken_at, chains=len(ps), heads=heads(directory, ps))


def load_heads(data: bytes) -> Heads:
    """Heads kept earlier; HeadsError if they are not heads, or list a chain twice or not `chains` of them."""
    try:
        kept = msgspec.json.decode(data, type=Heads)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise HeadsError(f"not audit heads: {e}") from None
    ps = [h.partition for h in kept.heads]
    if len(set(ps)) != len(ps):
        raise HeadsError("the heads list a chain twice")
    if kept.chains is not None and kept.chains != len(ps):
        raise HeadsError(f"the heads say {kept.chains} chains but list {len(ps)}: they were altered")
    return kept


def verify(path: str | os.PathLike[str], pinned: Head | None = None,
           partition: int | None = None) -> tuple[int, str, ChainProblem | None]:
    """(records checked, head hash, first problem or None). `pinned`: a head kept earlier for
    this chain, which it must still pass through. `partition`: whose chain it must be (by
    default the one the file is named for)."""
    if partition is None:
        partition = chain_partition(Path(path))
    n, head, problem = _verify(path, pinned, partition)
    if problem is None and pinned is not None and n < pinned.seq:
        problem = ChainProblem(n + 1, f"the chain ends at record {n}, but a head kept earlier is at record "
                                      f"{pinned.seq}: records were removed from its end")
    return n, head, problem


def _verify(path, pinned: Head | None, partition: int) -> tuple[int, str, ChainProblem | None]:
    prev, seq, last_id, format2 = GENESIS, 0, "0-0", False
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = msgspec.json.decode(line, type=Record)
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                return seq, prev, ChainProblem(n, f"not a record: {e}")
            if rec.partition is not None and rec.partition != partition:
                return seq, prev, ChainProblem(n, f"a record of partition {rec.partition}'s chain in partition "
                                                  f"{partition}'s file: chain files were swapped, renamed or copied")
            if rec.partition is None and format2:
                return seq, prev, ChainProblem(n, "a record without its partition after records with it: the "
                                                  "record was altered")
            if rec.seq != seq + 1:
                return seq, prev, ChainProblem(n, f"sequence jumps from {seq} to {rec.seq}: records were removed "
                                                  "or reordered")
            if rec.prev != prev:
                return seq, prev, ChainProblem(n, "does not link to the record before it: a record was removed, "
                                                  "inserted or reordered")
            if record_hash(rec.prev, rec.seq, rec.id, rec.event, rec.partition) != rec.hash:
                return seq, prev, ChainProblem(n, "its hash does not match its contents: the record was altered")
            if _id_key(rec.id) <= _id_key(last_id):
                return seq, prev, ChainProblem(n, "entry ids go backwards: records were reordered")
            if pinned is not None and rec.seq == pinned.seq and rec.hash != pinned.hash:
                return seq, prev, ChainProblem(n, "differs from the head kept earlier for this record: the chain "
                                                  "was rewritten up to here")
            prev, seq, last_id = rec.hash, rec.seq, rec.id
            format2 = format2 or rec.partition is not None
    return seq, prev, None


class ChainReport(msgspec.Struct):
    name: str  # the chain file's name
    ok: bool
    text: str  # what to print after the name


def verify_trail(directory: str | os.PathLike[str], kept: Heads | None = None) -> list[ChainReport]:
    """Every chain in `directory`, checked; with heads kept earlier also the set of chains: a
    chain they list (with records) that is missing, or one on disk they do not list, is a problem."""
    chains, strays = chain_files(directory)
    pins = {h.partition: h for h in kept.heads} if kept is not None else {}
    out = [ChainReport(f.name, False, "NOT A CHAIN: named like one but not audit-p<partition>.jsonl; no chain "
                                      "of this trail is kept under this name (planted, or renamed?)")
           for f in strays]
    for p in sorted(pins.keys() - chains.keys()):
        if pins[p].seq > 0:
            out.append(ChainReport(chain_path(directory, p).name, False,
                                   f"MISSING, but a head kept earlier is at record {pins[p].seq}"))
    for p, f in chains.items():
        if kept is not None and p not in pins:
            listed = ", ".join(f"p{q}" for q in sorted(pins)) or "none"
            out.append(ChainReport(f.name, False, f"NOT IN HEADS: the heads kept earlier list {len(pins)} chains "
                                                  f"({listed}), not this one: a chain was added since they were "
                                                  "taken (planted, or the partitions were increased)"))
            continue
        n, head, problem = verify(f, pins.get(p), p)
        if problem:
            out.append(ChainReport(f.name, False, f"BROKEN at line {problem.line}: {problem.problem} ({n} records "
                                                  "verified before it)"))
        else:
            out.append(ChainReport(f.name, True, f"ok, {n} records, head {head}"))
    return out


def read(path: str | os.PathLike[str]):
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield msgspec.json.decode(line, type=Record)
