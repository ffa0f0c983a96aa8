"""Web Push to users who have no live stream, off every request's path.

The publisher hands each batch it published to ``PushSender.published`` (no I/O there:
the documents go into a bounded queue). One dispatcher greenlet per worker takes them
and runs them, up to ``BATCH`` at a time, in a pool of ``PUSH_CONCURRENCY`` greenlets,
with one read each of subscriptions and presence per batch (a user who never enabled push
costs no call of its own): a user with an open stream on
any instance (this worker's hub, else presence) gets nothing, nor one whose preferences
turn push off for the notification's category (``app/preferences/``); one in quiet hours
gets it when they end (``deferred.py``); else, within the
per-recipient rate limit, every subscription of the user gets the notification,
encrypted (RFC 8291, aes128gcm) and signed (VAPID, RFC 8292) by pywebpush, with
``PUSH_TTL_SECONDS`` as its TTL (pywebpush's default of 0 lets a push service drop a push
for a browser that is offline). 404 / 410 remove the subscription; 429, 5xx and network
errors are retried with doubling backoff (``Retry-After`` honoured, capped) up to
``PUSH_MAX_ATTEMPTS``; anything else is logged.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import gevent
import orjson
import redis
import requests
from gevent.pool import Pool
from gevent.queue import Full, Queue
from pymongo.errors import PyMongoError
from pywebpush import WebPushException, webpush

from app.config import Config
from app.ops import metrics
from app.preferences.store import PreferenceCache
from app.push import subscriptions
from app.push.deferred import DeferredPushes
from app.push.endpoints import EndpointRefused, EndpointUnresolved, check_endpoint
from app.push.transport import push_session
from app.push.vapid import VapidKeys
from app.store.serialization import public_json

log = logging.getLogger(__name__)

QUEUE_SIZE = 10_000
BATCH = 500  # notifications whose recipients are looked up together
MAX_PAYLOAD_BYTES = 3000  # a push service takes 4 KB of ciphertext; headroom for the record
JWT_SECONDS = 12 * 3600
MAX_RETRY_AFTER = 60.0
URGENCY = {"low": "low", "normal": "normal", "high": "high"}


def payload_of(doc: dict[str, Any]) -> bytes:
    """What the service worker shows: the notification without its per-user state.

    Past ``MAX_PAYLOAD_BYTES`` it is shortened, in this order, and marked ``truncated``:
    ``data`` dropped, the message cut, actions dropped from the last."""
    note = public_json(doc)
    body = {k: note[k] for k in ("id", "title", "message", "category", "priority", "actions", "created_at")}
    body["data"] = note["data"]
    raw = orjson.dumps(body)
    if len(raw) <= MAX_PAYLOAD_BYTES:
        return raw
    body.update(data={}, truncated=True)
    raw = orjson.dumps(body)
    while len(raw) > MAX_PAYLOAD_BYTES and (body["message"] or body["actions"]):
        over = len(raw) - MAX_PAYLOAD_BYTES  # a character is at least one byte: cut that many
        if body["message"]:
            body["message"] = body["message"][: max(0, len(body["message"]) - over)]
        else:
            body["actions"] = body["actions"][:-1]
        raw = orjson.dumps(body)
    return raw


class PushSender:
    def __init__(
        self, config: Config, keys: VapidKeys, redis_client: redis.Redis, extensions: dict[str, Any]
    ) -> None:
        self.config = config
        self.keys = keys
        self.redis = redis_client
        self.extensions = extensions  # the hub and presence, made after this
        self.allow_local = bool(config.PUSH_ALLOW_LOCAL_ENDPOINTS) or config.APP_ENV == "development"
        self.session = push_session(self.allow_local, config.PUSH_CONCURRENCY)
        self.queue: Queue = Queue(QUEUE_SIZE)
        self.pool = Pool(config.PUSH_CONCURRENCY)
        self.prefix = config.KEY_PREFIX + "push:rl:"
        self._greenlet: gevent.Greenlet | None = None
        self.preferences: PreferenceCache = extensions["preferences"].cache
        self.deferred = DeferredPushes(
            config.PUSH_DEFERRED_POLL_SECONDS,
            config.MONGO_OP_TIMEOUT_MS / 1000,
            self.deliver_batch,
        )

    # -- the publisher's hook: no I/O ---------------------------------------------------
    def published(self, docs: list[dict[str, Any]]) -> None:
        self.start()
        for doc in docs:
            try:
                self.queue.put_nowait(doc)
            except Full:
                metrics.PUSH_FAILED.labels("queue_full").inc()

    def start(self) -> None:
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._dispatch)
        self.deferred.start()

    def stop(self) -> None:
        self.deferred.stop()
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None
        self.pool.kill(block=False)

    def _dispatch(self) -> None:
        while True:
            batch = [self.queue.get()]
            while len(batch) < BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            self.deliver_batch(batch)  # its pushes go to the pool (and wait while it is full)

    # -- a batch of notifications --------------------------------------------------------
    def deliver_batch(self, docs: list[dict[str, Any]]) -> None:
        """Who of the batch's users gets a push, in one read each of preferences (cached),
        subscriptions and presence for the whole batch; then each push in the pool."""
        try:
            prefs = self.preferences.get_many({doc["user_id"] for doc in docs})  # cached by the publish
            wanted = []
            for doc in docs:
                if prefs[doc["user_id"]].push(doc.get("category")):
                    wanted.append(doc)
                else:
                    metrics.PUSH_SKIPPED.labels("preferences").inc()
            if not wanted:
                return
            limit = self.config.PUSH_MAX_SUBSCRIPTIONS_PER_USER
            targets = subscriptions.for_users([doc["user_id"] for doc in wanted], limit)
            wanted = [doc for doc in wanted if doc["user_id"] in targets]  # the rest never enabled push
            online = self.online_users({doc["user_id"] for doc in wanted})
            now = datetime.now(timezone.utc)
            for doc in wanted:
                user_id = doc["user_id"]
                quiet = prefs[user_id].quiet_hours
                if user_id in online:
                    metrics.PUSH_SKIPPED.labels("online").inc()
                elif quiet is not None and quiet.active(now):
                    self.deferred.defer(doc, quiet.ends_after(now))
                else:
                    self.pool.spawn(self._push, doc, targets[user_id])
        except (PyMongoError, redis.RedisError) as exc:
            metrics.PUSH_FAILED.labels("error").inc(len(docs))
            log.warning("push for %d notifications not sent: %s", len(docs), exc)
        except Exception:  # the dispatcher never dies
            metrics.PUSH_FAILED.labels("error").inc(len(docs))
            log.exception("push for %d notifications failed", len(docs))

    def _push(self, doc: dict[str, Any], targets: list[subscriptions.Subscription]) -> None:
        user_id = doc["user_id"]
        try:
            if not self.within_rate(user_id):
                return
            payload = payload_of(doc)
            urgency = URGENCY.get(doc.get("priority") or "normal", "normal")
            for target in targets:
                self.send(target, payload, urgency)
        except redis.RedisError as exc:
            metrics.PUSH_FAILED.labels("error").inc()
            log.warning("push for %s not sent: %s", user_id, exc)
        except Exception:  # a pool greenlet never dies silently
            metrics.PUSH_FAILED.labels("error").inc()
            log.exception("push for %s failed", user_id)

    def online_users(self, user_ids: set[str]) -> set[str]:
        """Those of ``user_ids`` with an open stream here (the hub) or on any instance (presence)."""
        hub_users = self.extensions["hub"].users
        here = {
            u for u in user_ids if any(s.connection and not s.closed for s in list(hub_users.get(u) or ()))
        }
        rest = list(user_ids - here)
        if not rest:
            return here
        try:
            counts = self.extensions["presence"].users_connections(rest)
        except redis.RedisError as exc:  # unknown: a push too many beats a lost one
            log.warning("presence unknown for push to %d users: %s", len(rest), exc)
            return here
        return here | {u for u, n in counts.items() if n > 0}

    def within_rate(self, user_id: str) -> bool:
        limit = self.config.PUSH_PER_USER_PER_MINUTE
        if limit <= 0:
            return True
        key = f"{self.prefix}{user_id}:{int(time.time() // 60)}"
        pipe = self.redis.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 120)
        count = int(pipe.execute()[0])
        if count > limit:
            metrics.PUSH_SKIPPED.labels("rate_limited").inc()
            return False
        return True

    # -- one subscription --------------------------------------------------------------
    def send(self, target: subscriptions.Subscription, payload: bytes, urgency: str) -> None:
        """Send with retries; returns once sent, removed or given up."""
        delay = self.config.PUSH_RETRY_BASE_SECONDS
        for attempt in range(1, self.config.PUSH_MAX_ATTEMPTS + 1):
            try:
                self._post(target, payload, urgency)
                metrics.PUSH_SENT.inc()
                return
            except EndpointUnresolved as exc:
                wait = delay
                log.info("push to %s failed (attempt %d): %s", _origin(target.endpoint), attempt, exc)
            except EndpointRefused as exc:
                self._remove(target, "refused", str(exc))
                return
            except WebPushException as exc:
                status = exc.status_code
                if status in (404, 410):
                    self._remove(target, "gone", f"push service answered {status}")
                    return
                if status is None or not (status == 429 or status >= 500):
                    metrics.PUSH_FAILED.labels("refused").inc()
                    log.warning("push to %s refused: %s", _origin(target.endpoint), exc.message[:200])
                    return
                wait = _retry_after(exc.retry_after, delay)
            except requests.RequestException as exc:
                wait = delay
                log.info("push to %s failed (attempt %d): %s", _origin(target.endpoint), attempt, exc)
            if attempt < self.config.PUSH_MAX_ATTEMPTS:
                gevent.sleep(wait)
                delay *= 2
        metrics.PUSH_FAILED.labels("gave_up").inc()
        log.warning(
            "push to %s given up after %d attempts", _origin(target.endpoint), self.config.PUSH_MAX_ATTEMPTS
        )

    def _post(self, target: subscriptions.Subscription, payload: bytes, urgency: str) -> None:
        check_endpoint(target.endpoint, self.allow_local)  # DNS may have changed since it was stored
        claims: dict[str, str | int] = {
            "sub": self.keys.subject,
            "aud": _origin(target.endpoint),
            "exp": int(time.time()) + JWT_SECONDS,
        }
        webpush(
            target.info(),
            data=payload.decode(),
            vapid_private_key=self.keys.signer,
            vapid_claims=claims,
            ttl=self.config.PUSH_TTL_SECONDS,
            timeout=self.config.PUSH_TIMEOUT_SECONDS,
            headers={"Urgency": urgency},
            requests_session=self.session,
        )

    def _remove(self, target: subscriptions.Subscription, reason: str, why: str) -> None:
        subscriptions.remove_id(target.id)
        metrics.PUSH_REMOVED.labels(reason).inc()
        log.info("push subscription of %s at %s removed: %s", target.user_id, _origin(target.endpoint), why)


def _origin(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}"


def _retry_after(header: str | None, default: float) -> float:
    """``Retry-After`` in seconds when it is a number, capped; else ``default``."""
    try:
        return min(max(float(header), 0.0), MAX_RETRY_AFTER) if header else default
    except ValueError:
        return default
