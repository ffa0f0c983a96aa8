"""The per-worker real-time hub: ONE Redis subscriber connection, ONE listener greenlet.

Events are routed, not broadcast: the worker subscribes the channel of each user it holds
a stream of (``u:{<user>}``), and the feed channel only while staff watch the dashboard
overview, so Redis sends it its own users' events and nothing else. The subscriptions
change on the one subscriber connection the listener reads: a writer greenlet (the only
one that writes on it) sends SUBSCRIBE / UNSUBSCRIBE for many channels at once, and the
listener reads their confirmations among the messages. A stream replays only once Redis
confirmed its user's channel (``confirmed``), so an event published meanwhile is either
in the replay or arrives live. A user's channel is unsubscribed when the worker's last
stream of that user closed ``UNSUBSCRIBE_LINGER_SECONDS`` ago (a reconnecting client
finds it still subscribed). The listener parses a message once; clients share the
resulting ``Event`` and its cached wire forms.

Redis pub/sub is at-most-once, so the hub makes up for it:
- after every (re)connect it subscribes every channel again, waits for Redis to confirm
  them all, then replays, per local user, what was published while it was not listening,
  before delivering any newer message, so each client sees one ordered stream;
- a loop-back probe every ``PROBE_INTERVAL_SECONDS``, on a channel of this worker's own
  (the one the connection opens with, always subscribed), proves the connection still
  delivers (a silent one is torn down after two intervals) and marks how far the hub is
  caught up: every event published after a received probe has a cursor larger than the
  probe's time less one publish lease (cursors older than that are replaced at publish).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
import orjson
import redis
from gevent.event import Event as Wakeup
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from app.delivery.channels import Channels
from app.delivery.events import CURSORED, DISCONNECT, PROBE, RESET, Event
from app.delivery.redis_reader import MESSAGE, SUBSCRIBE, UNSUBSCRIBE, Frame, RawPushReader
from app.delivery.replay import ReplayUnavailable, events_after
from app.ops import metrics

if TYPE_CHECKING:
    from app.delivery.waiting import Parked
    from app.store.redis_connect import RedisConnector

log = logging.getLogger(__name__)

MAX_BACKOFF = 5.0
DISCONNECTED = "disconnected by support staff"  # the close reason of a staff disconnect
PROBE_SCRIPT = r"""
local t = redis.call('TIME')
local now = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
redis.call('PUBLISH', KEYS[1], 'p\t' .. ARGV[1] .. '\t' .. now .. '\t{}')
return now
"""


SLOW_CONSUMER = "slow consumer"


class Subscription:
    """One connected client: a bounded queue the hub fills and the client's greenlet (or,
    while that waits, its worker's flusher: ``parked``) drains.

    A burst that fills the queue of a stream that was waiting with nothing to send (the
    relay publishing what a Redis outage held back, a hub's resync after a reconnect) does
    not make its client slow: the queue is emptied and marked ``behind``, nothing more is
    queued until the stream has read what it missed from the replay
    (``app/delivery/session.py``; the replay, read later, holds it all), so memory stays
    bounded and the client misses nothing. A queue that fills while its stream is busy
    sending, the dashboard's feed (no replay) and a stream that falls behind again while
    sending a catch-up are slow consumers: closed, the client resumes from its cursor."""

    __slots__ = (
        "user_id",
        "queue",
        "wakeup",
        "closed",
        "reason",
        "maxsize",
        "parked",
        "behind",
        "connection",
        "since",
    )

    def __init__(self, user_id: str | None, maxsize: int) -> None:
        self.user_id = user_id
        # A client's own stream names its connection (presence, receipts, disconnect);
        # None for a staff viewer's.
        self.connection: str | None = None
        self.since = 0.0
        # None while empty: an idle client should not hold a deque block (~760 B) for nothing
        self.queue: deque[Event] | None = None
        self.wakeup = Wakeup()
        self.closed = False
        self.reason = ""
        self.maxsize = maxsize
        # Set by a stream while it waits with nothing to send: new events are then written
        # by the worker's flusher (app/delivery/waiting.py) instead of waking the stream.
        self.parked: Parked | None = None
        # The cursor before the first event dropped from a full queue; None when not behind.
        self.behind: int | None = None

    def offer(self, event: Event) -> None:
        if self.closed or self.behind is not None:  # behind: its catch-up reads this from the replay
            return
        if self.queue is None:
            self.queue = deque()
        elif len(self.queue) >= self.maxsize:
            self._overflow()
            return
        self.queue.append(event)
        parked = self.parked
        if parked is not None:
            parked.mark()
        else:
            self.wakeup.set()

    def _overflow(self) -> None:
        """Drop the queue for a replay from the first event in it, or close a slow client."""
        cursored = (e.seq for e in self.queue or () if e.kind in CURSORED and e.seq is not None)
        first = next(cursored, None)
        parked = self.parked
        if self.user_id is None or first is None or parked is None or parked.pending:
            self.close(SLOW_CONSUMER)  # no replay, or the stream is busy sending: it is slow
            return
        self.behind = first - 1
        self.queue = None
        self.parked = None  # the stream itself reads the replay
        self.wakeup.set()

    def close(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.reason = reason
            if reason == SLOW_CONSUMER:
                metrics.DROPPED_SLOW.inc()
            self.wakeup.set()

    def get(self, timeout: float | None) -> Event | None:
        """The next event; None on timeout or when closed with nothing left."""
        if not self.queue and not self.closed:
            self.wakeup.clear()
            self.wakeup.wait(timeout)
        queue = self.queue
        if not queue:
            return None
        event = queue.popleft()
        if not queue:
            self.queue = None
        return event


class Hub:
    def __init__(self, connector: RedisConnector, service: Any, config: Any) -> None:
        self.connector = connector
        self.service = service
        self.config = config
        self.hub_id = uuid.uuid4().hex[:12]
        self.channel = service.probe_channel(self.hub_id)  # the connection opens with it
        self._probe_b = self.channel.encode()
        self._feed = service.feed_channel
        self._feed_b = self._feed.encode()
        self.channels = Channels(self._needed, config.UNSUBSCRIBE_LINGER_SECONDS, self.force_reconnect)
        self._reader: RawPushReader | None = None
        self._held: list[tuple[bytes, bytes]] | None = None  # messages read while restoring
        self.users: dict[str, set[Subscription]] = {}
        self.watchers: set[Subscription] = set()
        self.user_last: dict[str, int] = {}
        self.caught_up_us = 0
        self.connected = Wakeup()
        self.stats = dict.fromkeys(("received", "messages", "bad_messages", "reconnects", "resynced"), 0)
        self.on_reconnect: list[Callable[[], None]] = []
        self.on_disconnect: list[Callable[[], None]] = []  # a connection closed by staff
        self._greenlet: gevent.Greenlet | None = None
        self._writer: gevent.Greenlet | None = None  # the subscription writer (Channels.run)
        self._stopping = False
        self._shut_down = False
        self._probe_sent_at: float | None = None
        self._probe = service.redis.register_script(PROBE_SCRIPT)
        self._pubsub: Any = None
        self._client: redis.Redis | None = None

    # -- registry --------------------------------------------------------------------
    def subscribe(self, user_id: str) -> Subscription:
        """A subscription to ``user_id``'s events; ``confirmed`` says when they flow."""
        self.start()
        sub = Subscription(user_id, self.config.CLIENT_QUEUE_SIZE)
        if self._shut_down:  # a dying worker still accepts for a moment: send clients on
            sub.close("server shutting down")
        subs = self.users.get(user_id)
        if subs is None:
            subs = self.users[user_id] = set()
            self.channels.want(self.service.user_channel(user_id), user_id)
        subs.add(sub)
        return sub

    def confirmed(self, user_id: str, timeout: float) -> bool:
        """Wait until Redis confirmed this worker's subscription to ``user_id``'s channel:
        from then on every event published for the user reaches this worker."""
        if self._shut_down:  # its streams are closed at once: nothing to wait for
            return True
        return self.channels.wait_confirmed(self.service.user_channel(user_id), timeout)

    def watch(self) -> Subscription:
        """A subscription to every new notification (the support dashboard's overview).

        Waits (at most ``REDIS_SOCKET_TIMEOUT``) for the feed channel to be confirmed; the
        overview is a live view with no replay, so it starts anyway if Redis is slow."""
        self.start()
        sub = Subscription(None, self.config.CLIENT_QUEUE_SIZE * 4)
        if self._shut_down:
            sub.close("server shutting down")
        if not self.watchers:
            self.channels.want(self._feed, None)
        self.watchers.add(sub)
        self.channels.wait_confirmed(self._feed, self.config.REDIS_SOCKET_TIMEOUT)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.close("closed")
        if sub.user_id is None:
            if sub in self.watchers:
                self.watchers.discard(sub)
                if not self.watchers:
                    self.channels.release(self._feed)
            return
        subs = self.users.get(sub.user_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.users[sub.user_id]
                self.user_last.pop(sub.user_id, None)
                self.channels.release(self.service.user_channel(sub.user_id))

    def _needed(self, user_id: str | None) -> bool:
        """Does a stream on this worker still need the channel of ``user_id`` (None: the feed)?"""
        return bool(self.watchers) if user_id is None else user_id in self.users

    def connection_count(self) -> int:
        return sum(len(s) for s in self.users.values())

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        if self._shut_down:
            return
        if self._greenlet is None or self._greenlet.dead:
            self._stopping = False
            if self._writer is not None:  # one writer only
                self._writer.kill(block=False)
            self._greenlet = gevent.spawn(self._run)
            self._writer = gevent.spawn(self.channels.run)

    def shutdown(self, reason: str = "server shutting down") -> None:
        """Close every stream (clients reconnect elsewhere) and stop listening for good."""
        self._stopping = True
        self._shut_down = True
        for subs in list(self.users.values()):
            for sub in list(subs):
                sub.close(reason)
        for sub in list(self.watchers):
            sub.close(reason)
        gevent.killall([g for g in (self._greenlet, self._writer) if g is not None], block=False)
        self._close_pubsub()

    def force_reconnect(self) -> None:
        """Drop the subscriber connection; the listener reconnects and resyncs."""
        self._close_pubsub()

    # -- listener --------------------------------------------------------------------
    def _run(self) -> None:
        backoff, first = 0.1, True
        while not self._stopping:
            try:
                self._connect()
                self._restore()
                if not first:
                    self.stats["reconnects"] += 1
                    metrics.HUB_RECONNECTS.inc()
                    self._resync()
                    for callback in self.on_reconnect:
                        callback()
                first = False
                held, self._held = self._held or [], None
                for channel, payload in held:  # after the replay: newer than all of it
                    self.dispatch(payload, channel == self._feed_b)
                self._send_probe()
                backoff = 0.1
                self._read_loop()
            except (redis.RedisError, RedisClusterException, OSError, ValueError, AttributeError) as exc:
                if not self._stopping:
                    metrics.redis_error("hub")
                    log.warning("hub %s: subscriber connection lost: %s", self.hub_id, exc)
            finally:
                self.connected.clear()
                self._close_pubsub()
            if self._stopping:
                break
            gevent.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _connect(self) -> None:
        # No hidden retries: redis-py would otherwise reconnect and resubscribe on its
        # own, silently losing what was published meanwhile. The hub must see every
        # reconnect to replay the gap. The client is kept referenced: when it is
        # garbage-collected redis-py closes its pool, dropping the subscription.
        self._client = self.connector.subscriber(
            client_name=f"notify-sub:{os.getpid()}:{self.hub_id}",
            socket_connect_timeout=2.0,
            socket_timeout=self.config.REDIS_SOCKET_TIMEOUT,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),
        )
        pubsub = self._client.pubsub()
        self._pubsub = pubsub
        pubsub.subscribe(self.channel)
        reply = pubsub.get_message(timeout=self.config.REDIS_SOCKET_TIMEOUT)
        if not reply or reply.get("type") != "subscribe":
            raise redis.ConnectionError("no subscribe confirmation")
        self.connected.set()
        self._probe_sent_at = None

    def _close_pubsub(self) -> None:
        self.channels.drop()
        self._reader = None
        pubsub, self._pubsub = self._pubsub, None
        client, self._client = self._client, None
        for closable in (pubsub, client):
            if closable is not None:
                with contextlib.suppress(Exception):  # closing a broken connection
                    closable.close()

    def _read(self, timeout: float) -> list[Frame]:
        if self._reader is not None:
            return self._reader.read(timeout)
        pubsub = self._pubsub
        if pubsub is None:
            raise redis.ConnectionError("subscriber connection closed")
        message = pubsub.get_message(timeout=timeout)
        if message is None:
            return []
        data = message["data"]
        return [(message["type"].encode(), message["channel"], data if isinstance(data, bytes) else b"")]

    def _read_loop(self) -> None:
        interval = self.config.PROBE_INTERVAL_SECONDS
        next_probe = time.monotonic() + interval
        while not self._stopping:
            if self._pubsub is None:
                raise redis.ConnectionError("subscriber connection closed")
            self._handle(self._read(min(1.0, interval)))
            now = time.monotonic()
            if now >= next_probe:
                next_probe = now + interval
                if self._probe_sent_at is not None and now - self._probe_sent_at > 2 * interval:
                    raise redis.ConnectionError("loop-back probe not received: subscription is silent")
                if self._probe_sent_at is None:
                    self._send_probe()

    def _handle(self, frames: list[Frame]) -> None:
        """Messages to their subscriptions (held while restoring), confirmations to the channels."""
        received = 0
        for kind, channel, data in frames:
            if kind == MESSAGE:
                if channel == self._probe_b:
                    self.dispatch(data)
                    continue
                received += 1
                if self._held is not None:
                    self._held.append((channel, data))
                else:
                    self.dispatch(data, channel == self._feed_b)
            elif kind in (SUBSCRIBE, UNSUBSCRIBE):
                self.channels.confirmation(channel.decode())
        if received:
            self.stats["received"] += received
            metrics.HUB_RECEIVED.inc(received)

    def _send_probe(self) -> None:
        self._probe(keys=[self.channel], args=[self.hub_id])
        self._probe_sent_at = time.monotonic()

    def dispatch(self, raw: bytes, feed: bool = False) -> None:
        """One message: to the user's local streams, or (``feed``) to the dashboard watchers."""
        try:
            event = Event.from_wire(raw)
        except (ValueError, UnicodeDecodeError):
            self.stats["bad_messages"] += 1
            log.warning("hub %s: ignoring malformed message %r", self.hub_id, raw[:200])
            return
        if event.kind == PROBE:
            if event.user_id == self.hub_id:
                self._probe_sent_at = None
                self.caught_up_us = event.seq or self.caught_up_us
            return
        if event.kind == DISCONNECT:
            self._disconnect(event)
            return
        self.stats["messages"] += 1
        if feed:
            for sub in tuple(self.watchers):
                sub.offer(event)
        else:
            self._deliver(event)

    def _deliver(self, event: Event) -> None:
        subs = self.users.get(event.user_id)
        if subs:
            if event.kind in CURSORED and event.seq is not None:
                self.user_last[event.user_id] = event.seq
            for sub in tuple(subs):
                sub.offer(event)

    def _disconnect(self, event: Event) -> None:
        """Staff asked to close one connection (``app/dashboard/actions.py``): it ends here
        if this worker holds it (every worker holding a stream of the user reads the command)."""
        try:
            target = orjson.loads(event.payload).get("connection")
        except orjson.JSONDecodeError:
            return
        for sub in tuple(self.users.get(event.user_id, ())):
            if sub.connection is not None and sub.connection == target:
                sub.close(DISCONNECTED)
                for callback in self.on_disconnect:
                    callback()

    def _resync(self) -> None:
        """Replay, per local user, what was published while the hub was not listening."""
        floor = max(self.caught_up_us - int(self.config.PUBLISH_LEASE_SECONDS * 1_000_000) - 1, 0)
        for user_id in list(self.users):
            cursor = max(self.user_last.get(user_id, 0), floor)
            try:
                events = events_after(self.service, user_id, cursor, self.config.REPLAY_LIMIT, strict=False)
            except ReplayUnavailable as exc:
                log.warning("hub %s: resync for a user failed: %s", self.hub_id, exc)
                continue
            if events is None:
                events = [Event(RESET, user_id, None, b'{"reason":"too many missed","cursor":null}')]
            for event in events:
                self._deliver(event)
            self.stats["resynced"] += len(events)

    def _restore(self) -> None:
        """After a (re)connect: subscribe every channel this worker needs on the new
        connection and wait until Redis confirmed them all. Messages read meanwhile are
        held: the resync must replay the gap before anything newer is delivered."""
        self._reader = RawPushReader.take_over(self._pubsub)
        self._held = []
        self.channels.adopt(self._pubsub)
        deadline = time.monotonic() + self.config.REDIS_SOCKET_TIMEOUT
        while self.channels.pending():
            if time.monotonic() > deadline:
                raise redis.ConnectionError("subscriptions not confirmed in time")
            self._handle(self._read(0.2))
