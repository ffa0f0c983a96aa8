"""Delivery under faults, with real processes: Redis, MongoDB and instances killed."""

from __future__ import annotations

import os
import signal
import time

import gevent.pool
import orjson
import pytest
import redis
import requests
from notify_client import NotifyClient
from pymongo import MongoClient

from app.store.models import MARKERS
from tests.support import SSEClient, WSClient, frozen, wait_until
from tests.tcp_proxy import TcpProxy
from tests.test_metrics import sample

pytestmark = pytest.mark.slow


def exactly_once(client, expected: list[str]) -> None:
    client.wait_for(lambda: set(expected) <= set(client.messages()), timeout=30)
    messages = client.messages()
    assert sorted(messages) == sorted(expected), f"duplicates or extras: {messages}"


def flood(server, user_id: str, count: int) -> list[str]:
    """POST ``count`` ~11 KB notifications: more than the kernel's socket buffers hold (4 MB)."""
    pad = {"pad": "y" * 7000}

    def one(i: int) -> str:
        resp = server.post(
            "/api/notifications", {"user_id": user_id, "message": f"m{i:04d}" + "x" * 3900, "data": pad}
        )
        assert resp.status_code == 201
        return resp.json()["message"]

    pool = gevent.pool.Pool(8)
    return list(pool.imap(one, range(count)))


def test_two_instances_share_one_stream_of_events(live):
    a, b = live(workers=2), live(workers=2)
    token_x, token_y = a.token("x"), a.token("y")
    clients = [SSEClient(b.url, token_x), WSClient(b.url, token_x), SSEClient(a.url, token_y)]
    try:
        sent = [a.notify("x", f"a{i}") for i in range(3)] + [b.notify("x", f"b{i}") for i in range(3)]
        b.notify("y", "for-y")
        for client in clients[:2]:
            exactly_once(client, [n["message"] for n in sent])
            seqs = [int(e["id"]) for e in client.notifications()]
            assert seqs == sorted(seqs)
        exactly_once(clients[2], ["for-y"])
    finally:
        for client in clients:
            client.close()


def test_redis_connections_stay_constant_as_clients_connect(live, redis_srv):
    server = live(workers=2, MAX_STREAMS_PER_USER="1000")
    r = redis.Redis.from_url(redis_srv.url)

    def ours() -> tuple[int, int]:
        pids = {str(p) for p in server.worker_pids()}
        names = [c["name"] for c in r.client_list() if c["name"].startswith("notify-")]
        subs = [n for n in names if n.startswith("notify-sub:") and n.split(":")[1] in pids]
        cmds = [n for n in names if n.startswith("notify-cmd:") and n.split(":")[1] in pids]
        return len(subs), len(cmds)

    token = server.token("many")
    warm = [SSEClient(server.url, token) for _ in range(4)]
    deadline = time.monotonic() + 10
    while ours()[0] < 2 and time.monotonic() < deadline:  # the second worker is still connecting
        time.sleep(0.05)
    subs_before, cmds_before = ours()
    assert subs_before == 2
    clients = [SSEClient(server.url, token) if i % 2 else WSClient(server.url, token) for i in range(200)]
    try:
        server.notify("many", "to-all")
        for client in clients:
            client.wait_count(1, timeout=30)
        subs_after, cmds_after = ours()
        assert subs_after == 2
        assert cmds_after <= 2 * 3
    finally:
        for client in clients + warm:
            client.close()


