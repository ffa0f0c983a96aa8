"""The per-worker real-time hub: ONE subscriber connection per Redis node, routing.

Events are routed, not broadcast: the worker subscribes the channel of each user it holds
a stream of (``u:{<user>}``), and the feed channel only while staff watch the dashboard
overview, so Redis sends it its own users' events and nothing else. With one Redis
(standalone, or the primary Sentinel names) the worker has one subscriber connection;
on a Redis Cluster pub/sub is sharded (SPUBLISH / SSUBSCRIBE) and the worker has one
subscriber connection per master, each channel subscribed on the connection to the
master serving its slot (a user's channel carries the user's hash tag, so it is in the
slot of the user's keys, where the publish script runs). Each connection is a ``Link``
(app/delivery/links.py: listener, writer, loop-back probe, restore after a reconnect;
app/delivery/routing.py: which link a channel is on, and moving it); the hub says which
channels are needed (``Channels``: many per command, given up
``UNSUBSCRIBE_LINGER_SECONDS`` after the worker's last stream of that user closed), on
which link, and routes what the links read. A stream replays only once Redis confirmed
its user's channel (``confirmed``), so an event published meanwhile is either in the
replay or arrives live. The listener parses a message once; clients share the resulting
``Event`` and its cached wire forms.

Redis pub/sub is at-most-once, so the hub makes up for it:
- after a link (re)connects it subscribes its channels again, waits for Redis to confirm
  them all, then replays, per user of those channels, what was published while it was
  not listening; the users' live messages are held until then, so each client sees one
  ordered stream;
- when a channel's slot is served by another master (a failover, a slot migrated: the
  old node answers SSUBSCRIBE with ``MOVED``, or ends the subscription itself), the hub
  refreshes the slot map, subscribes the channel on the new master's link, and replays
  its user's gap the same way;
- a loop-back probe every ``PROBE_INTERVAL_SECONDS`` on each link, on a channel of its
  own, proves the connection still delivers (a silent one is torn down after two
  intervals) and marks how far the link is caught up: every event published after a
  received probe has a cursor larger than the probe's time less one publish lease
  (cursors older than that are replaced at publish).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from gevent.event import Event as Wakeup

from app.delivery.events import CURSORED, DISCONNECT, PROBE, RESET, Event
from app.delivery.links import Link
from app.delivery.replay import ReplayUnavailable, events_after
from app.delivery.routing import Routing
from app.ops import metrics

if TYPE_CHECKING:
    from app.delivery.waiting import Parked
    from app.store.redis_connect import RedisConnector

log = logging.getLogger(__name__)

DISCONNECTED = "disconnected by support staff"  # the close reason of a staff disconnect
PROBE_SCRIPT = r"""
local t = redis.call('TIME')
local now = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
redis.call(ARGV[2], KEYS[1], 'p\t' .. ARGV[1] .. '\t' .. now .. '\t{}')
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


