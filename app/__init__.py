"""Real-time notification service: the application factory.

``create_app`` builds a configured app; it never connects to a server (clients connect
lazily), so importing or creating the app is safe anywhere. Background greenlets (the
hub's Redis listener, the batcher, the outbox relay) start after fork, in the worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
from flask import Flask

from app.config import Config, ConfigError
from app.delivery.hub import Hub
from app.extensions import mongo, redis_store
from app.store.indexes import IndexGuard
from app.store.notifications import NotificationService

__all__ = ["create_app", "Config", "ConfigError"]

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)


def create_app(config: Config | dict[str, Any] | None = None) -> Flask:
    if config is None:
        config = Config.from_env()
    elif isinstance(config, dict):
        config = Config.from_env().with_overrides(**config)
    config.validate()

    app = Flask(
        __name__,
        template_folder=str(ROOT / "templates"),
        static_folder=str(ROOT / "static"),
    )
    app.config.update(config.flask_settings())
    app.extensions["config"] = config
    # Imported here, not at module level: metrics must not be imported before gunicorn
    # has set PROMETHEUS_MULTIPROC_DIR (app/ops/metrics.py).
    from app import dashboard, pages, preferences, push, topics
    from app.access import apikeys, cors, headers
    from app.api import fastpath
    from app.api import views as api_views
    from app.dashboard import cli as staff_cli
    from app.delivery import views as stream_views
    from app.errors import register_error_handlers
    from app.ops import body, health, logs, metrics, openapi
    from app.ops import cli as ops_cli

    logs.configure_logging(config)
    metrics.register_mongo_listener()  # before the MongoDB client is created

    mongo.init_app(app, config)
    redis_store.init_app(app, config)
    service = NotificationService(config, app.extensions["redis"])
    app.extensions["notifications"] = service
    hub = Hub(app.extensions["redis_connector"], service, config)
    hub.on_reconnect.append(service.publisher.outbox.wake_relay)
    app.extensions["hub"] = hub
    app.extensions["indexes"] = IndexGuard(config)

    for blueprint in (api_views.bp, stream_views.bp, pages.bp, health.bp, openapi.bp):
        app.register_blueprint(blueprint)
    register_error_handlers(app)
    headers.init_app(app)
    cors.init_app(app)
    logs.init_app(app)
    metrics.init_app(app)
    fastpath.init_app(app)  # before ProxyFix, which must see the request first
    if config.PROXY_HOPS:  # behind nginx: client address and scheme from X-Forwarded-*
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=config.PROXY_HOPS, x_proto=config.PROXY_HOPS)  # type: ignore[method-assign]
    body.init_app(app)  # outermost: every reader of a request body is under its deadline
    apikeys.init_app(app)
    ops_cli.register_ops_cli(app)
    topics.init_app(app)
    dashboard.init_app(app)
    staff_cli.register_cli(app)
    preferences.init_app(app)  # before push: the sender reads them
    push.init_app(app)
    return app


def start_background(app: Flask) -> None:
    """Start this worker's greenlets (index check, hub listener, batcher, relay, retention
    sweeper, topic fan-out, scheduler); once per process, after fork."""
    app.extensions["indexes"].start()
    from app.ops import metrics

    app.extensions["mongo_watch"] = metrics.watch_mongo_calls()
    app.extensions["notifications"].publisher.start()
    app.extensions["notifications"].retention.start()
    app.extensions["notifications"].scheduler.start()
    app.extensions["notifications"].receipts.start()
    app.extensions["hub"].start()
    app.extensions["topics"].start()
    from app import dashboard, push

    dashboard.start_background(app)
    push.start_background(app)


def stop_background(app: Flask) -> None:
    from app import push

    push.stop_background(app)
    app.extensions["presence"].stop()
    app.extensions["hub"].shutdown()
    app.extensions["notifications"].publisher.stop()
    app.extensions["topics"].stop()
    app.extensions["notifications"].retention.stop()
    app.extensions["notifications"].scheduler.stop()
    app.extensions["notifications"].receipts.stop()
    app.extensions["indexes"].stop()
    if "mongo_watch" in app.extensions:
        app.extensions.pop("mongo_watch").kill(block=False)


def drain_background(app: Flask, timeout: float = 5.0) -> None:
    """At worker exit: hand the fan-out being sent back, finish the outbox clean-up of the
    last publishes now.

    A marker left behind would make a relay publish its batch a second time once the
    lease ran out (gunicorn's ``worker_exit``; the clean-up waits a moment by design,
    ``OUTBOX_CLEANUP_DELAY_SECONDS``)."""
    app.extensions["topics"].worker.hand_off()  # first: its last page goes into the flush
    if not app.extensions["notifications"].publisher.outbox.flush(timeout):
        log.warning("outbox clean-up not finished at exit; the relay will repeat it")
    app.extensions["notifications"].receipts.flush()  # the last second's delivery records


def watch_worker_exit(app: Flask, alive: Callable[[], bool], poll: float = 0.2) -> None:
    """Close every stream, and hand the fan-out being sent to another worker, as soon as the
    worker is told to stop (gunicorn SIGTERM).

    gunicorn waits ``graceful_timeout`` for open connections; streams never finish on
    their own, so without this a deploy would hang for the whole timeout.
    """

    def watch() -> None:
        while alive():
            gevent.sleep(poll)
        app.extensions["hub"].shutdown()
        app.extensions["topics"].worker.hand_off()  # another worker goes on with it at once

    gevent.spawn(watch)