def test_slow_consumer_is_dropped_and_fast_one_keeps_receiving(live):
    import socket

    server = live(CLIENT_QUEUE_SIZE="8")
    token = server.token("slow")
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", server.port))
    slow.sendall(f"GET /stream?token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    fast = SSEClient(server.url, token)
    try:
        exactly_once(fast, flood(server, "slow", 700))
        slow.settimeout(10)
        received = b""
        while chunk := slow.recv(1 << 20):
            received += chunk
        assert 0 < received.count(b"event: notification") < 700  # cut off, not fed forever
    finally:
        slow.close()
        fast.close()


def test_a_burst_past_the_queue_of_a_waiting_stream_is_caught_up_not_cut_off(live):
    """A hub that reads many events at once (its resync after a reconnect, the relay after an
    outage) can fill the queue of a stream that was only waiting: that client is not slow.
    The stream reads what it missed from the replay: everything once, in cursor order."""
    a, b = live(workers=1, CLIENT_QUEUE_SIZE="4"), live(workers=1)
    token = a.token("bursty")
    clients = [SSEClient(a.url, token), WSClient(a.url, token)]
    try:
        expected = [a.notify("bursty", "first")["message"]]
        for client in clients:
            client.wait_count(1)
        with frozen(a):  # thawed, its hub reads the whole burst in one go
            expected += [b.notify("bursty", f"b{i:02d}")["message"] for i in range(30)]
        for client in clients:
            exactly_once(client, expected)
            cursors = [int(e["id"]) for e in client.notifications()]
            assert cursors == sorted(cursors)
            assert not client.closed.is_set()
        text = requests.get(a.url + "/metrics", timeout=5).text
        assert sample(text, "notify_stream_catch_ups_total") >= 1
        assert sample(text, "notify_slow_consumers_dropped_total") == 0
    finally:
        for client in clients:
            client.close()


def test_slow_websocket_consumer_gets_1008(live):
    import socket

    import websocket

    server = live(CLIENT_QUEUE_SIZE="8")
    token = server.token("slowws")
    ws = websocket.create_connection(
        server.url.replace("http", "ws") + f"/ws?token={token}",
        suppress_origin=True,
        sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),),
        timeout=20,
    )
    try:
        flood(server, "slowws", 700)
        code = None
        for _ in range(800):
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                code = int.from_bytes(data[:2], "big")
                assert data[2:] == b"slow consumer"
                break
        assert code == 1008
        flood(server, "slowws", 50)  # events after the drop do not count it again
        text = requests.get(server.url + "/metrics", timeout=5).text
        assert "notify_slow_consumers_dropped_total 1.0" in text.splitlines()
    finally:
        ws.close()


def test_sigterm_closes_streams_and_worker_exits_quickly(live):
    server = live(workers=1)
    token = server.token("term")
    sse, ws = SSEClient(server.url, token), WSClient(server.url, token)
    server.notify("term", "hello")
    sse.wait_count(1)
    ws.wait_count(1)
    (pid,) = server.worker_pids()
    started = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    assert sse.closed.wait(5) and ws.closed.wait(5)
    while time.monotonic() - started < 5:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("worker still running 5 s after SIGTERM")
    assert ws.close_code == 1001


def test_ctrl_c_stops_every_process_without_a_traceback(live):
    """A terminal's Ctrl-C signals the master and each worker (which the master then
    signals again): every process exits 0 and the log holds no traceback."""
    server = live(workers=2)
    token = server.token("cc")
    sse = SSEClient(server.url, token)
    server.notify("cc", "hello")
    sse.wait_count(1)
    server.stop(signal.SIGINT)
    assert server.process is not None and server.process.returncode == 0
    assert sse.closed.wait(5)
    log = server.log()
    assert "Shutting down: Master" in log
    assert "Traceback" not in log and "SystemExit" not in log


@pytest.mark.parametrize("transport", [SSEClient, WSClient], ids=["sse", "ws"])
def test_redis_killed_and_restarted(live, own_redis, stack_on, transport):
    stack = stack_on(redis_url=own_redis.url)
    server = live(workers=2, on=stack)
    token = server.token("rk")
    clients = [transport(server.url, token) for _ in range(3)]
    expected = [server.notify("rk", "before")["message"]]
    for client in clients:
        client.wait_count(1)
    own_redis.kill()
    for i in range(5):
        expected.append(server.notify("rk", f"during{i}")["message"])  # stored: 201 meanwhile
    ready = requests.get(server.url + "/readyz", timeout=10)
    assert ready.status_code == 503 and ready.json()["checks"]["redis"] == "down"
    own_redis.restart()
    for i in range(3):
        expected.append(server.notify("rk", f"after{i}")["message"])
    try:
        for client in clients:
            exactly_once(client, expected)
    finally:
        for client in clients:
            client.close()


def test_crash_between_insert_and_publish_is_relayed(live, stack):
    healthy = live(workers=1, PUBLISH_LEASE_SECONDS="1", RELAY_INTERVAL_SECONDS="0.2")
    crashing = live(workers=1, TEST_CRASH_AFTER_INSERT="1", PUBLISH_LEASE_SECONDS="1")  # its lease, not 10 s
    client = SSEClient(healthy.url, healthy.token("crash"))
    try:
        with pytest.raises(requests.RequestException):
            crashing.post("/api/notifications", {"user_id": "crash", "message": "orphan"})
        exactly_once(client, ["orphan"])
    finally:
        client.close()


