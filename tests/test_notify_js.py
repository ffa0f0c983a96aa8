"""static/notify.js and the /demo page in headless Chromium against real gunicorn instances.

The page mirrors what it saw in ``window.demoState``; tests wait on it, never sleep.
"""

from __future__ import annotations

import signal

import pytest
import requests
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.browser import make_page, page  # noqa: F401

pytestmark = pytest.mark.browser

XSS = "<img src=x onerror=alert(1)>"
# What a browser logs by itself while the server is away on purpose.
NETWORK_ERRORS = (
    r"net::ERR_",
    r"WebSocket connection to .* failed",
    r"status of 50[23]",
)


def open_demo(page, server, user: str, transport: str = "sse", **params: str):  # noqa: F811
    query = "&".join(f"{k}={v}" for k, v in {"transport": transport, **params}.items())
    page.goto(f"{server.url}/demo?token={server.token(user)}&{query}")
    wait(page, "window.demoState && window.demoState.status === 'open'")


def state(page):  # noqa: F811
    return page.evaluate("window.demoState")


def wait(page, expression: str, arg=None) -> None:  # noqa: F811
    """page.wait_for_function, failing with what the page saw instead of a bare timeout."""
    try:
        page.wait_for_function(expression, arg=arg)
    except PlaywrightTimeout:
        seen = page.evaluate("window.demoState || null")
        raise AssertionError(f"timed out waiting for {expression!r}; demoState: {seen}") from None


def wait_received(page, ids: list[str]) -> None:  # noqa: F811
    wait(page, "ids => ids.every(id => window.demoState.received.includes(id))", ids)


def test_demo_history_live_xss_and_mark_read(page, live, artifacts):  # noqa: F811
    server = live()
    resp = requests.get(server.url + "/demo", timeout=10)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    old = server.notify("alice", "from before the page opened")
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    open_demo(page, server, "alice")
    assert page.url.endswith("/demo?transport=sse"), "token must be removed from the address bar"
    assert state(page)["history"] == [old["id"]]
    wait(page, "window.demoState.unread === 1")

    first = server.notify("alice", "hello from the API")
    xss = server.notify("alice", XSS)
    server.notify("bob", "not for alice")
    wait_received(page, [first["id"], xss["id"]])
    wait(page, "window.demoState.unread === 3")

    assert state(page)["received"] == [first["id"], xss["id"]]
    assert page.locator(f'li[data-id="{xss["id"]}"] .item-message').text_content() == XSS
    assert page.locator("#notifications img").count() == 0
    assert "not for alice" not in page.locator("#notifications").inner_text()
    assert page.locator("#unread").text_content() == "3"

    page.locator(f'li[data-id="{first["id"]}"] .mark-read').click()
    wait(page, "window.demoState.unread === 2")
    assert "read" in page.locator(f'li[data-id="{first["id"]}"]').get_attribute("class").split()
    bearer = {"Authorization": f"Bearer {server.token('alice')}"}
    resp = requests.get(server.url + "/api/me/unread-count", headers=bearer, timeout=10)
    assert resp.json()["unread"] == 2
    page.save_screenshot("demo-page")

    page.locator("input[name=transport][value=ws]").check()  # switch transport, keep the cursor
    wait(page, "window.demoState.statuses.slice(-1)[0] === 'open' && window.demoClient.transport === 'ws'")
    over_ws = server.notify("alice", "over WebSocket now")
    wait_received(page, [over_ws["id"]])
    assert state(page)["received"] == [first["id"], xss["id"], over_ws["id"]]
    assert state(page)["duplicates"] == 0
    assert (artifacts / "demo-page.png").stat().st_size > 1000
    assert dialogs == []


@pytest.mark.parametrize(("transport", "drop"), [("sse", "kill"), ("ws", "stop")])
def test_reconnect_resumes_without_gaps_or_duplicates(make_page, live, client, auth, transport, drop):  # noqa: F811
    page = make_page()  # noqa: F811
    page.allow_console_errors(*NETWORK_ERRORS)
    server = live()
    open_demo(page, server, "carol", transport, min_delay="100", max_delay="800")
    before = [server.notify("carol", f"before {i}")["id"] for i in range(2)]
    wait_received(page, before)

    # The page's instance goes away: a crash (SIGKILL, streams cut without a goodbye) or a
    # deploy (SIGTERM: the worker closes its streams, then exits).
    if drop == "kill":
        server.kill()
    else:
        server.stop(signal.SIGTERM)
    wait(page, "window.demoState.disconnects >= 1 && window.demoState.status !== 'open'")
    # Meanwhile the service keeps accepting notifications (here: the API in this process).
    gap = []
    for i in range(3):
        body = {"user_id": "carol", "message": f"gap {i}"}
        resp = client.post("/api/notifications", headers=auth, json=body)
        assert resp.status_code == 201, resp.get_data(as_text=True)
        gap.append(resp.get_json()["id"])
    server.start()  # same port: the client's own backoff loop finds it again
    wait_received(page, before + gap)
    wait(page, "window.demoState.status === 'open'")
    after = server.notify("carol", "after")["id"]
    wait_received(page, [after])

    seen = state(page)
    assert seen["received"] == before + gap + [after]
    assert seen["duplicates"] == 0, "the server replayed something the client already had"
    assert seen["resets"] == 0 and seen["reconnects"] >= 1 and seen["unread"] == 6

    # Resuming from an old cursor replays everything again: the client must drop it all.
    page.evaluate("window.demoClient.reconnect({cursor: '0'})")
    wait(page, "window.demoState.duplicates >= 6")
    wait(page, "window.demoState.status === 'open'")
    assert state(page)["received"] == before + gap + [after]


