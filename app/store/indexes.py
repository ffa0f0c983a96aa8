"""The indexes every query of the service relies on, checked when a worker starts.

Without them the database scans the collection: the outbox poll (once a second in every
worker) and every history page then cost time in proportion to the stored notifications,
and nothing else says so (issue 25). So a worker that starts creates what is missing
(``AUTO_CREATE_INDEXES``, on by default) and logs their names; with that turned off,
``/readyz`` fails naming them and ``notify_mongodb_indexes_missing`` counts them until
``flask --app wsgi db create-indexes`` has run.
"""

from __future__ import annotations

import contextlib
import logging
import time

import gevent
from mongoengine import Document
from pymongo.errors import PyMongoError

from app.access.apikeys import ApiKey
from app.config import Config
from app.dashboard.audit import AuditEntry
from app.ops import metrics
from app.ops.mongocalls import long_mongo_calls
from app.push.deferred import PendingPush
from app.push.subscriptions import PushSubscription
from app.store.models import (
    Notification,
    create_missing,
    ensure_indexes,
    index_name,
    missing_specs,
)
from app.topics.models import Fanout, TopicSubscriber

log = logging.getLogger(__name__)

DOCUMENTS: tuple[type[Document], ...] = (
    Notification,
    ApiKey,
    AuditEntry,
    PushSubscription,
    PendingPush,
    TopicSubscriber,
    Fanout,
)
RECHECK_SECONDS = 5.0  # /readyz looks again at most this often
RETRY_SECONDS = 2.0
BUILD_SECONDS = 600.0  # a worker that could not reach MongoDB at start tries again


def missing_indexes() -> list[str]:
    """``collection.index`` for every declared index the database lacks (by key pattern)."""
    return [
        f"{document._get_collection().name}.{index_name(spec)}"
        for document in DOCUMENTS
        for spec in missing_specs(document)
    ]


def create_indexes() -> None:
    """Create every missing index (and upgrade what an older version left); idempotent.
    Building one over many stored notifications outlasts ``MONGO_OP_TIMEOUT_MS``: its own
    deadline."""
    with long_mongo_calls(BUILD_SECONDS):
        ensure_indexes()
        for document in DOCUMENTS[1:]:
            create_missing(document)


class IndexGuard:
    """One worker's view of the indexes: made at start if allowed, reported by /readyz."""

    def __init__(self, config: Config) -> None:
        self.auto = bool(config.AUTO_CREATE_INDEXES)
        self.missing: list[str] | None = None  # None: not known yet
        self._checked_at = 0.0
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._at_start)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def _at_start(self) -> None:
        """Until MongoDB answers once: look, create what is missing (if allowed), say so."""
        warned = False
        while True:
            try:
                missing = missing_indexes()
                if missing and self.auto:
                    create_indexes()
                    log.warning("created missing MongoDB indexes: %s", ", ".join(missing))
                    missing = missing_indexes()
                if missing:
                    log.error(
                        "MongoDB indexes missing (AUTO_CREATE_INDEXES is off): %s;"
                        " run `flask --app wsgi db create-indexes`",
                        ", ".join(missing),
                    )
                self._record(missing)
                return
            except PyMongoError as exc:
                if not warned:
                    log.warning("could not check MongoDB indexes, retrying: %s", exc)
                    warned = True
                gevent.sleep(RETRY_SECONDS)

    def _record(self, missing: list[str]) -> None:
        self.missing = missing
        self._checked_at = time.monotonic()
        metrics.INDEXES_MISSING.set(len(missing))

    def current(self) -> list[str] | None:
        """The missing indexes, looked up again when the last look is older than
        ``RECHECK_SECONDS``; None while MongoDB has not answered."""
        if time.monotonic() - self._checked_at > RECHECK_SECONDS:
            with contextlib.suppress(PyMongoError):  # /readyz reports MongoDB itself as down
                self._record(missing_indexes())
        return self.missing
