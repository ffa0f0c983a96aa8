"""One client's view of its user's events: the session engine both transports share.

A session owns everything a stream takes: its per-user slot (``MAX_STREAMS_PER_USER``),
its hub subscription, its gauges and log lines. ``open`` registers with the hub first,
waits until Redis confirmed the worker's subscription to the user's channel (a 503 after
``REDIS_SOCKET_TIMEOUT``), then reads the replay of what the client missed after its
cursor; live events after that
are deduplicated against the last cursor sent, so the hand-over from replay to live
neither loses nor repeats an event. Whatever fails while opening gives all of it back
(``open`` closes on any error), and ``close`` is idempotent, so the one owner of a session
(the request until the hand-off, then the stream) can always call it.
"""

from __future__ import annotations

import time
from collections import deque

from app.access.ratelimit import StreamSlot
from app.access.tokens import Subscriber
from app.delivery.events import CURSORED, NOTIFICATION, RESET, Event
from app.delivery.hub import SLOW_CONSUMER, Hub, Subscription
from app.delivery.replay import ReplayUnavailable, current_cursor, events_after
from app.errors import ApiError
from app.ops import metrics

MAX_CURSOR = 2**63 - 1  # cursors are BSON int64


def parse_cursor(raw: str | None, field: str) -> int | None:
    """A client's resume cursor: ASCII digits within int64, or a 400 naming ``field``.

    Checked before anything is subscribed. ``None`` or blank means "no cursor" (live only).
    """
    if raw is None or not raw.strip():
        return None
    value = raw.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 19 or int(value) > MAX_CURSOR:
        raise ApiError(
            400, "invalid_cursor", f"{field}: must be a cursor (an integer 0-{MAX_CURSOR})", field=field
        )
    return int(value)


