"""Inserting a batch so that one request's fault never fails another request.

The batcher stores many requests with one ``insert_many`` (``app/store/publishing.py``).
If that fails because the database is unreachable, every request in it fails alike: the
outcome is unknown (the server may still apply the insert), so nothing is removed, and a
batch that was stored has its outbox marker, so the relay publishes it. If it fails for
any other reason (a value BSON cannot hold that validation let through, a document too
large, an ``Idempotency-Key`` already stored), what part of it was stored is removed and
the others are stored again without the request at fault (found from MongoDB's error, or
by storing each request on its own): only the requests at fault fail, with the error
that is theirs.
"""

from __future__ import annotations

import logging
from typing import Any

import pymongo
from pymongo.errors import BulkWriteError, ConnectionFailure, ExecutionTimeout, PyMongoError, WTimeoutError

from app.config import Config
from app.store.idempotency import is_key_taken
from app.store.models import MARKERS, id_chunks, lease_from_now, notifications_collection, outbox_marker

log = logging.getLogger(__name__)

# Server errors that say the server cannot take writes now, not that the write is wrong
# (shutting down, stepping down, not primary, interrupted, network).
UNREACHABLE_CODES = frozenset({6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})


class StoreUnavailable(RuntimeError):
    """MongoDB did not confirm the insert: whether it stored the notifications is unknown."""


class StoreRefused(RuntimeError):
    """MongoDB refused this request's notifications (nothing of them is stored).

    ``index``: the refused document's place in the insert, when MongoDB named it."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class KeyTaken(StoreRefused):
    """The request's ``Idempotency-Key`` is stored already, with the first attempt's notifications."""


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` is the database failing rather than the documents being refused."""
    if isinstance(exc, (ConnectionFailure, ExecutionTimeout, WTimeoutError)):
        return True
    if isinstance(exc, PyMongoError) and exc.timeout:  # MONGO_OP_TIMEOUT_MS passed (pymongo timeoutMS)
        return True
    if isinstance(exc, BulkWriteError):
        errors = exc.details.get("writeErrors") or []
        return not errors or errors[0].get("code") in UNREACHABLE_CODES
    return isinstance(exc, PyMongoError) and getattr(exc, "code", None) in UNREACHABLE_CODES


Groups = list[list[dict[str, Any]]]  # the documents of each request
Outcomes = list[tuple[list[int], Any]]  # (request indexes, marker id or exception)


def insert_isolated(groups: Groups, config: Config) -> Outcomes:
    """Store ``groups`` (one per request); what became of each.

    One ``insert_many`` for all. When MongoDB names the document it refused (a taken key,
    a server-side check), that request fails and the others are inserted again together;
    otherwise (BSON the driver could not encode), one by one."""
    lease = lease_from_now(config)  # from now, not from the queueing
    timeout = config.MONGO_OP_TIMEOUT_MS / 1000
    results: Outcomes = []
    pending = list(range(len(groups)))
    while pending:
        docs = [doc for i in pending for doc in groups[i]]
        try:
            results.append((pending, _insert(docs, lease, timeout)))
            return results
        except StoreUnavailable as exc:
            results.append((pending, exc))
            return results
        except StoreRefused as exc:
            culprit = _group_of(groups, pending, exc.index)
            if culprit is None:
                log.warning("batch of %d requests refused (%s); storing them one by one", len(pending), exc)
                return results + _one_by_one(groups, pending, lease, timeout)
            results.append(([culprit], exc))
            pending.remove(culprit)
    return results


def _group_of(groups: Groups, pending: list[int], index: int | None) -> int | None:
    """The group (request) holding the ``index``-th document of the pending ones."""
    if index is None:
        return None
    for i in pending:
        if index < len(groups[i]):
            return i
        index -= len(groups[i])
    return None


def _one_by_one(
    groups: list[list[dict[str, Any]]], pending: list[int], lease: int, timeout: float
) -> list[tuple[list[int], Any]]:
    results: list[tuple[list[int], Any]] = []
    for n, i in enumerate(pending):
        try:
            results.append(([i], _insert(groups[i], lease, timeout)))
        except StoreRefused as exc:
            results.append(([i], exc))
        except StoreUnavailable as exc:  # the database went away meanwhile: no use trying the rest
            results.append((pending[n:], exc))
            break
    return results


def _insert(docs: list[dict[str, Any]], lease_until_us: int, timeout: float) -> Any:
    """The marker, then ``docs``, in order, in one round trip; the marker's id.

    All or nothing when refused: whatever part was stored is removed."""
    marker = outbox_marker([d["_id"] for d in docs], lease_until_us)
    try:
        notifications_collection().insert_many([marker, *docs], ordered=True)
    except Exception as exc:  # noqa: BLE001 - BSON encoding errors are not PyMongoError
        if unreachable(exc):
            log.error("MongoDB insert failed: %s", exc)
            raise StoreUnavailable("MongoDB did not store the notification") from exc
        _forget(marker, timeout)
        index = _refused_index(exc)
        if is_key_taken(exc):
            raise KeyTaken("Idempotency-Key already stored", index) from exc
        log.warning("MongoDB refused %d notifications: %s", len(docs), str(exc)[:300])
        raise StoreRefused(type(exc).__name__, index) from exc
    return marker["_id"]


def _refused_index(exc: BaseException) -> int | None:
    """Which of the documents (after the marker) MongoDB refused, when it says."""
    if isinstance(exc, BulkWriteError):
        errors = exc.details.get("writeErrors") or [{}]
        index = errors[0].get("index")
        return index - 1 if isinstance(index, int) and index >= 1 else None
    return None


def _forget(marker: dict[str, Any], timeout: float) -> None:
    """Nothing half-written: remove whatever part of a refused insert was stored.

    The marker goes last: if this fails, the relay publishes what is left, late. By lists
    of at most ``MAX_IDS_PER_CALL`` ids, under one deadline for all of it, so a stalled
    database holds the batcher one bound, not one per call."""
    coll = notifications_collection()
    try:
        with pymongo.timeout(timeout):
            for chunk in id_chunks(marker["ids"]):
                coll.delete_many({"_id": {"$in": chunk}})
            coll.delete_one({"_id": marker["_id"], **MARKERS})
    except PyMongoError:
        log.error("could not remove up to %d partly stored notifications", len(marker["ids"]))
