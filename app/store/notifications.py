"""The notification service: the one place that owns persistence, cache and publish.

Views call this; they never touch MongoDB or Redis themselves.

Caching uses versioned keys to make the stale-set race impossible: every change for a
user bumps ``ver:{<user>}`` (atomically with the publish), and a reader reads the version
*before* reading MongoDB and writes its result under that version. A reader that raced
with a writer can only fill a key nobody will read again.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import redis
from bson import ObjectId
from bson.errors import InvalidId
from pymongo.errors import PyMongoError

from app.config import Config
from app.errors import ApiError
from app.extensions import RedisBudget
from app.store import lua, scheduling, updates
from app.store.collapsing import mark_replaced, retire
from app.store.expiring import ExpiryMarks, epoch_ms
from app.store.idempotency import RequestKey, stored_under
from app.store.inbox import CHANGES, COUNT_QUERIES, NOW, STATE_QUERIES, by_ids, expired_json, unexpired
from app.store.inserting import KeyTaken, StoreRefused, StoreUnavailable
from app.store.models import (
    EITHER_READ,
    OUTBOX_PARTITIONS,
    PUBLIC_PROJECTION,
    by_history_index,
    ensure_key_index,
    is_marker,
    notifications_collection,
)
from app.store.publishing import Publisher, Stored
from app.store.receipts import Receipts
from app.store.retention import Sweeper
from app.store.serialization import iso, new_document, public_json, utc_now_ms

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheStatus:
    cached: bool
    ttl_seconds: int | None
    version: int | None


def _unavailable(exc: Exception) -> ApiError:
    log.error("MongoDB unavailable: %s", exc)
    return ApiError(503, "unavailable", "the notification store is unavailable, retry later")


class NotificationService:
    def __init__(self, config: Config, redis_client: redis.Redis) -> None:
        self.config = config
        self.redis = redis_client
        self.prefix = config.KEY_PREFIX
        self.publisher = Publisher(config, redis_client)
        self.receipts = Receipts(config, redis_client)
        self.publisher.on_published = self.receipts.published
        self.retention = Sweeper(config, redis_client, self.key("retention-lock"))
        self._cache_get = redis_client.register_script(lua.CACHE_GET)
        self.scheduler = scheduling.Scheduler(config, self.publisher, self._retire)
        self.expiry = ExpiryMarks(redis_client, lambda user_id: self.key("exp", user_id))
        self._key_index_ready = False

    # Keys and pub/sub channels (the publish script, app/store/lua.py, names them the same
    # way). A user's keys and channel carry the user's id as a hash tag, so that on Redis
    # Cluster they share one slot and each of the user's scripts runs on one node; the
    # global ones (recent list, stats, feed channel) share the tag ``{all}``.
    def user_channel(self, user_id: str) -> str:
        """Every event of one user: subscribed by the workers that hold a stream of theirs."""
        return f"{self.prefix}u:{{{user_id}}}"

    def publish_to_user(self, user_id: str, wire: bytes) -> None:
        """A message on the user's channel from outside the publish script (a staff command):
        SPUBLISH on a cluster, where users' channels are shard channels."""
        channel = self.user_channel(user_id)
        if self.config.REDIS_MODE == "cluster":
            self.redis.spublish(channel, wire)
        else:
            self.redis.publish(channel, wire)

    @property
    def feed_channel(self) -> str:
        """Every new notification: subscribed only while staff watch the dashboard overview."""
        return self.key("events")

    def probe_channel(self, hub_id: str) -> str:
        """One worker's loop-back probe: the channel its subscriber connection opens with."""
        return f"{self.prefix}probe:{hub_id}"

    def key(self, kind: str, user_id: str = "") -> str:
        """A user's key (``<kind>:{<user>}``), or with no user a global one (``{all}:<kind>``)."""
        return f"{self.prefix}{kind}:{{{user_id}}}" if user_id else f"{self.prefix}{{all}}:{kind}"

    # -- create ----------------------------------------------------------------------
    def create(
        self,
        user_ids: list[str],
        message: str,
        title: str = "",
        category: str = "",
        data: dict[str, Any] | None = None,
        key: RequestKey | None = None,
        budget: RedisBudget | None = None,
        priority: str = "normal",
        actions: list[dict[str, str]] | None = None,
        sent_by: str = "",
        send_at: datetime | None = None,
        expires_at: datetime | None = None,
        collapse_key: str = "",
    ) -> Stored:
        """Store one notification per user (MongoDB first), then publish them.

        With ``key``, an earlier attempt's notifications are the answer if it stored them.
        ``sent_by``: the staff member who sent it from the dashboard (shown in its trace).
        ``send_at`` (future): stored now, published when due (``app/store/scheduling.py``);
        ``expires_at``: when it leaves the inbox; ``collapse_key``: it replaces the user's
        previous one with that key (``app/store/collapsing.py``)."""
        now = utc_now_ms()
        fields = (message, title, category, data or {}, now, priority, actions)
        docs = [new_document(u, *fields) for u in user_ids]
        optional = {"sent_by": sent_by, "expires_at": expires_at, "collapse_key": collapse_key}
        for name, value in optional.items():
            for doc in docs if value else ():
                doc[name] = value
        if send_at is not None:
            scheduling.schedule(docs, send_at)
        if expires_at is not None:
            self._note_expiry(user_ids, expires_at, now)
        if key is not None:
            self._ensure_key_index()
            key.mark(docs)
        try:
            if send_at is not None:
                scheduling.store_waiting(docs, self.config)
                self.scheduler.wake()
                return Stored([public_json(d) for d in docs], False)
            replaced = mark_replaced(docs) if collapse_key else {}
            stored = self.publisher.store(docs, budget)
        except KeyTaken:
            assert key is not None
            return self._replay(key, len(docs))
        except StoreRefused as exc:
            message = f"the notification store cannot hold a value of this notification ({exc})"
            raise ApiError(422, "unstorable", message) from None
        except StoreUnavailable as exc:
            raise _unavailable(exc) from None
        except PyMongoError as exc:
            raise _unavailable(exc) from None
        if collapse_key:
            retire(docs, replaced, self._retire)
        return stored

    def _note_expiry(self, user_ids: list[str], expires_at: datetime, now: datetime) -> None:
        """Before the insert, so that no page cached after it outlives the expiry."""
        try:
            self.expiry.note(user_ids, expires_at, now)
        except redis.RedisError as exc:
            log.warning("expiry not noted; cached pages may outlive it by CACHE_TTL_SECONDS: %s", exc)

    def _retire(self, user_id: str, ids: list[str]) -> None:
        """Notifications a ``collapse_key`` replaced leave the inbox, as a delete does."""
        try:
            self.change(user_id, "delete", ids)
        except ApiError:
            log.warning("replaced notifications of %s stay in the inbox: MongoDB unavailable", user_id)

    def _ensure_key_index(self) -> None:
        """Before the first keyed insert: without the unique index a key would not hold."""
        if self._key_index_ready:
            return
        try:
            ensure_key_index()
        except PyMongoError as exc:
            raise _unavailable(exc) from None
        self._key_index_ready = True

    def _replay(self, key: RequestKey, count: int) -> Stored:
        try:
            docs, published = stored_under(key, count)
        except PyMongoError as exc:
            raise _unavailable(exc) from None
        body = [public_json(d) for d in docs]
        if not published:  # the relay publishes it, possibly with another cursor
            for notification in body:
                notification["seq"] = None
        return Stored(body, published, replayed=True)

    # -- history ---------------------------------------------------------------------
    def history(
        self,
        user_id: str,
        limit: int = 50,
        before: str | None = None,
        state: str | None = None,
        category: str | None = None,
        unread: bool = False,
    ) -> tuple[bytes, bool]:
        """A page of the user's notifications, newest first. Returns (JSON body, cache hit).

        ``state`` None is the inbox (all but archived), else ``unread``, ``read`` or
        ``archived``; deleted ones are never listed. ``unread`` keeps only unread ones of those
        (none of ``read``)."""
        query = {"user_id": user_id, **STATE_QUERIES[state], **unexpired(utc_now_ms())}
        if unread:
            query["read"] = False if state != "read" else {"$in": []}
        if category is not None:
            query["category"] = category
        if before is not None:
            return self._history_page(user_id, query, limit, _object_id(before, "before")), False
        suffix = f":page:{limit}:{state or ''}:{int(unread)}:{category if category is not None else '*'}"
        return self._cached(user_id, suffix, lambda: self._history_page(user_id, query, limit, None))

    def _history_page(
        self, user_id: str, query: dict[str, Any], limit: int, before: ObjectId | None
    ) -> bytes:
        """Newest first by cursor (the ``user_read_seq`` index); ``before`` names the page's end.

        A ``before`` that names none of the user's notifications (expired, or never theirs)
        has nothing before it: an empty page."""
        coll = notifications_collection()
        try:
            if before is not None:
                # By _id alone: SecantusDB plans _id beside another field as a collection scan
                last = coll.find_one({"_id": before}, {"seq": 1, "user_id": 1})
                if last is None or last["user_id"] != user_id or last.get("seq") is None:
                    return orjson.dumps({"notifications": [], "next": None})
                query = {**query, "seq": {"$lt": last["seq"]}}
            # Named: with the state fields beside the index's, SecantusDB plans a scan of the
            # whole collection (every user's notifications) instead
            find = coll.find(query, PUBLIC_PROJECTION).sort("seq", -1).limit(limit + 1)
            docs = by_history_index(lambda index: list(find.clone().hint(index)))
        except PyMongoError as exc:
            raise _unavailable(exc) from None
        page = docs[:limit]
        nxt = str(page[-1]["_id"]) if len(docs) > limit else None
        return orjson.dumps({"notifications": [public_json(d) for d in page], "next": nxt})

    def counts(self, user_id: str) -> dict[str, int]:
        """``{"unseen", "unread", "total"}`` of the user's inbox (cached like history pages)."""
        body, _ = self._cached(user_id, ":counts", lambda: orjson.dumps(self._count(user_id)))
        return orjson.loads(body)

    def unread_count(self, user_id: str) -> int:
        return self.counts(user_id)["unread"]

    def _count(self, user_id: str) -> dict[str, int]:
        try:
            coll = notifications_collection()
            counts = COUNT_QUERIES.items()
            live = unexpired(utc_now_ms())

            def count(index: str | None) -> dict[str, int]:
                named = {"hint": index} if index else {}
                return {
                    name: coll.count_documents({"user_id": user_id, **q, **live}, **named)
                    for name, q in counts
                }

            return by_history_index(count)
        except PyMongoError as exc:
            raise _unavailable(exc) from None

    def _cached(self, user_id: str, suffix: str, load) -> tuple[bytes, bool]:
        version = self._read_version(user_id, suffix)
        if isinstance(version, bytes):  # a hit: the cached value itself
            return version, True
        body = load()
        if version is not None:
            try:
                key = f"{self.key('cache', user_id)}:{version}{suffix}"
                self.redis.set(key, body, px=self._cache_ttl_ms(user_id))
            except redis.RedisError as exc:
                log.warning("cache fill failed: %s", exc)
        return body, False

    def _cache_ttl_ms(self, user_id: str) -> int:
        """``CACHE_TTL_SECONDS``, or less: a cached page or count must not outlive the first
        ``expires_at`` in the user's inbox (an expired notification is never served). The
        first is kept in Redis (``app/store/expiring.py``); MongoDB is read only once it passed."""
        ttl_ms = self.config.CACHE_TTL_SECONDS * 1000
        now = utc_now_ms()
        try:
            mark = self.expiry.first(user_id)
        except redis.RedisError:
            return 1  # cannot tell: nothing worth caching
        if mark is not None and mark <= epoch_ms(now):
            try:
                following = self._first_expiry(user_id, now)
            except PyMongoError:
                return 1
            with contextlib.suppress(redis.RedisError):  # asked again at the next fill
                self.expiry.replace(user_id, mark, following, now)
            mark = None if following is None else epoch_ms(following)
        if mark is None:
            return ttl_ms
        return max(1, min(ttl_ms, mark - epoch_ms(now)))

    @staticmethod
    def _first_expiry(user_id: str, now: datetime) -> datetime | None:
        """The first ``expires_at`` after ``now`` in the user's inbox: every notification of
        the user read (none of the indexes holds ``expires_at``)."""
        query = {"user_id": user_id, "read": EITHER_READ, "deleted_at": None, "expires_at": {"$gt": now}}
        find = notifications_collection().find(query, {"expires_at": 1})
        return by_history_index(
            lambda index: min((doc["expires_at"] for doc in find.clone().hint(index)), default=None)
        )

    def _read_version(self, user_id: str, suffix: str) -> bytes | int | None:
        """The cached value (bytes), or the version to fill under (int), or None if Redis is down."""
        try:
            version, value, _ttl = self._cache_get(
                keys=[self.key("ver", user_id)], args=[self.key("cache", user_id) + ":", suffix]
            )
        except redis.RedisError as exc:
            log.warning("cache read failed, serving from MongoDB: %s", exc)
            return None
        return value if value is not None else int(version)

    def cache_status(self, user_id: str, limit: int = 50) -> CacheStatus:
        """Whether the user's first inbox page is cached now, and for how long still."""
        suffix = f":page:{limit}::0:*"
        try:
            version, value, ttl = self._cache_get(
                keys=[self.key("ver", user_id)], args=[self.key("cache", user_id) + ":", suffix]
            )
        except redis.RedisError:
            return CacheStatus(False, None, None)
        return CacheStatus(value is not None, int(ttl) if value is not None else None, int(version))

    # -- inbox states ----------------------------------------------------------------
    def change(self, user_id: str, change: str, ids: list[str] | None) -> int:
        """Apply ``change`` (a key of ``CHANGES``) to ``ids`` (or all when None); tell every
        open stream of the user, on every instance, as the next event of their stream."""
        oids = None if ids is None else [_object_id(i, "ids") for i in ids]
        match, update = CHANGES[change]
        now = utc_now_ms()
        update = {"$set": {k: now if v is NOW else v for k, v in update["$set"].items()}}
        base = {"user_id": user_id, "deleted_at": None, **match}
        try:
            coll = notifications_collection()
            updated = sum(coll.update_many(q, update).modified_count for q in by_ids(base, oids))
            if updated and change == "read":  # what is read has been seen (kept seen if marked unread)
                unseen = {"user_id": user_id, "read": True, "seen_at": None}
                for q in by_ids(unseen, oids):
                    coll.update_many(q, {"$set": {"seen_at": now}})
        except PyMongoError as exc:
            raise _unavailable(exc) from None
        if updated:
            counts = self._count(user_id)
            body = {"change": change, "ids": ids or [], "all": ids is None, **counts}
            self.publisher.publish_state(user_id, orjson.dumps(body))
        return updated

    def delete(self, user_id: str, notification_id: str) -> None:
        """The user deletes one notification: out of their inbox, counts and replays (kept
        for its delivery trace until retention). 404 if it is not theirs or already deleted."""
        if not self.change(user_id, "delete", [notification_id]):
            raise ApiError(404, "not_found", "no such notification in this inbox")

    # -- after create: update in place, cancel ------------------------------------------
    def update(self, notification_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Change a notification (``app/store/updates.py``) and tell its user's open clients."""
        oid = _object_id(notification_id, "id")
        try:
            doc = updates.update(oid, fields)
        except PyMongoError as exc:
            raise _unavailable(exc) from None
        event = updates.update_event(doc)
        if event is not None:
            (live,) = self.publisher.live_flags([doc])  # as the notification itself went out
            self.publisher.publish_state(doc["user_id"], event, updates.UPDATE, live)
        return public_json(doc)

    def cancel(self, notification_id: str) -> None:
        """Cancel a scheduled notification before it is sent; 409 once it was."""
        oid = _object_id(notification_id, "id")
        try:
            updates.cancel(oid)
        except PyMongoError as exc:
            raise _unavailable(exc) from None

    # -- delivery trace --------------------------------------------------------------
    def traced(self, notification_id: str) -> dict[str, Any]:
        """The notification with its delivery record (``app/store/receipts.py``); 404 if none."""
        oid = _object_id(notification_id, "id")
        try:
            doc = notifications_collection().find_one({"_id": oid})
            if doc is None or is_marker(doc):
                raise ApiError(404, "not_found", "no such notification")
            delivery = self.receipts.trace(doc)
            sent = doc.get("due_at") is None and (doc.get("read") is not None or bool(doc.get("hidden")))
            schedule = {  # its send_at, if scheduled, is in public_json; due_at until published (or hidden)
                "sent": sent,
                "sent_at": iso(doc["sent_at"]) if doc.get("sent_at") else None,
            }
            return {**public_json(doc), **schedule, "sent_by": doc.get("sent_by"), "delivery": delivery}
        except PyMongoError as exc:
            raise _unavailable(exc) from None

    def acknowledge(self, user_id: str, ids: list[str], connection: str) -> int:
        """The client received ``ids`` (recorded in Redis within a second, never per id in MongoDB)."""
        for i in ids:
            _object_id(i, "ids")
        self.receipts.acked(user_id, ids, connection)
        return len(ids)

    # -- recent ----------------------------------------------------------------------
    def recent(self) -> bytes:
        """The newest notifications across users: the Redis list, with today's read state.

        The list keeps each notification as it was published (unread); its ``read`` is
        looked up now, in one query by id, and left out when MongoDB cannot say."""
        try:
            items = self.redis.lrange(self.key("recent"), 0, self.config.RECENT_LIMIT - 1)
        except redis.RedisError as exc:
            log.warning("recent list unavailable, reading MongoDB: %s", exc)
            return self._recent_from_mongo()
        now_iso = iso(utc_now_ms())
        notes = [note for note in map(orjson.loads, items) if not expired_json(note, now_iso)]
        ids = [ObjectId(n["id"]) for n in notes]
        try:
            read = notifications_collection().find({"_id": {"$in": ids}, "read": True}, {"_id": 1})
            read_ids = {str(doc["_id"]) for doc in read} if ids else set()
        except PyMongoError as exc:
            log.warning("read state of recent notifications unavailable: %s", exc)
            for note in notes:
                note.pop("read", None)
        else:
            for note in notes:
                note["read"] = note["id"] in read_ids
        return orjson.dumps({"notifications": notes})

    def _recent_from_mongo(self) -> bytes:
        try:
            # No filter: one marker per batch at most, so twice the limit (and one per
            # outbox partition) holds enough notifications, and the read stays the plain
            # walk of the _id index that a filter might trade for another plan
            limit = self.config.RECENT_LIMIT
            newest = notifications_collection().find({}, PUBLIC_PROJECTION).sort("_id", -1)
            now = utc_now_ms()
            newest_docs = newest.limit(2 * limit + OUTBOX_PARTITIONS)
            docs = [d for d in newest_docs if not is_marker(d) and _listed(d, now)][:limit]
            return orjson.dumps({"notifications": [public_json(d) for d in docs]})
        except PyMongoError as exc:
            raise _unavailable(exc) from None


def _listed(doc: dict[str, Any], now: datetime) -> bool:
    """Sent (not waiting for its ``send_at``) and not expired."""
    expires = doc.get("expires_at")
    return doc.get("read") is not None and (expires is None or expires > now)


def _object_id(value: str, field: str) -> ObjectId:
    try:
        return ObjectId(value)
    except (InvalidId, TypeError):
        raise ApiError(422, "invalid_field", f"{field}: not a notification id", field=field) from None
