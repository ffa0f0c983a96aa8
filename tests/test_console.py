"""The support console's staff actions against real servers: disconnect a user's
connection on whichever instance holds it, test sends with a confirm step, the audit log,
API keys."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import requests

from tests.support import SSEClient, WSClient, wait_until

PASSWORD = "console test password"
STAFF = {"ADMIN_USERNAME": "admin", "ADMIN_PASSWORD": PASSWORD}
FAST = {"PRESENCE_INTERVAL_SECONDS": "0.3", "DASHBOARD_TICK_SECONDS": "0.3"}


class Staff:
    """A signed-in dashboard session (cookie and CSRF token), as a browser holds it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = requests.Session()
        self.csrf = self._token("/dashboard/login")
        resp = self.post("/dashboard/login", username="admin", password=PASSWORD)
        assert resp.status_code == 302, resp.text
        self.csrf = self._token("/dashboard")  # a new session has a new token

    def _token(self, path: str) -> str:
        page = self.get(path).text
        return re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)  # type: ignore[union-attr]

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.http.get(self.url + path, timeout=10, **kw)

    def post(self, path: str, **form: str) -> requests.Response:
        data = {"csrf_token": self.csrf, **form}
        return self.http.post(self.url + path, data=data, timeout=10, allow_redirects=False)


def connection_ids(server: Any, user_id: str) -> dict[str, str]:
    resp = requests.get(
        f"{server.url}/api/users/{user_id}/presence",
        headers={"Authorization": f"Bearer {server.stack.api_key}"},
        timeout=10,
    )
    return {c["transport"]: c["id"] for c in resp.json()["connections"]}


def test_disconnect_closes_a_connection_on_the_instance_that_holds_it(
    live: Callable[..., Any], redis_mode: dict[str, str]
) -> None:
    one = live(INSTANCE_NAME="one", **STAFF, **FAST, **redis_mode)
    two = live(INSTANCE_NAME="two", **FAST, **redis_mode)
    sse = SSEClient(two.url, two.token("dana"))
    ws = WSClient(one.url, one.token("dana"))
    try:
        wait_until(lambda: len(connection_ids(one, "dana")) == 2, timeout=5)
        ids = connection_ids(one, "dana")
        staff = Staff(one.url)
        page = staff.get("/dashboard/users/dana").text
        assert ids["sse"] in page and ids["ws"] in page and "two · " in page and "one · " in page

        refused = staff.http.post(
            one.url + "/dashboard/users/dana/disconnect", data={"connection": ids["sse"]}
        )
        assert refused.status_code == 403  # no CSRF token
        assert not sse.closed.is_set()

        # The SSE stream on the other instance ends with a last event saying why.
        resp = staff.post("/dashboard/users/dana/disconnect", connection=ids["sse"])
        assert resp.status_code == 302 and resp.headers["Location"].endswith("/dashboard/users/dana")
        assert sse.closed.wait(5)
        assert sse.events[-1] == {
            "type": "disconnected",
            "id": None,
            "data": {"reason": "disconnected by support staff"},
        }
        assert f"Connection {ids['sse']} closed." in staff.get("/dashboard/users/dana").text
        assert connection_ids(two, "dana") == {"ws": ids["ws"]}  # gone from presence at once

        # The WebSocket, with close code 4000.
        staff.post("/dashboard/users/dana/disconnect", connection=ids["ws"])
        assert ws.closed.wait(5)
        assert (ws.close_code, ws.close_reason) == (4000, "disconnected by support staff")
        wait_until(lambda: connection_ids(one, "dana") == {}, timeout=5)

        staff.post("/dashboard/users/dana/disconnect", connection=ids["ws"])
        assert "the user has no such open connection" in staff.get("/dashboard/users/dana").text

        audit = staff.get("/dashboard/audit?target=dana").text
        assert audit.count('data-action="disconnect"') == 2
        assert ids["sse"] in audit and ids["ws"] in audit and "admin" in audit
    finally:
        sse.close()
        ws.close()


