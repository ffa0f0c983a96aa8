"""Web Push (issue 22): VAPID keys, browsers' subscriptions, and the sender that pushes a
notification to a user with no live stream. Off unless ``PUSH_ENABLED``."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """The blueprint and CLI always (the endpoints answer 404 while push is off); the
    sender, hooked after every publish, only when enabled."""
    from app.push import cli, views

    app.register_blueprint(views.bp)
    cli.register_cli(app)
    config = app.extensions["config"]
    if not config.PUSH_ENABLED:
        return
    from app.push.sender import PushSender
    from app.push.vapid import load_keys

    sender = PushSender(config, load_keys(config), app.extensions["redis"], app.extensions)
    app.extensions["notifications"].publisher.after_publish.append(sender.published)
    app.extensions["push"] = sender


def start_background(app: Flask) -> None:
    if "push" in app.extensions:
        app.extensions["push"].start()


def stop_background(app: Flask) -> None:
    if "push" in app.extensions:
        app.extensions["push"].stop()
