"""Extensions, created unbound here and bound to an app in ``init_app``.

Per-app state lives in ``app.extensions``; nothing here connects at import time, and
MongoDB and Redis clients connect lazily on first use.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import gevent
import mongoengine
import pymongo
import redis
from flask import Flask, current_app
from gevent.event import AsyncResult
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.config import Config
from app.store.redis_connect import RedisConnector

log = logging.getLogger(__name__)


READ_PREFERENCE_OPTIONS = {"readpreference", "readpreferencetags", "maxstalenessseconds"}


def primary_only(uri: str) -> str:
    """``uri`` without read-preference options: every read goes to the primary, because a
    replay must see every notification a 201 answered for and a secondary may not have it
    yet (deploy/README.md)."""
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(key, value) for key, value in query if key.lower() not in READ_PREFERENCE_OPTIONS]
    if len(kept) == len(query):
        return uri
    log.warning("MONGO_URI names a read preference; notify reads from the primary only")
    return urlunsplit(parts._replace(query=urlencode(kept)))


class MongoDB:
    """Binds mongoengine's default connection to the app's ``MONGO_URI``."""

    def init_app(self, app: Flask, config: Config) -> None:
        try:
            mongoengine.disconnect(alias="default")
        except RuntimeError as exc:
            # An earlier app's client whose lock a killed greenlet left released (gevent):
            # out of the registry already; the second call forgets the rest of it.
            log.warning("could not close the previous MongoDB client: %s", exc)
            mongoengine.disconnect(alias="default")
        mongoengine.connect(
            host=primary_only(config.MONGO_URI),
            alias="default",
            connect=False,
            tz_aware=True,
            uuidRepresentation="standard",
            serverSelectionTimeoutMS=config.MONGO_TIMEOUT_MS,
            connectTimeoutMS=config.MONGO_TIMEOUT_MS,
            # Every call ends within this bound, whatever the database waits on: a caller
            # gets a 503 at once instead of queueing behind a locked collection (issue 25).
            timeoutMS=config.MONGO_OP_TIMEOUT_MS,
        )
        app.extensions["mongo"] = self

    @staticmethod
    def ping(timeout: float | None = None) -> None:
        with pymongo.timeout(timeout):
            mongoengine.get_db().command("ping")


class FairQueue:
    """The connection pool's free list, handing a released connection to the longest waiter.

    redis-py's default LIFO queue lets a greenlet that releases a connection take it again
    before a waiting greenlet runs, so a few hot readers can starve a writer indefinitely.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.queue: deque[Any] = deque()
        self._waiters: deque[AsyncResult] = deque()

    def put_nowait(self, item: Any) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.ready():
                waiter.set(item)
                return
        if len(self.queue) >= self.maxsize:
            raise queue.Full
        self.queue.append(item)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if self.queue:
            return self.queue.pop()
        if not block:
            raise queue.Empty
        waiter = AsyncResult()
        self._waiters.append(waiter)
        try:  # wait(), not get(): a caller's own gevent.Timeout must reach the caller
            waiter.wait(timeout)
        except BaseException:  # that timeout: a connection handed over meanwhile goes back
            self._forget(waiter)
            if waiter.ready():
                self.put_nowait(waiter.value)
            raise
        self._forget(waiter)
        if waiter.ready():
            return waiter.value
        raise queue.Empty

    def _forget(self, waiter: AsyncResult) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)


class RedisBudget:
    """How long one request may still wait for Redis, all its calls together.

    A Redis that hangs (a frozen process, a full network buffer) answers nothing until a
    socket timeout, retried once; a POST must not wait that long for a cache and a
    publish that the relay can do later. ``call`` cuts a call short at the budget (the
    connection is dropped by redis-py, so no reply is read by another caller) and raises
    ``redis.TimeoutError``; ``wait`` spends the budget waiting for an event.
    """

    def __init__(self, seconds: float) -> None:
        self.left = seconds

    def call(self, fn: Callable[[], Any]) -> Any:
        if self.left <= 0:
            raise redis.TimeoutError("the request's Redis budget is spent")
        started = time.monotonic()
        timer = gevent.Timeout(self.left)
        timer.start()
        try:
            return fn()
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            raise redis.TimeoutError(f"no answer from Redis within {self.left:.3f}s") from None
        finally:
            timer.close()
            self.left -= time.monotonic() - started

    def wait(self, event: Any) -> Any:
        """``event.wait`` for at most what is left; its result (None when the time ran out)."""
        started = time.monotonic()
        try:
            return event.wait(max(self.left, 0.0))
        finally:
            self.left -= time.monotonic() - started


class RedisStore:
    """A small blocking pool of command connections per worker process.

    The pool is capped, so a worker's Redis connections stay constant whatever the number
    of clients: callers wait their turn (first come, first served) for a free connection.
    """

    POOL_SIZE = 3

    def init_app(self, app: Flask, config: Config) -> None:
        connector = RedisConnector(config)
        app.extensions["redis_connector"] = connector
        app.extensions["redis"] = connector.command_client(
            max_connections=self.POOL_SIZE,
            client_name=f"notify-cmd:{os.getpid()}",
            timeout=config.REDIS_SOCKET_TIMEOUT,
            socket_timeout=config.REDIS_SOCKET_TIMEOUT,
            socket_connect_timeout=min(config.REDIS_SOCKET_TIMEOUT, 2.0),
            health_check_interval=30,
            queue_class=FairQueue,
            # One immediate retry replaces a pooled socket that died with a Redis
            # restart; no long backoff, so a POST during an outage answers at once.
            retry=Retry(NoBackoff(), 1),
        )

    @staticmethod
    def client() -> redis.Redis:
        return current_app.extensions["redis"]


mongo = MongoDB()
redis_store = RedisStore()