class StreamSession:
    """Resume, then live, in cursor order; the owner of the stream's slot and subscription."""

    __slots__ = (
        "hub",
        "transport",
        "subscriber",
        "cursor",
        "last_seq",
        "sub",
        "slot",
        "tracker",
        "connection",
        "replayed",
    )

    def __init__(
        self,
        hub: Hub,
        subscriber: Subscriber,
        cursor: int | None,
        transport: str = "sse",
        slot: StreamSlot | None = None,
        traced: bool = False,
    ) -> None:
        self.hub = hub
        self.transport = transport
        self.subscriber = subscriber
        self.cursor = cursor
        self.last_seq: int | None = None
        self.sub: Subscription | None = None
        self.slot = slot  # this stream's place under MAX_STREAMS_PER_USER
        self.tracker: metrics.StreamTracker | None = None
        # A client's own stream (not a staff viewer's): its writes go into the delivery trace.
        self.connection = hub.service.receipts.connection(transport) if traced else None
        # A catch-up's events, sent before what is queued; None (no deque block, ~760 B per
        # idle stream) when there are none.
        self.replayed: deque[Event] | None = None

    def open(self) -> list[Event]:
        """Subscribe, then read the replay; on any failure everything taken is given back."""
        try:
            return self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> list[Event]:
        user_id = self.subscriber.user_id
        config = self.hub.config
        self.sub = self.hub.subscribe(user_id)
        self.sub.connection = self.connection
        self.sub.since = time.time()
        self.tracker = metrics.StreamTracker(self.transport, user_id)
        # Live means "published after this stream opened": the replay is read only once
        # Redis confirmed this worker's subscription to the user's channel, so an event
        # published meanwhile is in the replay or arrives live (deduplicated below).
        if not self.hub.confirmed(user_id, config.REDIS_SOCKET_TIMEOUT):
            raise ApiError(503, "unavailable", "cannot subscribe to live notifications now, retry")
        if self.cursor is None:
            return []
        try:
            events = events_after(self.hub.service, user_id, self.cursor, config.REPLAY_LIMIT, strict=True)
        except ReplayUnavailable:
            raise ApiError(503, "unavailable", "cannot replay missed notifications now, retry") from None
        if events is None:
            current = current_cursor(self.hub.service, user_id)
            self.last_seq = current
            metrics.RESETS.inc()
            return [Event.reset(user_id, current, "unknown or expired cursor: reload history")]
        self.last_seq = events[-1].seq if events else self.cursor
        self.tracker.replayed(len(events))
        if self.connection is not None:
            for event in events:
                if event.kind == NOTIFICATION:
                    self.hub.service.receipts.sent(event.notification_id(), self.connection)
        return events

    def next(self, timeout: float | None) -> Event | None:
        """The next event to send, or None when ``timeout`` passed with nothing to send.

        ``timeout=None`` waits for the next wake-up of the subscription (the wheel in
        ``app/delivery/waiting.py`` wakes it for heartbeats, without a timer per wait).
        """
        sub = self.sub
        assert sub is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if sub.behind is not None and not sub.closed:
                self._catch_up()
            if self.replayed:
                event = self._next_replayed()
                if self._accept(event):
                    return event
                continue
            event = sub.get(None if deadline is None else max(deadline - time.monotonic(), 0))
            if event is None:
                if sub.behind is not None and not sub.closed:
                    continue  # woken to catch up
                return None
            if self._accept(event):
                return event

    def _catch_up(self) -> None:
        """The hub dropped this stream's full queue (``Subscription``): read what it held
        from the replay, after the last event sent. Still sending the previous catch-up's
        events, the client is slow after all: closed, it resumes from its cursor."""
        sub = self.sub
        assert sub is not None and sub.behind is not None
        cursor = sub.behind if self.last_seq is None else self.last_seq
        sub.behind = None
        if self.replayed:
            self._slow()
            return
        user_id, config = self.subscriber.user_id, self.hub.config
        # a burst is often the relay's: its batches may stay marked in the outbox a moment
        settle_until = time.monotonic() + config.PUBLISH_LEASE_SECONDS / 5
        try:
            events = events_after(self.hub.service, user_id, cursor, config.REPLAY_LIMIT, False, settle_until)
        except ReplayUnavailable:
            self._slow()
            return
        metrics.CATCH_UPS.inc()
        if events is None:
            metrics.RESETS.inc()
            events = [Event.reset(user_id, None, "too many missed: reload history")]
        self.replayed = deque(events) if events else None

    def _next_replayed(self) -> Event:
        assert self.replayed
        event = self.replayed.popleft()
        if not self.replayed:
            self.replayed = None
        return event

    def _slow(self) -> None:
        assert self.sub is not None
        self.replayed = None
        self.sub.behind = None
        self.sub.close(SLOW_CONSUMER)

    def take(self) -> Event | None:
        """The next queued event to send, never waiting (the flusher writes parked streams).
        None once the stream must catch up: it does that itself."""
        sub = self.sub
        assert sub is not None
        if sub.behind is not None and self.replayed:  # full again before the last catch-up was sent
            self._slow()
            return None
        while self.replayed:
            event = self._next_replayed()
            if self._accept(event):
                return event
        if sub.behind is not None:
            return None
        while sub.queue:
            event = sub.get(0)  # something is queued: returns at once
            if event is not None and self._accept(event):
                return event
        return None

    def _accept(self, event: Event) -> bool:
        if event.kind in CURSORED:
            if self.last_seq is not None and event.seq is not None and event.seq <= self.last_seq:
                return False  # already sent (replay/live hand-over, hub resync)
            self.last_seq = event.seq
            if event.kind == NOTIFICATION:
                self.tracker.delivered()  # type: ignore[union-attr]
                if self.connection is not None:
                    self.hub.service.receipts.sent(event.notification_id(), self.connection)
        elif event.kind == RESET:
            self.last_seq = None
        return True

    @property
    def closed_reason(self) -> str | None:
        return self.sub.reason if self.sub is not None and self.sub.closed else None

    def expired(self) -> bool:
        return time.time() >= self.subscriber.expires_at

    def wait_budget(self, heartbeat: float) -> float:
        return max(min(heartbeat, self.subscriber.expires_at - time.time()), 0.0)

    def close(self) -> None:
        """Give back the slot, the subscription and the gauges; a second call does nothing."""
        slot, self.slot = self.slot, None
        sub = self.sub
        try:
            if slot is not None:
                slot.release()
        finally:
            if sub is not None:
                self.hub.unsubscribe(sub)
                if self.tracker is not None:
                    self.tracker.closed(sub.reason)
