"""Extensions, created unbound here and bound to an app in ``init_app``.

Per-app state lives in ``app.extensions``; nothing here connects at import time, and
MongoDB and Redis clients connect lazily on first use.
"""

from __future__ import annotations

import mongoengine
import redis
from flask import Flask, current_app
from flask_sock import Sock

from .config import Config


class MongoDB:
    """Binds mongoengine's default connection to the app's ``MONGO_URI``."""

    def init_app(self, app: Flask, config: Config) -> None:
        mongoengine.disconnect(alias="default")
        mongoengine.connect(
            host=config.MONGO_URI,
            alias="default",
            connect=False,
            tz_aware=True,
            serverSelectionTimeoutMS=config.MONGO_TIMEOUT_MS,
            connectTimeoutMS=config.MONGO_TIMEOUT_MS,
            socketTimeoutMS=max(config.MONGO_TIMEOUT_MS, 10000),
        )
        app.extensions["mongo"] = self

    @staticmethod
    def ping() -> None:
        mongoengine.get_db().command("ping")


class RedisStore:
    """A small blocking pool of command connections per worker process.

    The pool is capped, so a worker's Redis connections stay constant whatever the number
    of clients: callers wait briefly for a free connection instead of opening more.
    """

    POOL_SIZE = 3

    def init_app(self, app: Flask, config: Config) -> None:
        pool = redis.BlockingConnectionPool.from_url(
            config.REDIS_URL,
            max_connections=self.POOL_SIZE,
            timeout=config.REDIS_SOCKET_TIMEOUT,
            socket_timeout=config.REDIS_SOCKET_TIMEOUT,
            socket_connect_timeout=min(config.REDIS_SOCKET_TIMEOUT, 2.0),
            health_check_interval=30,
        )
        app.extensions["redis"] = redis.Redis(connection_pool=pool)

    @staticmethod
    def client() -> redis.Redis:
        return current_app.extensions["redis"]


mongo = MongoDB()
redis_store = RedisStore()
sock = Sock()
