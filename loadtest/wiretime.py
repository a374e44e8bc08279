"""How long the gateway took to answer, read off the wire rather than off a client's clock.

A client's own timings include its own queueing: a busy load generator reads a response
late. tcpdump stamps each packet as it crosses the loopback interface, so the time from a
request's first packet to its answer's first packet is the gateway's alone (kernel included).
Only the first packet of each request (payload starting "PATC") and of each answer
("HTTP") is copied out of the kernel, so the capture costs little beside the load.

    with capture(port, path):            # tcpdump running, stopped by its PID
        ... load ...
    times = answer_times(path, port, since, until)   # {status: [seconds, ...]}

Needs tcpdump (Debian: apt-get install tcpdump) and the right to capture (root).
"""

from __future__ import annotations

import collections
import shutil
import signal
import struct
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from unggah.processes import stop

# First four payload bytes, as BPF sees them: "PATC" (a PATCH request), "HTTP" (an answer).
PATC, HTTP = 0x50415443, 0x48545450
PAYLOAD = "tcp[((tcp[12]&0xf0)>>2):4]"


def available() -> str | None:
    """Why a capture cannot run here, or None."""
    if shutil.which("tcpdump") is None:
        return "tcpdump not found (Debian: apt-get install tcpdump)"
    return None


@contextmanager
def capture(port: int, path: Path):
    flt = f"tcp port {port} and ({PAYLOAD} = {PATC:#x} or {PAYLOAD} = {HTTP:#x})"
    # --immediate-mode: without it the kernel hands packets over in blocks, about once a
    # second, and the last block of a capture is lost when tcpdump stops.
    proc = subprocess.Popen(["tcpdump", "-i", "lo", "-n", "-s", "128", "--immediate-mode", "-U", "-w", str(path), flt],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # tcpdump says "listening on lo" once the filter is in place.
        line = proc.stderr.readline().decode(errors="replace")
        if "listening" not in line:
            raise RuntimeError(f"tcpdump did not start: {line.strip() or proc.wait(5)}")
        yield
    finally:
        time.sleep(0.2)  # let the last answers through
        # SIGINT, tcpdump's own way to end a capture, writing out what it still holds.
        stop(proc, signal.SIGINT, timeout=10)


def packets(path: Path):
    """(time, src port, dst port, first payload bytes) of each IPv4/TCP packet in a pcap file."""
    data = path.read_bytes()
    if len(data) < 24:
        return
    magic = struct.unpack_from("<I", data)[0]
    scale = {0xA1B2C3D4: 1e-6, 0xA1B23C4D: 1e-9}.get(magic)  # microsecond or nanosecond stamps
    if scale is None:
        raise ValueError(f"{path}: not a little-endian pcap file (magic {magic:#x})")
    linktype = struct.unpack_from("<I", data, 20)[0]
    link_len = {1: 14, 113: 16, 0: 4}.get(linktype)  # Ethernet (Linux lo), Linux cooked, BSD loopback
    if link_len is None:
        raise ValueError(f"{path}: link type {linktype} not understood")
    pos = 24
    while pos + 16 <= len(data):
        sec, frac, incl, _ = struct.unpack_from("<IIII", data, pos)
        pkt = data[pos + 16: pos + 16 + incl]
        pos += 16 + incl
        ip = pkt[link_len:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        tcp = ip[(ip[0] & 0x0F) * 4:]
        if len(tcp) < 20:
            continue
        sport, dport = struct.unpack_from("!HH", tcp)
        yield sec + frac * scale, sport, dport, tcp[(tcp[12] >> 4) * 4:][:12]


def answer_times(path: Path, port: int, since: float = 0.0, until: float = float("inf")) -> dict[int, list[float]]:
    """Per answer status: seconds from a request's first packet to its answer's first packet,
    for requests sent in [since, until) (Unix time: the load generator's measured window).
    HTTP/1.1 without pipelining: on each connection, answers come in the order of requests."""
    pending: dict[int, collections.deque[float]] = collections.defaultdict(collections.deque)
    out: dict[int, list[float]] = collections.defaultdict(list)
    for t, sport, dport, head in packets(path):
        if dport == port and head.startswith(b"PATC"):
            pending[sport].append(t)
        elif sport == port and head.startswith(b"HTTP/1.1 ") and pending[dport]:
            sent = pending[dport].popleft()
            try:
                status = int(head[9:12])
            except ValueError:
                continue
            if since <= sent < until:
                out[status].append(t - sent)
    return dict(out)
