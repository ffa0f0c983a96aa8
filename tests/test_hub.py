"""The hub routes: a worker receives the events of the users it holds streams of, no others
(``notify_hub_messages_received_total``), across live instances, reconnects and resumes."""

from __future__ import annotations

import gevent
import gevent.pool
import redis
import requests

from tests.support import SSEClient, WSClient, wait_until
from tests.tcp_proxy import TcpProxy
from tests.test_metrics import sample


def received(server) -> float:
    text = requests.get(server.url + "/metrics", timeout=5).text
    return sample(text, "notify_hub_messages_received_total")


def numsub(client: redis.Redis, channel: str) -> int:
    return dict(client.pubsub_numsub(channel)).get(channel.encode(), 0)


def test_each_instance_receives_only_its_users_events(live, stack):
    a, b = live(workers=1, PROBE_INTERVAL_SECONDS="0.2"), live(workers=1, PROBE_INTERVAL_SECONDS="0.2")
    users_a, users_b = [f"ra{i}" for i in range(6)], [f"rb{i}" for i in range(4)]
    clients = {u: SSEClient(a.url, a.token(u)) for u in users_a}
    clients |= {u: WSClient(b.url, b.token(u)) for u in users_b}
    tab = SSEClient(a.url, a.token("rb0"))  # one of b's users has a tab on a too
    try:
        resp = a.post("/api/notifications", {"user_ids": [*users_a, *users_b, "nobody"], "message": "all"})
        assert resp.status_code == 201
        for user, client in clients.items():
            client.wait_count(1)
            assert (
                client.messages() == ["all"] and client.notifications()[0]["notification"]["user_id"] == user
            )
        tab.wait_count(1)
        # a: its 6 users and rb0; b: its 4 users; nobody's event reached no worker
        wait_until(lambda: (received(a), received(b)) == (7, 4))
        gevent.sleep(0.5)  # several probes later: they are not counted
        assert (received(a), received(b)) == (7, 4)

        note = b.notify("rb0", "second")  # read state syncs across instances through the user's channel
        tab.wait_count(2)
        clients["rb0"].wait_count(2)
        resp = a.post("/api/users/rb0/read", {"ids": [note["id"]]})
        assert resp.status_code == 200 and resp.json()["updated"] == 1
        for client in (tab, clients["rb0"]):
            client.wait_for(lambda c=client: any(e["type"] == "state" for e in c.events))
        assert (received(a), received(b)) == (9, 6)
    finally:
        for client in [*clients.values(), tab]:
            client.close()


def test_an_event_published_while_a_stream_opens_is_not_lost(live, redis_srv, stack_on):
    """Redis gets each SUBSCRIBE 0.3 s late (a proxy holds it back) while POSTs for eight
    users keep coming and a stream of each user opens in turn, resuming from the user's
    first notification. A stream that replayed before its subscription held would miss
    what was published in between; each receives every notification after its cursor."""
    port = int(redis_srv.url.rsplit(":", 1)[1].split("/")[0])
    proxy = TcpProxy(port, subscriber_delay=0.3).start()
    users = [f"racer{i}" for i in range(8)]
    streams: list[SSEClient] = []
    try:
        server = live(workers=1, on=stack_on(redis_url=f"redis://127.0.0.1:{proxy.port}/0"))
        resp = server.post("/api/notifications", {"user_ids": users, "message": "first"})
        cursors = {n["user_id"]: str(n["seq"]) for n in resp.json()["notifications"]}
        sent: list[str] = []

        def post() -> None:
            for i in range(50):
                resp = server.post("/api/notifications", {"user_ids": users, "message": f"m{i:02d}"})
                assert resp.status_code == 201
                sent.append(f"m{i:02d}")
                gevent.sleep(0.02)

        poster = gevent.spawn(post)
        for user in users:
            streams.append(SSEClient(server.url, server.token(user), last_event_id=cursors[user]))
            gevent.sleep(0.1)
        poster.get()
        for stream in streams:
            stream.wait_count(len(sent))
            assert stream.messages() == sent
    finally:
        for stream in streams:
            stream.close()
        proxy.stop()


def test_a_users_channel_is_unsubscribed_after_the_last_stream_closes(live, stack):
    server = live(workers=1, UNSUBSCRIBE_LINGER_SECONDS="0.5")
    r = redis.Redis.from_url(stack.redis_url)
    channel = f"{stack.prefix}u:{{leaver}}"
    token = server.token("leaver")
    one, two = SSEClient(server.url, token), WSClient(server.url, token)
    assert numsub(r, channel) == 1  # one subscription for the worker, not one per stream
    one.close()
    two.close()
    again = SSEClient(server.url, token)  # back within the linger: still subscribed, no churn
    try:
        server.notify("leaver", "still here")
        again.wait_count(1)
        assert numsub(r, channel) == 1
    finally:
        again.close()
    wait_until(lambda: numsub(r, channel) == 0, timeout=10)
    assert received(server) == 1


def test_a_dropped_subscriber_resubscribes_then_replays(live, stack):
    """Redis drops every subscriber connection while notifications keep coming: each worker
    subscribes its users' channels again and replays the gap; every client gets all, once."""
    servers = [live(workers=1), live(workers=1)]
    r = redis.Redis.from_url(stack.redis_url)
    users = ["dx", "dy"]
    clients = [SSEClient(s.url, s.token(u)) for s, u in zip(servers, users, strict=True)]
    expected = {u: [servers[0].notify(u, "before")["message"]] for u in users}
    for client in clients:
        client.wait_count(1)
    pids = {str(p) for s in servers for p in s.worker_pids()}
    ours = [
        c for c in r.client_list() if c["name"].startswith("notify-sub:") and c["name"].split(":")[1] in pids
    ]
    assert len(ours) == 2

    def post(i: int) -> None:
        for u in users:
            expected[u].append(servers[i % 2].notify(u, f"gap{i}")["message"])

    pool = gevent.pool.Pool(2)
    burst = [pool.spawn(post, i) for i in range(20)]
    for client in ours:
        r.client_kill(client["addr"])
    gevent.joinall(burst, raise_error=True)
    try:
        for client, user in zip(clients, users, strict=True):
            client.wait_for(lambda c=client, u=user: sorted(c.messages()) == sorted(expected[u]), timeout=30)
            seqs = [int(e["id"]) for e in client.notifications()]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        for user in users:
            wait_until(lambda u=user: numsub(r, f"{stack.prefix}u:{{{u}}}") == 1)
        text = requests.get(servers[0].url + "/metrics", timeout=5).text
        assert sample(text, "notify_hub_reconnects_total") >= 1
    finally:
        for client in clients:
            client.close()