def test_mongodb_killed_and_restarted(live, own_mongo, stack_on):
    server = live(workers=1, on=stack_on(mongo_url=own_mongo.url))
    client = SSEClient(server.url, server.token("mk"))
    try:
        server.notify("mk", "before")
        own_mongo.kill()
        resp = server.post("/api/notifications", {"user_id": "mk", "message": "lost"})
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "unavailable"
        ready = requests.get(server.url + "/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["checks"]["mongodb"] == "down"
        own_mongo.restart()
        server.notify("mk", "after")
        exactly_once(client, ["before", "after"])
        history = requests.get(
            server.url + "/api/users/mk/notifications",
            headers={"Authorization": f"Bearer {server.stack.api_key}"},
            timeout=10,
        ).json()
        assert "notifications" in history, history
        assert [n["message"] for n in history["notifications"]][0] == "after"
        assert "lost" not in [n["message"] for n in history["notifications"]]
    finally:
        client.close()


def test_instance_killed_clients_resume_on_the_other(live):
    a, b = live(workers=1), live(workers=1)
    token = a.token("failover")
    clients = [SSEClient(a.url, token), WSClient(a.url, token)]
    expected = [a.notify("failover", f"m{i}")["message"] for i in range(3)]
    for client in clients:
        client.wait_count(3)
    a.kill()
    for client in clients:
        assert client.closed.wait(10)
    expected += [b.notify("failover", f"gap{i}")["message"] for i in range(3)]
    resumed = [
        SSEClient(b.url, token, last_event_id=clients[0].last_id()),
        WSClient(b.url, token, last_event_id=clients[1].last_id()),
    ]
    try:
        expected.append(b.notify("failover", "live")["message"])
        for old, new in zip(clients, resumed, strict=True):
            new.wait_count(4)
            assert old.messages() + new.messages() == expected
    finally:
        for client in clients + resumed:
            client.close()


def test_silent_subscription_is_detected_by_probe(live, redis_srv, stack_on):
    port = int(redis_srv.url.rsplit(":", 1)[1].split("/")[0])
    proxy = TcpProxy(port).start()
    try:
        server = live(
            workers=1,
            on=stack_on(redis_url=f"redis://127.0.0.1:{proxy.port}/0"),
            PROBE_INTERVAL_SECONDS="0.5",
        )
        client = SSEClient(server.url, server.token("silent"))
        server.notify("silent", "before")
        client.wait_count(1)
        assert proxy.freeze_subscribers() == 1
        server.notify("silent", "while-silent")
        # two probe intervals to notice, then reconnect and replay: well under 5 s
        exactly_once(client, ["before", "while-silent"])
        assert "subscription is silent" in server.log()
        client.close()
    finally:
        proxy.stop()


def _keyed_post(server, key: str, timeout: float) -> requests.Response:
    body = orjson.dumps({"user_id": "fz", "message": f"m-{key}"})  # the same bytes on every attempt
    headers = {"Authorization": f"Bearer {server.stack.api_key}", "Content-Type": "application/json"}
    return requests.post(
        server.url + "/api/notifications",
        data=body,
        headers={**headers, "Idempotency-Key": key},
        timeout=timeout,
    )


def test_retries_after_a_mongodb_freeze_end_as_one_notification_per_key(live, own_mongo, stack_on):
    """MongoDB hangs (SIGSTOP) under keyed POSTs. A short freeze: callers time out while
    their notifications are stored after the thaw. A long one: past MONGO_OP_TIMEOUT_MS the
    POSTs answer 503. Retried with the same keys (by hand, and by the bundled client), every
    key ends as exactly one notification, delivered once."""
    stack = stack_on(mongo_url=own_mongo.url)
    # The short freeze (3 s) stays under MONGO_OP_TIMEOUT_MS, the long one passes it.
    server = live(workers=2, on=stack, RELAY_INTERVAL_SECONDS="0.2", MONGO_OP_TIMEOUT_MS="6000")
    markers = MongoClient(stack.mongo_uri).get_default_database().notifications
    stream = SSEClient(server.url, server.token("fz"))
    outcomes: dict[str, object] = {}
    created: dict[str, requests.Response] = {}

    def first_attempt(key: str, timeout: float) -> None:
        try:
            outcomes[key] = _keyed_post(server, key, timeout).status_code
        except requests.Timeout:
            outcomes[key] = "timeout"

    def client_send(i: int) -> str:  # the bundled client: one key per send, reused on its retries
        with NotifyClient(server.url, server.stack.api_key, timeout=1, retries=60, max_backoff=0.5) as notify:
            return notify.send("fz", f"client-{i}")["id"]

    def retry_until_created(keys: list[str]) -> None:
        deadline = time.monotonic() + 30
        for key in keys:
            while key not in created:
                assert time.monotonic() < deadline, f"{key} never answered 201: {outcomes}"
                try:
                    resp = _keyed_post(server, key, 5)
                except requests.Timeout:
                    continue
                if resp.status_code == 201:
                    created[key] = resp
                else:
                    assert resp.status_code == 503, resp.text
                    time.sleep(0.2)

    def settled() -> None:  # no clean-up of this phase left for a relay
        wait_until(lambda: markers.count_documents(MARKERS) == 0, timeout=30)

    pool = gevent.pool.Pool()
    short, long = [f"short-{i}" for i in range(4)], [f"long-{i}" for i in range(4)]
    try:
        server.post("/api/notifications", {"user_id": "fz", "message": "warm-up"})
        settled()
        with frozen(own_mongo):  # shorter than MONGO_OP_TIMEOUT_MS: stored after the thaw
            gevent.joinall([pool.spawn(first_attempt, key, 1) for key in short])
            sends = [pool.spawn(client_send, i) for i in range(2)]
            gevent.sleep(3)  # the client retries meanwhile, each attempt with the same key
        assert {outcomes[key] for key in short} == {"timeout"}
        retry_until_created(short)
        client_ids = [send.get(timeout=30) for send in sends]
        assert any(created[key].headers.get("Idempotent-Replayed") == "true" for key in short)
        settled()
        # longer: the POSTs answer 503 once MONGO_OP_TIMEOUT_MS passed; on a loaded machine
        # their batches may each wait out the timeout in turn, so the freeze lasts until all answered
        with frozen(own_mongo):
            gevent.joinall([pool.spawn(first_attempt, key, 60) for key in long], timeout=55)
        assert {outcomes[key] for key in long} == {503}
        retry_until_created(long)

        for key in short + long:  # and again: the same notification, replayed
            again = _keyed_post(server, key, 5)
            assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
            assert again.json()["id"] == created[key].json()["id"]
        expected = ["warm-up"] + [f"m-{k}" for k in short + long] + [f"client-{i}" for i in range(2)]
        exactly_once(stream, expected)
        history = requests.get(
            server.url + "/api/users/fz/notifications?limit=100",
            headers={"Authorization": f"Bearer {server.stack.api_key}"},
            timeout=10,
        ).json()["notifications"]
        assert sorted(n["message"] for n in history) == sorted(expected)
        assert {n["id"] for n in history} >= {r.json()["id"] for r in created.values()} | set(client_ids)
    finally:
        stream.close()


def test_posts_answer_within_the_publish_bound_while_redis_hangs(live, own_redis, stack_on):
    """Redis hangs (SIGSTOP): a POST waits for it at most PUBLISH_TIMEOUT_SECONDS, rate limit
    and publish together, and answers 201 stored; the notification is delivered after the thaw."""
    bound, margin = 1.0, 1.0
    server = live(
        workers=1,
        on=stack_on(redis_url=own_redis.url),
        PUBLISH_TIMEOUT_SECONDS=str(bound),
        REDIS_SOCKET_TIMEOUT="10",  # longer than the freeze: the bound, not a socket timeout, answers
    )
    stream = SSEClient(server.url, server.token("rh"))
    expected = [server.notify("rh", "before")["message"]]
    stream.wait_count(1)

    def timed(message: str) -> tuple[float, requests.Response]:
        started = time.monotonic()
        resp = server.post("/api/notifications", {"user_id": "rh", "message": message})
        return time.monotonic() - started, resp

    try:
        with frozen(own_redis):
            answers = [timed(f"during{i}") for i in range(2)]
            answers += gevent.pool.Pool().map(timed, [f"burst{i}" for i in range(6)])
        for elapsed, resp in answers:
            assert resp.status_code == 201 and resp.json()["seq"] is None, resp.text
            assert elapsed < bound + margin, f"answered after {elapsed:.2f} s"
            expected.append(resp.json()["message"])
        expected.append(server.notify("rh", "after")["message"])
        exactly_once(stream, expected)
    finally:
        stream.close()
