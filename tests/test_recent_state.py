"""The recent list (``/api/recent``, the dashboard overview) shows today's read state."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import requests
from flask import Flask

from tests.support import LiveServer

ADMIN, PASSWORD = "admin", "correct horse battery"


def _recent(server: LiveServer) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {server.stack.api_key}"}
    resp = requests.get(server.url + "/api/recent", headers=headers, timeout=5)
    assert resp.status_code == 200
    return {n["id"]: n for n in resp.json()["notifications"]}


def test_read_notifications_show_as_read(live: Callable[..., Any]) -> None:
    server = live(workers=1, ADMIN_USERNAME=ADMIN, ADMIN_PASSWORD=PASSWORD)
    kept, seen = server.notify("rita", "still unread"), server.notify("rita", "read it")
    assert _recent(server)[seen["id"]]["read"] is False
    marked = server.post("/api/users/rita/read", {"ids": [seen["id"]]})
    assert marked.json() == {"updated": 1}
    recent = _recent(server)
    assert recent[seen["id"]]["read"] is True and recent[kept["id"]]["read"] is False

    browser = requests.Session()
    login = browser.get(server.url + "/dashboard/login", timeout=5).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', login)
    assert token
    form = {"username": ADMIN, "password": PASSWORD, "csrf_token": token[1]}
    page = browser.post(server.url + "/dashboard/login", data=form, timeout=5).text  # -> overview
    states = {
        item_id: state
        for state, item_id in re.findall(r'<li class="notif ([a-z-]+)" data-id="([0-9a-f]{24})"', page)
    }
    assert states == {seen["id"]: "is-read", kept["id"]: "is-unread"}, page


def test_no_state_rather_than_a_stale_one_without_mongodb(
    make_app: Callable[..., Flask], own_mongo: Any, auth: dict[str, str], stack: Any
) -> None:
    database = stack.mongo_uri.rsplit("/", 1)[1]
    app = make_app(MONGO_URI=own_mongo.url.rstrip("/") + "/" + database, MONGO_TIMEOUT_MS=500)
    client = app.test_client()
    created = client.post("/api/notifications", json={"user_id": "sam", "message": "m"}, headers=auth)
    assert created.status_code == 201
    own_mongo.stop()
    recent = client.get("/api/recent", headers=auth)
    assert recent.status_code == 200
    [note] = recent.get_json()["notifications"]
    assert note["id"] == created.get_json()["id"] and "read" not in note
