"""A topic's subscribers: added and removed by the list, read in pages by ``user_id``.

Pages resume after the last user id of the previous one (the ``topic_user`` index walked
from there), so a page costs the same at the millionth subscriber as at the first; no
skip, no offset. Calls name at most ``MAX_IDS_PER_CALL`` ids each (SecantusDB compares
every listed id with every candidate, ``app/store/models.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from pymongo import UpdateOne
from pymongo.errors import PyMongoError

from app.errors import ApiError
from app.store.models import id_chunks
from app.store.serialization import utc_now_ms
from app.topics.models import SUBSCRIBER_INDEX, subscribers_collection, topics_collection

log = logging.getLogger(__name__)


@contextmanager
def store_errors() -> Iterator[None]:
    """A database failure as the API's 503 (the caller may retry: every write here is idempotent)."""
    try:
        yield
    except PyMongoError as exc:
        log.error("MongoDB unavailable for topics: %s", exc)
        raise ApiError(503, "unavailable", "the topic store is unavailable, retry later") from None


class Subscribers:
    def subscribe(self, topic: str, user_ids: list[str]) -> int:
        """Subscribe ``user_ids``; how many were not subscribed yet."""
        now = utc_now_ms()
        added = 0
        with store_errors():
            for chunk in id_chunks(user_ids):
                ops = [
                    UpdateOne(
                        {"topic": topic, "user_id": user},
                        {"$setOnInsert": {"topic": topic, "user_id": user, "created_at": now}},
                        upsert=True,
                    )
                    for user in chunk
                ]
                added += subscribers_collection().bulk_write(ops, ordered=False).upserted_count
            self._count_change(topic, added)
        return added

    def unsubscribe(self, topic: str, user_ids: list[str]) -> int:
        """Unsubscribe ``user_ids``; how many were subscribed."""
        removed = 0
        with store_errors():
            for chunk in id_chunks(user_ids):
                query = {"topic": topic, "user_id": {"$in": chunk}}
                removed += subscribers_collection().delete_many(query).deleted_count
            self._count_change(topic, -removed)
        return removed

    @staticmethod
    def _count_change(topic: str, change: int) -> None:
        if change:
            topics_collection().update_one({"_id": topic}, {"$inc": {"subscribers": change}}, upsert=True)

    def page(self, topic: str, after: str, limit: int) -> list[str]:
        """Up to ``limit`` subscribers of ``topic`` after the user id ``after``, in order."""
        query = {"topic": topic, "user_id": {"$gt": after}}
        cursor = subscribers_collection().find(query, {"user_id": 1, "_id": 0})
        cursor = cursor.sort([("topic", 1), ("user_id", 1)]).hint(SUBSCRIBER_INDEX).limit(limit)
        return [doc["user_id"] for doc in cursor]

    def listed(self, topic: str, after: str, limit: int) -> dict[str, object]:
        """One page for the API: ``{"topic", "subscribers", "next", "total"}`` (``next``: pass
        as ``after``)."""
        with store_errors():
            users = self.page(topic, after, limit + 1)
            total = self.count(topic)
        page = users[:limit]
        nxt = page[-1] if len(users) > limit else None
        return {"topic": topic, "subscribers": page, "next": nxt, "total": total}

    def count(self, topic: str) -> int:
        """How many users are subscribed to ``topic``."""
        doc = topics_collection().find_one({"_id": topic})
        return max(doc["subscribers"], 0) if doc else 0
