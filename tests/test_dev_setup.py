"""What a newcomer meets first: the landing page, the favicon, the demo's own dev token, the
CLI's token against the dev server, and ``python3 dev.py run``'s start-up and its errors."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.browser import page  # noqa: F401
from tests.test_dev_run import read_banner, start, stop
from tools.devservers import find_free_port

ROOT = Path(__file__).resolve().parent.parent
CLEAN = ("MONGO_URI", "REDIS_URL", "API_KEYS", "SECRET_KEY", "APP_ENV", "ADMIN_USERNAME", "ADMIN_PASSWORD")


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k not in CLEAN}, "DEV_DATA_DIR": str(data_dir), **extra}


def test_landing_page_links_dashboard_docs_and_demo(live: Callable[..., Any], tmp_path: Path) -> None:
    server = live(workers=1, APP_ENV="development", DEV_DATA_DIR=str(tmp_path))
    landing = requests.get(server.url + "/", timeout=5)
    assert landing.status_code == 200 and landing.headers["Content-Type"].startswith("text/html")
    links = dict(re.findall(r'<a id="link-(\w+)" href="([^"]+)"', landing.text))
    assert links == {"dashboard": "/dashboard", "docs": "/api/docs", "demo": "/demo"}
    for target in links.values():
        assert requests.get(server.url + target, timeout=5).status_code == 200, target
    icon = requests.get(server.url + "/favicon.ico", timeout=5)
    assert icon.status_code == 200 and icon.content[:4] == b"\x00\x00\x01\x00"  # an ICO file
    assert icon.headers["Content-Type"] in ("image/vnd.microsoft.icon", "image/x-icon")


def test_demo_mints_a_dev_token_only_in_development(live: Callable[..., Any], tmp_path: Path) -> None:
    dev = live(workers=1, APP_ENV="development", DEV_DATA_DIR=str(tmp_path))
    minted = requests.post(dev.url + "/demo/token", json={"user_id": "alice"}, timeout=5)
    assert minted.status_code == 201 and minted.json()["user_id"] == "alice"
    bearer = {"Authorization": f"Bearer {minted.json()['token']}"}
    assert requests.get(dev.url + "/api/me/unread-count", headers=bearer, timeout=5).status_code == 200
    assert requests.post(dev.url + "/demo/token", data="user_id=alice", timeout=5).status_code == 415
    bad = requests.post(dev.url + "/demo/token", json={"user_id": ""}, timeout=5)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "user_id"
    tested = live(workers=1)  # APP_ENV=testing: no such route, no button
    assert requests.post(tested.url + "/demo/token", json={"user_id": "alice"}, timeout=5).status_code == 404
    assert 'id="dev-token"' not in requests.get(tested.url + "/demo", timeout=5).text


@pytest.mark.browser
def test_demo_page_gets_its_own_token_and_goes_live(
    page: Any,  # noqa: F811
    live: Callable[..., Any],
    tmp_path: Path,
) -> None:
    server = live(workers=1, APP_ENV="development", DEV_DATA_DIR=str(tmp_path))
    page.goto(server.url + "/demo")
    page.fill("#dev-user", "dana")
    page.click("#dev-token-button")
    page.wait_for_function("window.demoState.status === 'open'")
    sent = server.notify("dana", "no curl needed")
    page.wait_for_function("id => window.demoState.received.includes(id)", arg=sent["id"])


def test_cli_token_is_accepted_by_the_dev_server(live: Callable[..., Any], tmp_path: Path) -> None:
    """``flask --app wsgi token alice`` signs with the secret in the dev data folder."""
    secret = "dev-folder-secret-0123456789"
    (tmp_path / "dev.env").write_text(f"SECRET_KEY={secret}\nAPI_KEYS=dev-folder-key\n")
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "token", "alice"],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip().splitlines()[-1]
    server = live(workers=1, SECRET_KEY=secret)  # the dev server's secret
    bearer = {"Authorization": f"Bearer {token}"}
    resp = requests.get(server.url + "/api/me/unread-count", headers=bearer, timeout=5)
    assert resp.status_code == 200 and resp.json()["user_id"] == "alice"


def test_data_dir_with_a_missing_parent_is_a_clear_error(tmp_path: Path) -> None:
    data_dir = tmp_path / "no-such-parent" / "devdata"
    proc = subprocess.run(
        [sys.executable, "dev.py", "run"], cwd=ROOT, env=_env(data_dir, PORT=str(find_free_port())),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"DEV_DATA_DIR={data_dir}" in proc.stderr and "does not exist" in proc.stderr
    assert not data_dir.parent.exists()


def test_failed_start_writes_no_credentials(tmp_path: Path) -> None:
    data_dir = tmp_path / "devdata"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = _env(data_dir, PORT=str(taken.getsockname()[1]))
        proc = subprocess.run(
            [sys.executable, "dev.py", "run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
    assert proc.returncode == 1 and "already in use" in proc.stderr
    assert not (data_dir / "dev.env").exists()


def test_banner_comes_when_the_app_answers_and_names_the_real_env_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "elsewhere"
    port = find_free_port()
    env = _env(
        data_dir,
        PORT=str(port),
        DEV_REDIS_PORT=str(find_free_port()),
        DEV_MONGO_PORT=str(find_free_port()),
        WEB_CONCURRENCY="1",
    )
    proc = start(env)
    try:
        banner = read_banner(proc)
        # At once: a worker answers already (the banner used to come when gunicorn's master
        # had bound the port, seconds before a worker accepted anything).
        ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
        assert ready.status_code == 200, ready.text
        assert "is up" in banner
        assert f"Dev credentials live in {data_dir / 'dev.env'}." in banner
        assert (data_dir / "dev.env").exists()
        key = re.search(r"API key:\s+(\S+)", banner)
        assert key and key[1] in (data_dir / "dev.env").read_text()
    finally:
        output = stop(proc)
    assert proc.returncode == 0, output
