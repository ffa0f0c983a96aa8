"""Inserting a batch so that one request's fault never fails another request.

The batcher stores many requests with one ``insert_many`` (``app/store/publishing.py``).
If that fails because the database is unreachable, every request in it fails alike: the
outcome is unknown (the server may still apply the insert), so nothing is removed, and a
batch that was stored has its outbox marker, so the relay publishes it. If it fails for
any other reason (a value BSON cannot hold that validation let through, a document too
large, an ``Idempotency-Key`` already stored), what part of it was stored is removed and
each request is stored again on its own: only the requests at fault fail, with the error
that is theirs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pymongo.errors import BulkWriteError, ConnectionFailure, ExecutionTimeout, PyMongoError, WTimeoutError

from app.config import Config
from app.store.idempotency import is_key_taken
from app.store.models import OUTBOX_USER, notifications_collection, outbox_marker
from app.store.outbox import lease_from_now

log = logging.getLogger(__name__)

# Server errors that say the server cannot take writes now, not that the write is wrong
# (shutting down, stepping down, not primary, interrupted, network).
UNREACHABLE_CODES = frozenset({6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})


class StoreUnavailable(RuntimeError):
    """MongoDB did not confirm the insert: whether it stored the notifications is unknown."""


class StoreRefused(RuntimeError):
    """MongoDB refused this request's notifications (nothing of them is stored)."""


class KeyTaken(StoreRefused):
    """The request's ``Idempotency-Key`` is stored already, with the first attempt's notifications."""


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` is the database failing rather than the documents being refused."""
    if isinstance(exc, (ConnectionFailure, ExecutionTimeout, WTimeoutError)):
        return True
    if isinstance(exc, BulkWriteError):
        errors = exc.details.get("writeErrors") or []
        return not errors or errors[0].get("code") in UNREACHABLE_CODES
    return isinstance(exc, PyMongoError) and getattr(exc, "code", None) in UNREACHABLE_CODES


def insert_isolated(groups: list[list[dict[str, Any]]], config: Config) -> Iterator[tuple[list[int], Any]]:
    """Store ``groups`` (one per request); yields (group indexes, marker id or exception).

    One ``insert_many`` for all; if it is refused, one per group."""
    lease = lease_from_now(config)  # from now, not from the queueing
    try:
        yield list(range(len(groups))), _insert([d for g in groups for d in g], lease)
        return
    except StoreUnavailable as exc:
        yield list(range(len(groups))), exc
        return
    except StoreRefused as exc:
        if len(groups) == 1:
            yield [0], exc
            return
        log.warning("batch of %d requests refused (%s); storing them one by one", len(groups), exc)
    for i, docs in enumerate(groups):
        try:
            yield [i], _insert(docs, lease)
        except StoreRefused as exc:
            yield [i], exc
        except StoreUnavailable as exc:  # the database went away meanwhile: no use trying the rest
            yield list(range(i, len(groups))), exc
            return


def _insert(docs: list[dict[str, Any]], lease_until_us: int) -> Any:
    """The marker, then ``docs``, in order, in one round trip; the marker's id.

    All or nothing when refused: whatever part was stored is removed."""
    marker = outbox_marker([d["_id"] for d in docs], lease_until_us)
    try:
        notifications_collection().insert_many([marker, *docs], ordered=True)
    except Exception as exc:  # noqa: BLE001 - BSON encoding errors are not PyMongoError
        if unreachable(exc):
            log.error("MongoDB insert failed: %s", exc)
            raise StoreUnavailable("MongoDB did not store the notification") from exc
        _forget(marker)
        if is_key_taken(exc):
            raise KeyTaken("Idempotency-Key already stored") from exc
        log.warning("MongoDB refused %d notifications: %s", len(docs), str(exc)[:300])
        raise StoreRefused(type(exc).__name__) from exc
    return marker["_id"]


def _forget(marker: dict[str, Any]) -> None:
    """Nothing half-written: remove whatever part of a refused insert was stored.

    The marker goes last: if this fails, the relay publishes what is left, late."""
    coll = notifications_collection()
    try:
        coll.delete_many({"_id": {"$in": marker["ids"]}})
        coll.delete_one({"_id": marker["_id"], "user_id": OUTBOX_USER})
    except PyMongoError:
        log.error("could not remove up to %d partly stored notifications", len(marker["ids"]))
