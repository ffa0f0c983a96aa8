"""Topics: services subscribe users to a named topic and publish to all of them at once.

``init_app`` puts the subscriptions (``subscribers.py``) and the fan-out of a topic
notification (``fanout.py``) into ``app.extensions["topics"]``; the fan-out worker starts
with the other background greenlets, after fork.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from app.topics.fanout import Fanouts, FanoutWorker, prune_finished
from app.topics.subscribers import Subscribers


class Topics:
    """One worker's topic services: the subscriber lists, the fan-outs and their worker."""

    def __init__(self, app: Flask) -> None:
        config = app.extensions["config"]
        self.subscribers = Subscribers()
        self.fanouts = Fanouts(config)
        self.worker = FanoutWorker(config, self.subscribers, app.extensions["notifications"].publisher)

    def publish(
        self, owner: str, topic: str, content: dict[str, Any], key: tuple[str, bytes] | None
    ) -> tuple[dict[str, Any], bool]:
        """Store a fan-out of ``content`` to ``topic`` and start it here; (the fan-out, replayed)."""
        fanout, replayed = self.fanouts.create(owner, topic, content, key)
        if not replayed:
            self.worker.wake()
        return fanout, replayed

    def start(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        self.worker.stop()


def init_app(app: Flask) -> None:
    app.extensions["topics"] = Topics(app)
    app.extensions["notifications"].retention.also.append(prune_finished)  # finished fan-outs age out