def test_reset_reloads_history(page, live):  # noqa: F811
    server = live()
    known = server.notify("dave", "already stored")
    open_demo(page, server, "dave", "ws", cursor="999999")
    wait(page, "window.demoState.resets === 1 && window.demoState.history.length === 1")
    assert state(page)["history"] == [known["id"]]
    fresh = server.notify("dave", "after the reset")
    wait_received(page, [fresh["id"]])
    assert state(page)["received"] == [fresh["id"]]
    page.locator("#mark-all").click()  # over the WebSocket: {"type": "read", "all": true}
    wait(page, "window.demoState.unread === 0")
    assert page.locator("#notifications .item.unread").count() == 0


def test_expired_token_is_refreshed(page, live):  # noqa: F811
    page.allow_console_errors(*NETWORK_ERRORS, r"status of 401")  # the 1 s token may expire early
    server = live()
    page.goto(server.url + "/demo")
    page.evaluate(
        """([short, fresh]) => {
            window.got = []; window.asked = 0;
            window.c = Notify.connect({token: short, transport: 'ws', minDelay: 100, maxDelay: 500,
                getToken: () => { window.asked += 1; return fresh; },
                onNotification: n => window.got.push(n.message)});
        }""",
        [server.token("erin", ttl=1), server.token("erin")],
    )
    wait(page, "window.asked >= 1 && window.c.status === 'open'")
    server.notify("erin", "after refresh")
    wait(page, "window.got.includes('after refresh')")
    page.evaluate("window.c.close()")
    # Without getToken a rejected token is final: no reconnect loop.
    page.evaluate("window.bad = Notify.connect({token: 'forged', onStatus: s => window.badStatus = s})")
    wait(page, "window.badStatus === 'unauthorized'")


def test_harness_reports_console_errors(make_page):  # noqa: F811
    probe = make_page()
    probe.set_content("<script>console.error('on purpose'); null.boom;</script>")
    assert probe.console_errors[0] == "on purpose"
    assert any("uncaught" in e for e in probe.unexpected_errors())
    probe.console_errors.clear()


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_receipts_states_priority_and_actions_in_the_browser(page, live, transport):  # noqa: F811
    """notify.js acknowledges what arrived (the trace shows it received on that connection),
    follows a change made elsewhere, and the demo renders priority and safe action links."""
    server = live(RECEIPT_FLUSH_SECONDS="0.2")
    open_demo(page, server, "carol", transport)
    actions = [{"label": "Open", "url": "/runs/7"}, {"label": "Docs", "url": "https://docs.example/x"}]
    resp = server.post(
        "/api/notifications", {"user_id": "carol", "message": "m", "priority": "high", "actions": actions}
    )
    note = resp.json()
    wait_received(page, [note["id"]])
    item = page.locator(f'li[data-id="{note["id"]}"]')
    assert "priority-high" in item.get_attribute("class").split()
    assert item.locator(".item-actions a").evaluate_all("as => as.map(a => a.href)") == [
        server.url + "/runs/7",
        "https://docs.example/x",
    ]
    key = {"Authorization": f"Bearer {server.stack.api_key}"}

    def received() -> bool:
        delivery = requests.get(
            f"{server.url}/api/notifications/{note['id']}", headers=key, timeout=5
        ).json()["delivery"]
        return any(s["transport"] == transport and s["received_at"] for s in delivery["sent"])

    deadline = 20
    for _ in range(deadline * 4):
        if received():
            break
        page.wait_for_timeout(250)
    assert received(), "the client's receipt reached the trace"
    assert server.post("/api/users/carol/archive", {"ids": [note["id"]]}).status_code == 200
    wait(page, "window.demoState.changes.includes('archive')")
    assert page.locator(f'li[data-id="{note["id"]}"]').count() == 0
    wait(page, "window.demoState.counts && window.demoState.counts.total === 0")
