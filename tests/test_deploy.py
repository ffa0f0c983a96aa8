"""The deploy recipe works: deploy/nginx.conf in front of two gunicorn instances.

Skipped where nginx is not installed. The config is used as shipped, with only the
addresses, the TLS listener and log paths swapped for local ones.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support import SSEClient, WSClient, require_tool
from tools.devservers import find_free_port

ROOT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


@pytest.fixture(autouse=True)
def _needs_nginx() -> None:
    require_tool(NGINX is not None, "nginx")


def render(conf: str, port: int, upstreams: list[int], logs: Path) -> str:
    conf = re.sub(r"server \{\n    listen 80;.*?\n\}\n", "", conf, count=1, flags=re.S)
    servers = "".join(f"    server 127.0.0.1:{p};\n" for p in upstreams)
    conf = re.sub(r"(    server 10\.0\.0\.\d+:8000[^\n]*\n)+", servers, conf, count=1)
    conf = re.sub(r"listen 443 ssl http2;[^\n]*", f"listen 127.0.0.1:{port};", conf)
    conf = re.sub(r"\n\s*ssl_certificate(_key)? [^\n]*", "", conf)
    conf = conf.replace("allow 10.0.0.0/8;", "allow 10.255.255.0/24;")  # tests come from 127.0.0.1
    return conf.replace("/var/log/nginx/", f"{logs}/")


@pytest.fixture
def nginx(live: Any, tmp_path: Path) -> Any:
    port = find_free_port()
    public = f"http://127.0.0.1:{port}"  # the proxy's URL is the one browsers use
    a = live(PROXY_HOPS="1", HEARTBEAT_SECONDS="1", PUBLIC_URL=public)
    b = live(PROXY_HOPS="1", HEARTBEAT_SECONDS="1", PUBLIC_URL=public)
    site = render((ROOT / "deploy" / "nginx.conf").read_text(), port, [a.port, b.port], tmp_path)
    assert "notify_app" in site and f"127.0.0.1:{a.port}" in site
    (tmp_path / "site.conf").write_text(site)
    temp = " ".join(
        f"{k}_temp_path {tmp_path}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  {temp}\n  include {tmp_path}/site.conf;\n}}\n"
    )
    proc = subprocess.Popen(
        [NGINX, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            if requests.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"nginx did not start: {proc.stderr.read().decode() if proc.stderr else ''}")
        time.sleep(0.05)
    try:
        yield url, a, tmp_path
    finally:
        proc.terminate()
        proc.wait(10)


def test_streams_and_api_through_nginx(nginx: Any) -> None:
    url, instance, logs = nginx
    token = instance.token("edge-user")
    sse = SSEClient(url, token)
    ws = WSClient(url, token, origin=url)
    try:
        assert sse.status == 200
        headers = {"Authorization": f"Bearer {instance.stack.api_key}"}
        for i in range(3):
            resp = requests.post(
                url + "/api/notifications",
                json={"user_id": "edge-user", "message": f"e{i}"},
                headers=headers,
                timeout=5,
            )
            assert resp.status_code == 201
            assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Request-ID"])  # nginx's $request_id
        sse.wait_count(3)
        ws.wait_count(3)
        assert sse.messages() == ws.messages() == ["e0", "e1", "e2"]

        big = requests.post(url + "/api/notifications", data=b"x" * 70_000, headers=headers, timeout=5)
        assert big.status_code == 413
        assert requests.get(url + "/metrics", timeout=5).status_code == 403  # only the monitoring network
    finally:
        sse.close()
        ws.close()
    assert token not in (logs / "notify.access.log").read_text()