class Hub(Routing):
    def __init__(self, connector: RedisConnector, service: Any, config: Any) -> None:
        self.connector = connector
        self.service = service
        self.config = config
        self.cluster = connector.mode == "cluster"
        self.hub_id = uuid.uuid4().hex[:12]
        self._feed = service.feed_channel
        self._feed_b = self._feed.encode()
        self.links: dict[str, Link] = {}  # by node name; one ("redis") outside a cluster
        self._where: dict[str, Link] = {}  # a needed channel -> the link it is subscribed on
        self._held: dict[str, list[Event]] = {}  # user -> live events held until a replay
        self._holds: dict[str, int] = {}  # user -> replays under way
        self.users: dict[str, set[Subscription]] = {}
        self.watchers: set[Subscription] = set()
        self.user_last: dict[str, int] = {}
        self.connected = Wakeup()
        self.stats = dict.fromkeys(
            ("received", "messages", "bad_messages", "reconnects", "resynced", "moved"), 0
        )
        self.on_reconnect: list[Callable[[], None]] = []
        self.on_disconnect: list[Callable[[], None]] = []  # a connection closed by staff
        self.stopping = False
        self._shut_down = False
        self._probe = service.redis.register_script(PROBE_SCRIPT)

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
            self._want(self.service.user_channel(user_id), user_id)
        subs.add(sub)
        return sub

    def confirmed(self, user_id: str, timeout: float) -> bool:
        """Wait until Redis confirmed this worker's subscription to ``user_id``'s channel:
        from then on every event published for the user reaches this worker."""
        if self._shut_down:  # its streams are closed at once: nothing to wait for
            return True
        return self._wait_confirmed(self.service.user_channel(user_id), timeout)

    def watch(self) -> Subscription:
        """A subscription to every new notification (the support dashboard's overview).

        Waits (at most ``REDIS_SOCKET_TIMEOUT``) for the feed channel to be confirmed; the
        overview is a live view with no replay, so it starts anyway if Redis is slow."""
        self.start()
        sub = Subscription(None, self.config.CLIENT_QUEUE_SIZE * 4)
        if self._shut_down:
            sub.close("server shutting down")
        if not self.watchers:
            self._want(self._feed, None)
        self.watchers.add(sub)
        self._wait_confirmed(self._feed, self.config.REDIS_SOCKET_TIMEOUT)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.close("closed")
        if sub.user_id is None:
            if sub in self.watchers:
                self.watchers.discard(sub)
                if not self.watchers:
                    self._release(self._feed)
            return
        subs = self.users.get(sub.user_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.users[sub.user_id]
                self.user_last.pop(sub.user_id, None)
                self._release(self.service.user_channel(sub.user_id))

    def needed(self, user_id: str | None) -> bool:
        """Does a stream on this worker still need the channel of ``user_id`` (None: the feed)?"""
        return bool(self.watchers) if user_id is None else user_id in self.users

    def connection_count(self) -> int:
        return sum(len(s) for s in self.users.values())

    def subscribed(self) -> int:
        """Channels subscribed, or being subscribed, on this worker's links."""
        return sum(link.channels.subscribed() for link in self.links.values())

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        if self._shut_down:
            return
        self.stopping = False
        if not self.links:
            if self.cluster:
                self._link_every_master()
            else:
                self._link(None)
        for link in list(self.links.values()):
            link.start()

    def shutdown(self, reason: str = "server shutting down") -> None:
        """Close every stream (clients reconnect elsewhere) and stop listening for good."""
        self.stopping = True
        self._shut_down = True
        for subs in list(self.users.values()):
            for sub in list(subs):
                sub.close(reason)
        for sub in list(self.watchers):
            sub.close(reason)
        for link in list(self.links.values()):
            link.stop()

    def force_reconnect(self) -> None:
        """Drop every subscriber connection; each link reconnects and restores."""
        for link in list(self.links.values()):
            link.force_reconnect()

    def link_down(self, link: Link) -> None:
        if not any(other.connected for other in self.links.values() if other is not link):
            self.connected.clear()

    def reconnected(self, users: set[str], caught_up_us: int) -> None:
        """A link is back and its channels confirmed: replay its users' gap."""
        self.stats["reconnects"] += 1
        metrics.HUB_RECONNECTS.inc()
        self.resync(users, caught_up_us)
        for callback in self.on_reconnect:
            callback()

    # -- delivering ------------------------------------------------------------------
    def send_probe(self, channel: str, command: str) -> None:
        self._probe(keys=[channel], args=[self.hub_id, command])

    def count_received(self, count: int) -> None:
        self.stats["received"] += count
        metrics.HUB_RECEIVED.inc(count)

    def dispatch(self, channel: bytes, raw: bytes) -> None:
        """One message: to the user's local streams, or (the feed) to the dashboard watchers."""
        try:
            event = Event.from_wire(raw)
        except (ValueError, UnicodeDecodeError):
            self.stats["bad_messages"] += 1
            log.warning("hub %s: ignoring malformed message %r", self.hub_id, raw[:200])
            return
        if event.kind == PROBE:
            return
        if event.kind == DISCONNECT:
            self._disconnect(event)
            return
        self.stats["messages"] += 1
        if channel == self._feed_b:
            for sub in tuple(self.watchers):
                sub.offer(event)
        else:
            self._deliver(event)

    def _deliver(self, event: Event) -> None:
        held = self._held.get(event.user_id)
        if held is not None:  # a replay for the user is under way: after it
            held.append(event)
        else:
            self._offer(event)

    def _offer(self, event: Event) -> None:
        subs = self.users.get(event.user_id)
        if subs:
            if event.kind in CURSORED and event.seq is not None:
                self.user_last[event.user_id] = max(event.seq, self.user_last.get(event.user_id, 0))
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

    def hold(self, users: set[str]) -> None:
        """Hold the users' live events until ``release`` (a replay for them is coming)."""
        for user in users:
            self._holds[user] = self._holds.get(user, 0) + 1
            self._held.setdefault(user, [])

    def release(self, users: set[str], deliver: bool) -> None:
        """One replay for ``users`` is done (``deliver``: the held events follow it) or
        failed (they are dropped: the next replay, from the last cursor delivered, has them)."""
        for user in users:
            count = self._holds.get(user, 0) - 1
            if not deliver:
                self._held[user] = []
            if count > 0:
                self._holds[user] = count
                continue
            self._holds.pop(user, None)
            for event in self._held.pop(user, []):
                self._offer(event)

    def resync(self, users: set[str], caught_up_us: int) -> None:
        """Replay, per user, what was published while the hub was not listening."""
        floor = max(caught_up_us - int(self.config.PUBLISH_LEASE_SECONDS * 1_000_000) - 1, 0)
        # a batch published meanwhile may still be marked in the outbox for a moment: its
        # clean-up waits OUTBOX_CLEANUP_DELAY_SECONDS, at most a tenth of the lease
        settle_until = time.monotonic() + self.config.PUBLISH_LEASE_SECONDS / 5
        for user_id in users:
            if user_id not in self.users:
                continue
            cursor = max(self.user_last.get(user_id, 0), floor)
            try:
                events = events_after(
                    self.service, user_id, cursor, self.config.REPLAY_LIMIT, False, settle_until
                )
            except ReplayUnavailable as exc:
                log.warning("hub %s: resync for a user failed: %s", self.hub_id, exc)
                continue
            if events is None:
                events = [Event(RESET, user_id, None, b'{"reason":"too many missed","cursor":null}')]
            for event in events:
                self._offer(event)
            self.stats["resynced"] += len(events)
