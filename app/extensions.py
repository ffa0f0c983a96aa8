"""Extensions, created unbound here and bound to an app in ``init_app``.

Per-app state lives in ``app.extensions``; nothing here connects at import time, and
MongoDB and Redis clients connect lazily on first use.
"""

from __future__ import annotations

import os
import queue
from collections import deque
from typing import Any

import gevent
import mongoengine
import pymongo
import redis
from flask import Flask, current_app
from flask_sock import Sock
from gevent.event import AsyncResult
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.config import Config


class MongoDB:
    """Binds mongoengine's default connection to the app's ``MONGO_URI``."""

    def init_app(self, app: Flask, config: Config) -> None:
        mongoengine.disconnect(alias="default")
        mongoengine.connect(
            host=config.MONGO_URI,
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
        try:
            return waiter.get(timeout=timeout)
        except gevent.Timeout:
            if waiter.ready():
                return waiter.value
            raise queue.Empty from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)


class RedisStore:
    """A small blocking pool of command connections per worker process.

    The pool is capped, so a worker's Redis connections stay constant whatever the number
    of clients: callers wait their turn (first come, first served) for a free connection.
    """

    POOL_SIZE = 3

    def init_app(self, app: Flask, config: Config) -> None:
        pool = redis.BlockingConnectionPool.from_url(
            config.REDIS_URL,
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
        app.extensions["redis"] = redis.Redis(connection_pool=pool)

    @staticmethod
    def client() -> redis.Redis:
        return current_app.extensions["redis"]


mongo = MongoDB()
redis_store = RedisStore()
sock = Sock()
