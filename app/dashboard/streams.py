"""The dashboard's live streams (SSE): every event as it happens, and figures every tick.

Both streams re-check the staff session every tick, so logging out, a disable or a
password reset ends them, and both end when the hub closes their subscription (shutdown,
slow consumer); the browser's EventSource then reconnects, and is refused if signed out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import redis
from pymongo.errors import PyMongoError

from app.dashboard.service import DashboardService
from app.delivery import sse
from app.delivery.events import NOTIFICATION, Event
from app.delivery.hub import Hub, Subscription
from app.delivery.session import StreamSession
from app.errors import ApiError

log = logging.getLogger(__name__)

RECENT_MAX = 50
StaffCheck = Callable[[], bool]


def frame(name: str, data: Any) -> bytes:
    """One SSE frame; orjson output is a single line, so it needs no escaping."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def still_signed_in(check: StaffCheck) -> bool:
    """A store outage is not a logout: keep streaming until the stores answer again."""
    try:
        return check()
    except (ApiError, redis.RedisError, PyMongoError):
        return True


def _drain(sub: Subscription) -> list[Event]:
    """Whatever is already queued, without waiting."""
    events = []
    while sub.queue:
        event = sub.get(0)
        if event is None:
            break
        events.append(event)
    return events


def overview_frames(
    hub: Hub, svc: DashboardService, check: StaffCheck, tick: float, retry_ms: int
) -> Iterator[bytes]:
    """Every new notification (the newest 50 of a burst) and the overview figures."""
    sub = hub.watch()
    try:
        yield sse.preamble(retry_ms)
        yield frame("stats", svc.overview())
        next_tick = time.monotonic() + tick
        while True:
            event = sub.get(max(next_tick - time.monotonic(), 0.0))
            if event is not None:
                batch = [e for e in (event, *_drain(sub)) if e.kind == NOTIFICATION]
                for item in batch[-RECENT_MAX:]:
                    yield item.sse()
            elif sub.closed:
                yield frame("closed", {"reason": sub.reason})
                return
            if time.monotonic() >= next_tick:
                if not still_signed_in(check):
                    yield frame("signed_out", {"reason": "the staff session ended"})
                    return
                yield frame("stats", svc.overview())
                next_tick = time.monotonic() + tick
    finally:
        hub.unsubscribe(sub)


def user_frames(
    session: StreamSession,
    initial: list[Event],
    svc: DashboardService,
    check: StaffCheck,
    tick: float,
    retry_ms: int,
) -> Iterator[bytes]:
    """One user's events as the user's own stream gets them, then a fresh status."""
    assert session.sub is not None
    sub = session.sub
    user_id = session.subscriber.user_id
    try:
        yield sse.preamble(retry_ms)
        for event in initial:
            yield event.sse()
        yield frame("status", _status(svc, user_id))
        next_tick = time.monotonic() + tick
        while True:
            event = session.next(max(next_tick - time.monotonic(), 0.0))
            if event is not None:
                yield event.sse()
                if not sub.queue:  # a burst gets one status update at its end
                    yield frame("status", _status(svc, user_id))
                if time.monotonic() < next_tick:
                    continue
            elif session.closed_reason is not None:
                yield frame("closed", {"reason": session.closed_reason})
                return
            if not still_signed_in(check):
                yield frame("signed_out", {"reason": "the staff session ended"})
                return
            yield frame("status", _status(svc, user_id))
            next_tick = time.monotonic() + tick
    finally:
        session.close()


def _status(svc: DashboardService, user_id: str) -> dict[str, Any]:
    try:
        return svc.user_status(user_id)
    except (ApiError, redis.RedisError) as exc:
        log.warning("dashboard status for a user failed: %s", exc)
        return {"user_id": user_id, "error": "live status is unavailable right now"}
