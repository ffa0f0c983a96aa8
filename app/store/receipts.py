"""Delivery receipts: when a notification was published, written to each connection, and
received (acknowledged by the client), without a MongoDB write per delivery.

Each worker buffers what happens in memory (a list append per connection write, per ack,
per published batch) and writes it to Redis once per ``RECEIPT_FLUSH_SECONDS`` as one JSON
argument of one script call (``RECORD``): a hash per notification, ``{all}:trace:<id>``
(field ``p`` the publish time, ``u`` its owner, ``s:<conn>`` a write, ``r:<conn>`` a
receipt), with a TTL, and the notification's id in the sorted set ``{all}:trace:pending``
(scored by when it first became pending); on a Redis Cluster they share the slot of
``{all}``, so each script runs on one master. A pipeline of commands per notification,
and its replies parsed by redis-py, cost the workers a third of their CPU in a broadcast
(bench/README.md, "Receipts").

A folder greenlet in every worker takes ids pending for ``RECEIPT_FOLD_DELAY_SECONDS`` (by
then a notification's writes and receipts are in, so most are folded once), reads and
deletes their hashes atomically (``TAKE``, one JSON reply; a worker that raced another for
an id finds it empty) and stores them in the ``deliveries`` collection (its own
collection, so the write lock notifications' inserts wait for is not taken),
``RECEIPT_FOLD_BATCH`` at a time: one ``insert_many``, and an update only for the few whose
record already exists (SecantusDB takes about ten times as long for an upsert as for a
document of an ``insert_many``: bench/README.md, "Receipts"). The trace (``trace``) reads
MongoDB plus what is still in Redis.

A receipt names the user who sent it: it counts only for that user's notification (checked
when folded and when read), so nobody can mark another user's notification received.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any

import gevent
import orjson
import redis
from bson import ObjectId
from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, PyMongoError

from app.store.models import id_chunks, notifications_collection
from app.store.serialization import iso_ms

log = logging.getLogger(__name__)

PENDING = "{all}:trace:pending"  # one hash tag with the traces: the fold's transaction is one slot
TRACE_TTL_SECONDS = 86400  # a hash the folder never reached (MongoDB down a whole day) expires
MAX_CONNECTIONS_PER_TRACE = 100  # writes recorded per notification (a client reconnecting in a loop)
MAX_BUFFERED = 500_000
RECORD_CHUNK = 2000  # notifications per RECORD call
STREAM_ID = re.compile(
    r"(sse|ws)~[A-Za-z0-9_-]{1,100}~[0-9]{1,10}~[0-9]{1,19}"
)  # as ``connection`` names one  # records a worker holds between flushes (Redis away, flusher not started)


# One call per flush: the buffered records as one JSON argument ({id: {field: value}}),
# each field set only if absent (the earliest write and receipt win, as in the fold's
# merge), each hash given its TTL and its id queued in the pending set. Every key is
# tagged {all}: on a cluster the script runs on the one master of that slot.
RECORD = r"""
local prefix, ttl, now = ARGV[1], tonumber(ARGV[2]), ARGV[3]
for nid, fields in pairs(cjson.decode(ARGV[4])) do
  local key = prefix .. '{all}:trace:' .. nid
  for field, value in pairs(fields) do
    redis.call('HSETNX', key, field, value)
  end
  redis.call('EXPIRE', key, ttl)
  redis.call('ZADD', KEYS[1], 'NX', now, nid)
