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

from .config import Config, ConfigError
from .extensions import mongo, redis_store, sock
from .hub import Hub
from .notifications import NotificationService

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
    from . import apikeys, cli_ops, logging_setup, metrics

    logging_setup.configure_logging(config)
    metrics.register_mongo_listener()  # before the MongoDB client is created

    mongo.init_app(app, config)
    redis_store.init_app(app, config)
    sock.init_app(app)
    service = NotificationService(config, app.extensions["redis"])
    app.extensions["notifications"] = service
    hub = Hub(config.REDIS_URL, service, config)
    hub.on_reconnect.append(service.publisher.outbox.wake_relay)
    app.extensions["hub"] = hub

    from . import api, health, openapi, stream
    from .errors import register_error_handlers

    app.register_blueprint(api.bp)
    app.register_blueprint(stream.bp)
    from . import demo

    app.register_blueprint(demo.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    register_error_handlers(app)
    logging_setup.init_app(app)
    metrics.init_app(app)
    from . import lean_api

    lean_api.init_app(app)  # before ProxyFix, which must see the request first
    if config.PROXY_HOPS:  # behind nginx: client address and scheme from X-Forwarded-*
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=config.PROXY_HOPS, x_proto=config.PROXY_HOPS)  # type: ignore[method-assign]
    apikeys.init_app(app)
    cli_ops.register_ops_cli(app)
    from . import cli, dashboard

    dashboard.init_app(app)
    cli.register_cli(app)
    return app


def start_background(app: Flask) -> None:
    """Start this worker's greenlets (hub listener, batcher, relay, retention sweeper); once
    per process, after fork."""
    app.extensions["notifications"].publisher.start()
    app.extensions["notifications"].retention.start()
    app.extensions["hub"].start()
    from . import dashboard

    dashboard.start_background(app)


def stop_background(app: Flask) -> None:
    app.extensions["presence"].stop()
    app.extensions["hub"].shutdown()
    app.extensions["notifications"].publisher.stop()
    app.extensions["notifications"].retention.stop()


def drain_background(app: Flask, timeout: float = 5.0) -> None:
    """At worker exit: finish the outbox clean-up of the last publishes now.

    A marker left behind would make a relay publish its batch a second time once the
    lease ran out (gunicorn's ``worker_exit``; the clean-up waits a moment by design,
    ``OUTBOX_CLEANUP_DELAY_SECONDS``)."""
    if not app.extensions["notifications"].publisher.outbox.flush(timeout):
        log.warning("outbox clean-up not finished at exit; the relay will repeat it")


def watch_worker_exit(app: Flask, alive: Callable[[], bool], poll: float = 0.2) -> None:
    """Close every stream as soon as the worker is told to stop (gunicorn SIGTERM).

    gunicorn waits ``graceful_timeout`` for open connections; streams never finish on
    their own, so without this a deploy would hang for the whole timeout.
    """

    def watch() -> None:
        while alive():
            gevent.sleep(poll)
        app.extensions["hub"].shutdown()

    gevent.spawn(watch)
