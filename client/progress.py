"""Progress lines: per file and overall, with rates and ETA.

On a terminal the block is redrawn in place at most 4 times a second; otherwise
(a log file, CI) plain lines are printed every few seconds, and one line per
finished file when there are few files.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def human_eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--:--"
    s = int(seconds + 0.5)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Rate:
    """Bytes per second over a sliding window of recent samples."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self.samples: list[tuple[float, int]] = []

    def add(self, t: float, total: int) -> None:
        self.samples.append((t, total))
        while len(self.samples) > 2 and self.samples[0][0] < t - self.window:
            self.samples.pop(0)

    def value(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


@dataclass
class FileProgress:
    name: str
    size: int
    done: int = 0  # acknowledged by the server
    start_offset: int = 0  # already on the server when this run started
    started: float = field(default_factory=time.monotonic)
    finished: bool = False

    def line(self, now: float) -> str:
        sent = self.done - self.start_offset
        el = max(1e-6, now - self.started)
        rate = sent / el
        pct = 100.0 * self.done / self.size if self.size else 100.0
        eta = (self.size - self.done) / rate if rate > 0 else None
        return (f"  {self.name[:40]:<40} {pct:5.1f}%  {human_bytes(self.done):>9} / {human_bytes(self.size):<9}"
                f" {human_bytes(rate):>9}/s  ETA {human_eta(eta)}")


class ProgressBoard:
    def __init__(self, out: TextIO | None = None, enabled: bool = True, interval: float | None = None) -> None:
        self.out = out or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.out, "isatty") and self.out.isatty()
        self.interval = interval if interval is not None else (0.25 if self.tty else 5.0)
        self.files: dict[str, FileProgress] = {}
        self.total_bytes = 0
        self.total_files = 0
        self.done_files = 0
        self.acked = 0  # bytes acknowledged, including what was on the server before
        self.start_acked = 0
        self.rate = Rate()
        self.t0 = time.monotonic()
        self._drawn = 0
        self._task: asyncio.Task | None = None
        self.phase = "upload"

    # -- updates from the uploader

    def plan(self, files: int, total_bytes: int) -> None:
        self.total_files = files
        self.total_bytes = total_bytes

    def begin(self, key: str, name: str, size: int, offset: int) -> None:
        fp = FileProgress(name, size, offset, offset)
        self.files[key] = fp
        self.acked += offset
        self.start_acked += offset

    def advance(self, key: str, offset: int) -> None:
        fp = self.files.get(key)
        if fp is None:
            return
        if offset > fp.done:
            self.acked += offset - fp.done
            fp.done = offset

    def already(self, size: int) -> None:
        """A file that was complete before this run."""
        self.acked += size
        self.start_acked += size
        self.done_files += 1

    def finish(self, key: str, ok: bool, note: str = "") -> None:
        fp = self.files.pop(key, None)
        self.done_files += 1
        if fp is not None and self.enabled and not self.tty and self.total_files <= 50:
            now = time.monotonic()
            sent = fp.done - fp.start_offset
            rate = sent / max(1e-6, now - fp.started)
            self._print(f"{'sent' if ok else 'FAILED'}: {fp.name} ({human_bytes(fp.size)}"
                        f"{f', resumed at {human_bytes(fp.start_offset)}' if fp.start_offset else ''}"
                        f", {human_bytes(rate)}/s){' - ' + note if note else ''}")

    # -- drawing

    def overall(self) -> str:
        now = time.monotonic()
        self.rate.add(now, self.acked)
        r = self.rate.value()
        if self.done_files >= self.total_files:  # finished: the average over the run
            r = (self.acked - self.start_acked) / max(1e-6, now - self.t0)
        left = self.total_bytes - self.acked
        eta = left / r if r > 0 else None
        pct = 100.0 * self.acked / self.total_bytes if self.total_bytes else 100.0
        return (f"[unggah push] {self.done_files}/{self.total_files} files  {pct:5.1f}%  "
                f"{human_bytes(self.acked)} / {human_bytes(self.total_bytes)}  {human_bytes(r)}/s  "
                f"ETA {human_eta(eta)}  elapsed {human_eta(now - self.t0)}")

    def draw(self) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        lines = [self.overall()] + [fp.line(now) for fp in list(self.files.values())[:12]]
        if self.tty:
            if self._drawn:
                self.out.write(f"\x1b[{self._drawn}F\x1b[J")
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()
            self._drawn = len(lines)
        else:
            self._print("\n".join(lines))

    def _print(self, text: str) -> None:
        if self.tty and self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0
        self.out.write(text + "\n")
        self.out.flush()

    def message(self, text: str) -> None:
        if self.enabled:
            self._print(text)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.draw()

    def start(self) -> None:
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None
        if self.enabled:
            self.draw()
            self._drawn = 0
