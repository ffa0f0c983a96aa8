"""``collapse_key``: a new notification replaces the user's previous one with that key.

A progress bar or a "3 new messages" counter is one entry in the inbox, not a stack of
copies. When the new one enters the inbox (at once, or when its ``send_at`` comes), the
previous ones of that user with the same key are looked up; the new one names the newest
of them in ``replaces`` (clients swap the entry), and after it is stored they leave the
inbox as a delete does: a ``delete`` state event with the new counts, in the user's
cursor order, after the new notification. Two sent at once both look again once stored,
so only the newest stays (``retire``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from bson import ObjectId
from pymongo.errors import PyMongoError

from app.store.models import EITHER_READ, id_chunks, notifications_collection

log = logging.getLogger(__name__)

Replaced = dict[str, list[str]]  # user id -> ids of the notifications that leave the inbox
Delete = Callable[[str, list[str]], Any]  # (user, ids): the inbox's delete, with its state event


def in_inbox_with_key(key: str, users: set[str] | dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The notifications with ``collapse_key`` ``key`` in the inboxes of ``users`` (id,
    user and cursor), one query per chunk of users."""
    for chunk in id_chunks(sorted(users)):
        query = {"user_id": {"$in": chunk}, "read": EITHER_READ, "deleted_at": None, "collapse_key": key}
        yield from notifications_collection().find(query, {"user_id": 1, "seq": 1})


def mark_replaced(docs: list[dict[str, Any]]) -> Replaced:
    """Set ``replaces`` on each of ``docs`` that has a ``collapse_key`` and an earlier one
    in its user's inbox; which notifications each user loses."""
    keyed: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for doc in docs:
        if doc.get("collapse_key"):
            keyed[doc["collapse_key"]].append(doc)
    replaced: Replaced = defaultdict(list)
    new_ids = {doc["_id"] for doc in docs}
    for key, group in keyed.items():
        by_user = {doc["user_id"]: doc for doc in group}
        found: Replaced = defaultdict(list)
        for old in in_inbox_with_key(key, by_user):
            if old["_id"] not in new_ids:
                found[old["user_id"]].append(str(old["_id"]))
        for user, olds in found.items():
            by_user[user]["replaces"] = max(olds, key=ObjectId)
            replaced[user] += olds
    return dict(replaced)


def retire(docs: list[dict[str, Any]], replaced: Replaced, delete: Delete) -> None:
    """The replaced notifications leave their users' inboxes (after the new ones are stored).

    Two notifications with one key for one user stored at once (two workers, each unaware
    of the other's) would both stay: so each ``(user, key)`` of ``docs`` is read again once
    they are stored, and keeps only its newest in cursor order. Whichever batch looks last
    retires the other's; if that is the one just sent, its clients get its delete too."""
    losers: dict[str, set[str]] = defaultdict(set)
    for user, olds in replaced.items():
        losers[user].update(olds)
    keyed: dict[str, set[str]] = defaultdict(set)
    for doc in docs:
        if doc.get("collapse_key") and doc.get("read") is not None:  # in the inbox (not hidden)
            keyed[doc["collapse_key"]].add(doc["user_id"])
    try:
        for key, users in keyed.items():
            live: dict[str, list[tuple[int, str]]] = defaultdict(list)
            for doc in in_inbox_with_key(key, users):
                live[doc["user_id"]].append((doc.get("seq") or 0, str(doc["_id"])))
            for user, entries in live.items():
                entries.sort()
                losers[user].update(nid for _, nid in entries[:-1])
    except PyMongoError as exc:  # stored and sent already: what was found before is retired
        log.warning("collapse_key look-again skipped: %s", exc)
    for user, olds in losers.items():
        if olds:
            delete(user, sorted(olds))