def test_a_test_send_is_confirmed_marked_as_sent_by_staff_and_audited(live: Callable[..., Any]) -> None:
    server = live(**STAFF)
    staff = Staff(server.url)
    form = "/dashboard/users/erin/test-notification"
    asked = staff.post(form, title="Hello", message="from support")
    assert asked.status_code == 200 and "Send this test notification to" in asked.text
    assert "from support" in asked.text and 'value="yes"' in asked.text
    history = staff.get("/dashboard/api/users/erin/history").json()
    assert history["notifications"] == []  # nothing sent before the confirmation

    sent = staff.post(form, title="Hello", message="from support", confirmed="yes")
    assert sent.status_code == 302
    note = staff.get("/dashboard/api/users/erin/history").json()["notifications"][0]
    assert note["message"] == "from support" and note["category"] == "test"
    trace = requests.get(
        f"{server.url}/api/notifications/{note['id']}",
        headers={"Authorization": f"Bearer {server.stack.api_key}"},
        timeout=10,
    ).json()
    assert trace["sent_by"] == "admin"
    assert staff.get(f"/dashboard/api/notifications/{note['id']}/trace").json()["sent_by"] == "admin"
    by_service = server.notify("erin", "from a service")
    assert staff.get(f"/dashboard/api/notifications/{by_service['id']}/trace").json()["sent_by"] is None

    marked = staff.http.post(
        server.url + "/dashboard/api/users/erin/read",
        json={"all": True},
        headers={"X-CSRF-Token": staff.csrf},
        timeout=10,
    )
    assert marked.status_code == 200 and marked.json()["unread"] == 0

    audit = staff.get("/dashboard/audit").text
    assert re.search(r'data-action="mark_read">.*?admin.*?marked notifications read', audit, re.S)
    assert re.search(r'data-action="test_send">.*?admin.*?sent a test notification', audit, re.S)
    assert note["id"] in audit
    assert audit.index('data-action="mark_read"') < audit.index('data-action="test_send"')  # newest first


def test_api_keys_are_created_listed_and_revoked_in_the_console(live: Callable[..., Any]) -> None:
    server = live(**STAFF)
    staff = Staff(server.url)
    assert "No API key yet." in staff.get("/dashboard/api-keys").text

    created = staff.post("/dashboard/api-keys", name="billing")
    assert created.status_code == 201
    secret = re.search(r'id="new-key-secret">(nk_[A-Za-z0-9_-]+)<', created.text).group(1)  # type: ignore[union-attr]
    listing = staff.get("/dashboard/api-keys").text
    assert secret not in listing  # shown once
    assert 'data-key="billing"' in listing and secret[:7] in listing and "never" in listing

    use = requests.post(
        server.url + "/api/notifications",
        json={"user_id": "finn", "message": "billed"},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )
    assert use.status_code == 201, use.text
    row = re.search(r'data-key="billing".*?</tr>', staff.get("/dashboard/api-keys").text, re.S).group(0)  # type: ignore[union-attr]
    assert "never" not in row  # last use shown

    again = staff.post("/dashboard/api-keys", name="billing")
    assert again.status_code == 302
    assert "already exists" in staff.get("/dashboard/api-keys").text

    key_id = re.search(r"/dashboard/api-keys/([0-9a-f]{24})/revoke", row).group(1)  # type: ignore[union-attr]
    assert staff.post(f"/dashboard/api-keys/{key_id}/revoke").status_code == 302
    listing = staff.get("/dashboard/api-keys").text
    assert "API key &#39;billing&#39; revoked: refused here now" in listing and "revoked " in listing
    refused = requests.post(
        server.url + "/api/notifications",
        json={"user_id": "finn", "message": "billed"},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )
    assert refused.status_code == 401

    audit = staff.get("/dashboard/audit?target=billing").text
    assert 'data-action="api_key_create"' in audit and 'data-action="api_key_revoke"' in audit
    assert secret not in audit
    unknown = staff.post("/dashboard/api-keys/0123456789abcdef01234567/revoke")
    assert unknown.status_code == 302
    assert "no API key named or with id" in staff.get("/dashboard/api-keys").text
