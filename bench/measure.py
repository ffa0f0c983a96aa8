"""What the benchmark reads from the kernel and Redis about the servers under test; machine speed."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import redis


@dataclass(frozen=True)
class ProcStats:
    """A process's resident memory (VmRSS) and how many client connections it holds.

    ``sockets`` counts the process's sockets accepted on ``port`` (the service's), not its
    own connections to Redis and MongoDB.
    """

    rss_kb: int
    sockets: int

    @classmethod
    def read(cls, pid: int, port: int) -> ProcStats:
        return cls.read_many([pid], port)[pid]

    @classmethod
    def read_many(cls, pids: list[int], port: int) -> dict[int, ProcStats]:
        """Each process's figures, the machine's TCP table read once (80,000 lines at 40,000
        loopback connections)."""
        accepted = {inode for local, remote, inode in _tcp_table() if local == port and remote != 0}
        return {pid: cls(_rss_kb(pid), len(socket_inodes(pid) & accepted)) for pid in pids}


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far (/proc/<pid>/stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / tick


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _tcp_table() -> list[tuple[int, int, int]]:
    """(local port, remote port, inode) of every TCP socket on the machine."""
    rows = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, remote, inode = parts[1], parts[2], int(parts[9])
            rows.append((int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), inode))
    return rows


def redis_connections_by_pid(redis_url: str, pids: list[int]) -> dict[str, int]:
    """How many of Redis's clients (``CLIENT LIST``) each process holds.

    A client's address in CLIENT LIST is the process's local port; /proc/net/tcp maps the
    port to a socket inode and /proc/<pid>/fd tells which process holds that inode.
    """
    url = urlparse(redis_url)
    client = redis.Redis(host=url.hostname, port=url.port or 6379)
    try:
        listed = client.client_list()
    finally:
        client.close()
    ports = {int(c["addr"].rsplit(":", 1)[1]) for c in listed}
    inodes = {inode for local, remote, inode in _tcp_table() if remote == url.port and local in ports}
    counts = {str(pid): len(socket_inodes(pid) & inodes) for pid in pids}
    counts["total_clients"] = len(listed)
    return counts


def speed_probe_ms() -> float:
    """Milliseconds for a fixed pure-Python loop, best of 3: how fast this machine is now.

    The same 2-core machine kind has run from about 230 to 400 ms here, hours apart (other
    tenants), and every figure of a run moves with it; the report prints it beside the
    load average so runs on different days can be read against each other."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        sum(range(10_000_000))
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)
