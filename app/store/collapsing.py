"""``collapse_key``: a new notification replaces the user's previous one with that key.

A progress bar or a "3 new messages" counter is one entry in the inbox, not a stack of
copies. When the new one enters the inbox (at once, or when its ``send_at`` comes), the
previous ones of that user with the same key are looked up; the new one names the newest
of them in ``replaces`` (clients swap the entry), and after it is stored they leave the
inbox as a delete does: a ``delete`` state event with the new counts, in the user's
cursor order, after the new notification.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from bson import ObjectId

from app.store.models import EITHER_READ, id_chunks, notifications_collection

Replaced = dict[str, list[str]]  # user id -> ids of the notifications that leave the inbox
Delete = Callable[[str, list[str]], Any]  # (user, ids): the inbox's delete, with its state event


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
        for users in id_chunks(sorted(by_user)):
            query = {"user_id": {"$in": users}, "read": EITHER_READ, "deleted_at": None, "collapse_key": key}
            for old in notifications_collection().find(query, {"user_id": 1}):
                if old["_id"] not in new_ids:
                    found[old["user_id"]].append(str(old["_id"]))
        for user, olds in found.items():
            by_user[user]["replaces"] = max(olds, key=ObjectId)
            replaced[user] += olds
    return dict(replaced)


def retire(replaced: Replaced, delete: Delete) -> None:
    """The replaced notifications leave their users' inboxes (after the new ones are stored)."""
    for user, olds in replaced.items():
        delete(user, olds)
