"""Prometheus metrics: what the service did, summed over every gunicorn worker.

Under gunicorn, ``gunicorn.conf.py`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh
directory before any worker starts, so prometheus-client keeps each worker's values in
memory-mapped files there and ``/metrics`` adds them up, whichever worker answers.
Without that variable (the Flask test client, ``flask`` CLI) values live in this process.

The environment variable is read when ``prometheus_client`` is first imported, which is
why nothing imports this module before the worker has forked.

``/metrics`` answers a ``Bearer METRICS_TOKEN`` when that is set; without a token it is
open outside production and refused (403) in production.
"""

from __future__ import annotations

import hmac
import os
import time
from typing import Any

import gevent
from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from pymongo import monitoring

from app.access.tokens import bearer_token
from app.errors import ApiError
from app.ops.logs import current_request_id, log_event
from app.ops.mongocalls import MONGO_CALLS

TRANSPORTS = ("sse", "ws")

CREATED = Counter("notify_notifications_created", "Notifications stored in MongoDB.")
PUBLISHED = Counter("notify_notifications_published", "Notifications published on Redis (live and relay).")
DELIVERED = Counter(
    "notify_notifications_delivered", "Notification frames handed to a client connection.", ["transport"]
)
PUBLISH_HELD = Counter(
    "notify_publish_held_seconds", "Seconds new notifications waited for the cursor write-back to catch up."
)
RESEQUENCED = Counter(
    "notify_cursors_replaced",
    "Proposed cursors replaced at publish (another worker published a later one first), written back.",
)
RELAYED = Counter("notify_notifications_relayed", "Published late by the outbox relay (insert-publish gap).")
SCHEDULED_SENT = Counter("notify_notifications_scheduled_sent", "Scheduled notifications published when due.")
REPLAYED = Counter("notify_notifications_replayed", "Missed notifications replayed to a resuming client.")
RESETS = Counter("notify_stream_resets", "Streams told to reset (cursor unknown or expired).")
CATCH_UPS = Counter(
    "notify_stream_catch_ups", "Streams whose full queue was dropped and read again from the replay (bursts)."
)
DROPPED_SLOW = Counter("notify_slow_consumers_dropped", "Client connections closed for falling behind.")
OPEN_CONNECTIONS = Gauge(
    "notify_open_connections", "Open stream connections.", ["transport"], multiprocess_mode="livesum"
)
REQUEST_LATENCY = Histogram(
    "notify_http_request_duration_seconds",
    "Time to the response headers, by Flask endpoint (streams: until the stream starts).",
    ["endpoint", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
REQUESTS = Counter("notify_http_requests", "HTTP requests answered.", ["endpoint", "method", "status"])
REDIS_ERRORS = Counter("notify_redis_errors", "Redis commands or connections that failed.", ["where"])
MONGO_ERRORS = Counter("notify_mongodb_errors", "MongoDB commands or heartbeats that failed.", ["kind"])
INDEXES_MISSING = Gauge(
    "notify_mongodb_indexes_missing",
    "Declared MongoDB indexes the database lacks (AUTO_CREATE_INDEXES off, or creation failed).",
    multiprocess_mode="livemax",
)
MONGO_OLDEST_CALL = Gauge(
    "notify_mongodb_oldest_call_seconds",
    "Age of the oldest MongoDB call in flight (0 when none); seconds mean the database stalls.",
    multiprocess_mode="livemax",
)
PUSH_SENT = Counter("notify_push_sent", "Web Push messages a push service accepted.")
PUSH_SKIPPED = Counter(
    "notify_push_skipped",
    "Notifications not pushed: online (the user has a live stream), rate_limited (per recipient),"
    " preferences (the user turned push off for the category), deferred_full (too many held back).",
    ["reason"],
)
PUSH_DEFERRED = Counter(
    "notify_push_deferred", "Pushes held back by the user's quiet hours, to be sent when they end."
)
PUSH_FAILED = Counter(
    "notify_push_failed",
    "Web Push messages not sent: refused (4xx), gave_up (retries spent), queue_full, error.",
    ["reason"],
)
PUSH_REMOVED = Counter(
    "notify_push_subscriptions_removed",
    "Push subscriptions removed: gone (404/410 from the push service), refused (non-public address).",
    ["reason"],
)
HUB_RECONNECTS = Counter("notify_hub_reconnects", "Times a worker's Redis subscriber reconnected.")
HUB_RECEIVED = Counter(
    "notify_hub_messages_received",
    "Pub/sub messages the workers' hubs read (loop-back probes excluded): what Redis sent them.",
)

# Children bound once: the hot paths only call .inc().
DELIVERED_BY = {t: DELIVERED.labels(t) for t in TRANSPORTS}
OPEN_BY = {t: OPEN_CONNECTIONS.labels(t) for t in TRANSPORTS}
TALLY_FLUSH_SECONDS = 1.0


class _DeliveryTally:
    """Deliveries counted as plain ints, added to ``DELIVERED`` once a second (and at a scrape).

    A multiprocess counter's ``inc`` takes a lock and writes its memory-mapped file: per
    delivery that was 5.5% of a worker's CPU during broadcasts (py-spy, bench/README.md)."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(TRANSPORTS, 0)
        self._greenlet: gevent.Greenlet | None = None

    def add(self, transport: str, count: int = 1) -> None:
        self.counts[transport] += count
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def flush(self) -> None:
        for transport, count in self.counts.items():
            if count:
                self.counts[transport] = 0
                DELIVERED_BY[transport].inc(count)

    def _run(self) -> None:
        while True:
            gevent.sleep(TALLY_FLUSH_SECONDS)
            self.flush()


DELIVERIES = _DeliveryTally()

bp = Blueprint("metrics", __name__)


def redis_error(where: str) -> None:
    REDIS_ERRORS.labels(where).inc()


class _MongoErrors(monitoring.CommandListener, monitoring.ServerHeartbeatListener):
    """Counts failed MongoDB commands and failed heartbeats (server down) for every client."""

    def started(self, event: Any) -> None:
        pass

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        kind = "heartbeat" if isinstance(event, monitoring.ServerHeartbeatFailedEvent) else "command"
        MONGO_ERRORS.labels(kind).inc()


_listener_registered = False


def register_mongo_listener() -> None:
    """Register once per process, before the MongoDB client is created (``create_app``)."""
    global _listener_registered
    if not _listener_registered:
        monitoring.register(_MongoErrors())
        monitoring.register(MONGO_CALLS)
        _listener_registered = True


def oldest_mongo_call() -> float:
    """The oldest MongoDB call in flight in this worker, in seconds; also sets the gauge."""
    age = MONGO_CALLS.oldest_call_seconds()
    MONGO_OLDEST_CALL.set(age)
    return age


def watch_mongo_calls(interval: float = 0.5) -> gevent.Greenlet:
    """Keep this worker's ``notify_mongodb_oldest_call_seconds`` current (after fork)."""

    def run() -> None:
        while True:
            oldest_mongo_call()
            gevent.sleep(interval)

    return gevent.spawn(run)


def init_app(app: Flask) -> None:
    register_mongo_listener()
    app.before_request(_start_timer)
    app.after_request(_observe)
    app.register_blueprint(bp)


def _start_timer() -> None:
    g.metrics_started = time.perf_counter()


_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _observe(response: Response) -> Response:
    started = g.get("metrics_started")
    if started is not None:
        observe_request(request.endpoint or "unmatched", request.method, response.status_code, started)
    return response


def observe_request(endpoint: str, method: str, status: int, started: float) -> None:
    """Count one request and its latency (``endpoint``, never the raw path, keeps labels few)."""
    key = (endpoint, method, status)
    children = _children.get(key)
    if children is None:
        children = (REQUEST_LATENCY.labels(endpoint, method), REQUESTS.labels(endpoint, method, str(status)))
        _children[key] = children
    children[0].observe(time.perf_counter() - started)
    children[1].inc()


def registry() -> Any:
    """The registry to expose: all workers' files in multiprocess mode, else this process."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return REGISTRY
    collected = CollectorRegistry()
    multiprocess.MultiProcessCollector(collected, path=path)
    return collected


@bp.get("/metrics")
def metrics() -> Response:
    config = current_app.extensions["config"]
    token = config.METRICS_TOKEN
    if token:
        given = bearer_token() or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError(
                401,
                "unauthorized",
                "send Authorization: Bearer <METRICS_TOKEN>",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
    elif config.is_production:
        raise ApiError(403, "forbidden", "metrics are disabled: set METRICS_TOKEN to enable /metrics")
    DELIVERIES.flush()
    oldest_mongo_call()
    return Response(generate_latest(registry()), mimetype=CONTENT_TYPE_LATEST)


class StreamTracker:
    """One open stream's metrics and its open/close log lines."""

    __slots__ = ("transport", "user_id", "request_id", "started", "_open")

    def __init__(self, transport: str, user_id: str) -> None:
        self.transport = transport if transport in OPEN_BY else "sse"
        self.user_id = user_id
        self.request_id = current_request_id()
        self.started = time.monotonic()
        self._open = True
        OPEN_BY[self.transport].inc()
        log_event("stream open", transport=self.transport, user_id=user_id, request_id=self.request_id)

    def replayed(self, count: int) -> None:
        if count:
            REPLAYED.inc(count)
            DELIVERIES.add(self.transport, count)

    def delivered(self) -> None:
        DELIVERIES.add(self.transport)

    def closed(self, reason: str) -> None:
        if not self._open:
            return
        self._open = False
        OPEN_BY[self.transport].dec()
        DELIVERIES.flush()
        log_event(
            "stream close",
            transport=self.transport,
            user_id=self.user_id,
            request_id=self.request_id,
            reason=reason or "closed",
            duration_ms=round((time.monotonic() - self.started) * 1000, 1),
        )
