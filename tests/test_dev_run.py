"""The README's run command, ``python3 dev.py run``, as a newcomer uses it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from tools.devservers import find_free_port, port_in_use

ROOT = Path(__file__).resolve().parent.parent


def start(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "dev.py", "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def read_banner(proc: subprocess.Popen, timeout: float = 90) -> str:
    """Read output until the banner's last line; fail with what was printed otherwise."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Ctrl-C stops everything" in line:
            return "".join(lines)
    raise AssertionError("no banner:\n" + "".join(lines))


def stop(proc: subprocess.Popen) -> str:
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    return out


def test_run_starts_everything_serves_and_stops_cleanly(tmp_path):
    port, redis_port, mongo_port = find_free_port(), find_free_port(), find_free_port()
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if k not in ("MONGO_URI", "REDIS_URL", "API_KEYS", "SECRET_KEY")
        },
        "PORT": str(port),
        "DEV_REDIS_PORT": str(redis_port),
        "DEV_MONGO_PORT": str(mongo_port),
        "DEV_DATA_DIR": str(tmp_path / "devdata"),
        "WEB_CONCURRENCY": "1",
    }
    keys = []
    for _ in range(2):  # running it twice in a row works, with the same dev credentials
        proc = start(env)
        try:
            banner = read_banner(proc)
            key = re.search(r"API key:\s+(\S+)", banner).group(1)
            assert re.search(r"login admin / \S+", banner)
            keys.append(key)
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while requests.get(url + "/readyz", timeout=5).status_code != 200:
                assert time.monotonic() < deadline, "never ready"
                time.sleep(0.2)
            resp = requests.post(
                url + "/api/notifications",
                json={"user_id": "alice", "message": "hello"},
                headers={"Authorization": f"Bearer {key}"},
                timeout=10,
            )
            assert resp.status_code == 201
        finally:
            output = stop(proc)
        assert proc.returncode == 0, output
        for p in (port, redis_port, mongo_port):
            assert not port_in_use(p), f"port {p} still served after Ctrl-C"
    assert keys[0] == keys[1]
    assert (tmp_path / "devdata" / "dev.env").exists()


def test_run_refuses_a_taken_port_clearly(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "PORT": str(port), "DEV_DATA_DIR": str(tmp_path / "devdata")}
        proc = subprocess.run(
            [sys.executable, "dev.py", "run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
    assert proc.returncode == 1
    assert f"port {port}" in proc.stderr and "PORT=" in proc.stderr