end
return 0
"""

# Up to ARGV[3] ids pending since before ARGV[2]: their hashes read and deleted in one
# atomic step (a worker that raced another for an id finds it gone), as one JSON reply.
TAKE = r"""
local nids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local out, found = {}, false
for _, nid in ipairs(nids) do
  local key = ARGV[1] .. '{all}:trace:' .. nid
  local flat = redis.call('HGETALL', key)
  if #flat > 0 then
    local hash = {}
    for i = 1, #flat, 2 do hash[flat[i]] = flat[i + 1] end
    out[nid] = hash
    found = true
  end
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[1], nid)
end
return {#nids, found and cjson.encode(out) or '{}'}
"""


def deliveries_collection() -> Collection:
    return notifications_collection().database["deliveries"]


def _ms(ts: float) -> int:
    return int(ts * 1000)


class Receipts:
    """This worker's buffer of delivery records, its flusher and its share of the folding."""

    def __init__(self, config: Any, redis_client: redis.Redis) -> None:
        self.config = config
        self.redis = redis_client
        self.prefix = config.KEY_PREFIX
        self.instance = config.instance
        self.worker = str(os.getpid())
        self._ids = itertools.count(1)
        self._sent: list[tuple[str, str, float]] = []  # (notification id, connection, time)
        self._acks: list[tuple[str, str, str, float]] = []  # (user, notification id, connection, time)
        self._published: list[tuple[list[tuple[str, str]], float]] = []  # ((id, user), ...), time
        # The latest receipt per connection, for presence (app/delivery/presence.py), which
        # writes them with its periodic snapshot: no Redis write per receipt.
        self._last_receipt: dict[tuple[str, str], float] = {}  # (connection, user) -> time
        self._greenlets: list[gevent.Greenlet] = []
        self.stats = {"flushed": 0, "folded": 0}
        self._record_script = redis_client.register_script(RECORD)
        self._take_script = redis_client.register_script(TAKE)

    def key(self, nid: str) -> str:
        return f"{self.prefix}{{all}}:trace:{nid}"

    # -- recording (hot path: appends only) ----------------------------------------------
    def connection(self, transport: str) -> str:
        """A new connection's id: transport, instance, worker and a number, ``.`` free (a
        MongoDB field name)."""
        self.worker = str(os.getpid())  # after fork
        return f"{transport}~{self.instance.replace('.', '_')}~{self.worker}~{next(self._ids)}"

    def sent(self, nid: str, connection: str) -> None:
        if len(self._sent) < MAX_BUFFERED:
            self._sent.append((nid, connection, time.time()))

    def acked(self, user_id: str, nids: list[str], connection: str) -> None:
        now = time.time()
        if len(self._acks) < MAX_BUFFERED:
            self._acks.extend((user_id, nid, connection, now) for nid in nids)
        if nids and STREAM_ID.fullmatch(connection) and len(self._last_receipt) < MAX_BUFFERED:
            self._last_receipt[(connection, user_id)] = now

    def take_last_receipts(self) -> dict[tuple[str, str], float]:
        """The latest receipt time of each (connection, user) acknowledged since the last
        call; the user, as for the trace, because a receipt counts only for its sender."""
        taken, self._last_receipt = self._last_receipt, {}
        return taken

    def published(self, docs: list[dict[str, Any]], at: float) -> None:
        """A batch was published: its time, and each notification's owner (so the fold
        need not ask MongoDB whose it is)."""
        if len(self._published) < MAX_BUFFERED:
            self._published.append(([(str(d["_id"]), d["user_id"]) for d in docs], at))

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        if not self._greenlets:
            self._greenlets = [gevent.spawn(self._flush_loop), gevent.spawn(self._fold_loop)]

    def stop(self) -> None:
        gevent.killall(self._greenlets, block=False)
        self._greenlets = []

    def _flush_loop(self) -> None:
        while True:
            gevent.sleep(self.config.RECEIPT_FLUSH_SECONDS)
            try:
                self.flush()
            except Exception:  # never let the flusher die; what was taken is lost, logged
                log.exception("receipt flush failed")

    def _fold_loop(self) -> None:
        while True:
            gevent.sleep(self.config.RECEIPT_FOLD_SECONDS)
            try:
                while self.fold() >= self.config.RECEIPT_FOLD_BATCH:
                    gevent.sleep(0)
            except Exception:
                log.exception("receipt fold failed")

    # -- Redis ---------------------------------------------------------------------------
    def flush(self) -> int:
        """Everything buffered, to Redis in one script call; returns how many records."""
        sent, self._sent = self._sent, []
        acks, self._acks = self._acks, []
        published, self._published = self._published, []
        fields: dict[str, dict[str, str]] = defaultdict(dict)
        for owned, ts in published:
            ms = str(_ms(ts))
            for nid, user in owned:
                fields[nid]["p"] = ms
                fields[nid]["u"] = user
        for nid, conn, ts in sent:
            fields[nid].setdefault("s:" + conn, str(_ms(ts)))
        for user, nid, conn, ts in acks:
            fields[nid].setdefault(f"r:{conn}", f"{_ms(ts)} {user}")
        if not fields:
            return 0
        try:
            self._record(fields)
        except redis.RedisError as exc:
            log.warning("receipts of %d notifications not recorded: %s", len(fields), exc)
            return 0
        records = len(sent) + len(acks) + sum(len(n) for n, _ in published)
        self.stats["flushed"] += records
        return records

    def _record(self, fields: dict[str, dict[str, str]]) -> None:
        """``RECORD`` per ``RECORD_CHUNK`` notifications: a backlog (Redis was away) does not
        hold Redis in one long script."""
        items = list(fields.items())
        for at in range(0, len(items), RECORD_CHUNK):
            blob = orjson.dumps(dict(items[at : at + RECORD_CHUNK]))
            self._record_script(
                keys=[self.prefix + PENDING], args=[self.prefix, TRACE_TTL_SECONDS, time.time(), blob]
            )

    def fold(self) -> int:
        """Move up to ``RECEIPT_FOLD_BATCH`` pending traces from Redis into MongoDB."""
        ripe = time.time() - self.config.RECEIPT_FOLD_DELAY_SECONDS
        try:
            taken, blob = self._take_script(
                keys=[self.prefix + PENDING], args=[self.prefix, ripe, self.config.RECEIPT_FOLD_BATCH]
            )
        except redis.RedisError as exc:
            log.warning("receipt fold skipped: %s", exc)
            return 0
        if not taken:
            return 0
        traces: dict[str, dict[str, str]] = orjson.loads(blob) if blob != b"{}" else {}
        try:
            owners = {nid: t["u"] for nid, t in traces.items() if "u" in t}
            if len(owners) < len(traces):  # published before its owner was recorded with it
                owners |= _owners([nid for nid in traces if nid not in owners])
            _store({nid: (owners[nid], t) for nid, t in traces.items() if nid in owners})
        except PyMongoError as exc:
            log.warning("receipt fold of %d notifications failed, kept in Redis: %s", len(traces), exc)
            self._put_back(traces)
            return 0
        self.stats["folded"] += len(traces)
        return int(taken)

    def _put_back(self, traces: dict[str, dict[str, str]]) -> None:
        try:
            if traces:
                self._record(traces)
        except redis.RedisError as exc:
            log.warning("receipts of %d notifications lost: %s", len(traces), exc)

    # -- the trace -----------------------------------------------------------------------
    def trace(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The delivery record of the notification ``doc`` (its stored document)."""
        nid = str(doc["_id"])
        folded = deliveries_collection().find_one({"_id": doc["_id"]}) or {}
        try:
            fresh = _decode(self.redis.hgetall(self.key(nid)))
        except redis.RedisError as exc:
            log.warning("trace of %s read from MongoDB only: %s", nid, exc)
            fresh = {}
        merged = _merge(folded, fresh, doc["user_id"])
        sent = [
            {**_describe(conn), "at": iso_ms(ms), "received_at": iso_ms(merged["received"].get(conn))}
            for conn, ms in sorted(merged["sent"].items(), key=lambda item: (item[1], item[0]))
        ]
        received = list(merged["received"].values())
        return {
            "stored_at": _iso_dt(doc["created_at"]),
            "published_at": iso_ms(merged["published"]),
            "sent": sent,
            "received_at": iso_ms(min(received)) if received else None,
            "seen_at": _iso_dt(doc.get("seen_at") or doc.get("read_at")),
            "read_at": _iso_dt(doc.get("read_at")) if doc.get("read") else None,
            "archived_at": _iso_dt(doc.get("archived_at")),
        }


def _iso_dt(value: datetime | None) -> str | None:
    if value is None:
        return None
    return iso_ms(int(value.replace(tzinfo=timezone.utc).timestamp() * 1000))


def _decode(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def _describe(conn: str) -> dict[str, str]:
    transport, instance, worker, _ = [*conn.split("~"), "", "", ""][:4]
    return {"connection": conn, "transport": transport, "instance": instance, "worker": worker}


def _owners(nids: list[str]) -> dict[str, str]:
    oids = [ObjectId(n) for n in nids if ObjectId.is_valid(n)]
    out: dict[str, str] = {}
    for chunk in id_chunks(oids):
        for doc in notifications_collection().find({"_id": {"$in": chunk}}, {"user_id": 1}):
            out[str(doc["_id"])] = doc["user_id"]
    return out


def _split(trace: dict[str, str], user_id: str) -> tuple[int | None, dict[str, int], dict[str, int]]:
    """(publish time, writes by connection, receipts by connection) of a Redis hash; only
    receipts sent by ``user_id`` count."""
    published = int(trace["p"]) if "p" in trace else None
    sent = {f[2:]: int(v) for f, v in trace.items() if f.startswith("s:")}
    received = {}
    for field, value in trace.items():
        if field.startswith("r:"):
            ms, _, user = value.partition(" ")
            if user == user_id:
                received[field[2:]] = int(ms)
    return published, sent, received


def _record(nid: str, user_id: str, trace: dict[str, str]) -> dict[str, Any]:
    """The ``deliveries`` document of one trace."""
    published, sent, received = _split(trace, user_id)
    doc: dict[str, Any] = {
        "_id": ObjectId(nid),
        "user_id": user_id,
        "sent": dict(list(sent.items())[:MAX_CONNECTIONS_PER_TRACE]),
        "received": dict(list(received.items())[:MAX_CONNECTIONS_PER_TRACE]),
    }
    if published is not None:
        doc["published"] = published
    return doc


def _store(traces: dict[str, tuple[str, dict[str, str]]]) -> None:
    """New records in one ``insert_many``; those a previous fold stored are merged (the
    earliest time of each write and receipt wins)."""
    docs = [_record(nid, user, trace) for nid, (user, trace) in traces.items()]
    if not docs:
        return
    coll = deliveries_collection()
    try:
        coll.insert_many(docs, ordered=False)
        return
    except BulkWriteError as exc:
        errors = exc.details["writeErrors"]
        taken = {docs[e["index"]]["_id"] for e in errors if e.get("code") == 11000}
        if len(taken) < len(errors):
            raise
    merges = []
    for doc in docs:
        if doc["_id"] in taken:
            mins = {f"{part}.{c}": ms for part in ("sent", "received") for c, ms in doc[part].items()}
            if "published" in doc:
                mins["published"] = doc["published"]
            if mins:
                merges.append(UpdateOne({"_id": doc["_id"]}, {"$min": mins}))
    if merges:
        coll.bulk_write(merges, ordered=False)


def _merge(folded: dict[str, Any], fresh: dict[str, str], user_id: str) -> dict[str, Any]:
    published, sent, received = _split(fresh, user_id)
    out_sent = {**sent, **folded.get("sent", {})}
    out_received = {**received, **folded.get("received", {})}
    for conn, ms in sent.items():
        out_sent[conn] = min(ms, out_sent[conn])
    for conn, ms in received.items():
        out_received[conn] = min(ms, out_received[conn])
    times = [t for t in (published, folded.get("published")) if t is not None]
    return {"published": min(times) if times else None, "sent": out_sent, "received": out_received}
