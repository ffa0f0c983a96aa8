"""MongoDB documents of topics: who is subscribed to what, and each fan-out's progress.

Both are read in one order only, by an index made for it: a topic's subscribers by
``user_id`` (pages resume after the last one, never skip an offset), the fan-outs still
to do by ``state``.
"""

from __future__ import annotations

from mongoengine import DateTimeField, DictField, Document, IntField, StringField
from pymongo.collection import Collection

SUBSCRIBER_INDEX = "topic_user"
FANOUT_STATE_INDEX = "state_lease"
FANOUT_KEY_INDEX = "idem"

PENDING, RUNNING, DONE = "pending", "running", "done"
OPEN_STATES = (PENDING, RUNNING)


class TopicSubscriber(Document):
    """One user subscribed to one topic; unique per (topic, user)."""

    topic = StringField(required=True, max_length=128)
    user_id = StringField(required=True, max_length=128)
    created_at = DateTimeField(required=True)

    meta = {
        "collection": "topic_subscribers",
        "auto_create_index": False,
        "indexes": [{"fields": ["topic", "user_id"], "name": SUBSCRIBER_INDEX, "unique": True}],
    }


class Topic(Document):
    """A topic's subscriber count, kept as subscriptions change: a count of the
    subscriptions themselves would read every one of them (seconds at 100,000 on the dev
    server)."""

    name = StringField(primary_key=True, max_length=128)
    subscribers = IntField(default=0)

    meta = {"collection": "topics", "auto_create_index": False}


class Fanout(Document):
    """A notification published to a topic, sent to its subscribers page by page.

    ``after``: the last user id whose copy is stored; ``lease_until`` (µs) and ``claim``:
    the worker that holds it, until then. ``content``: the notification's fields, copied
    into every subscriber's own notification. ``idem``: the request's ``Idempotency-Key``
    (scoped to its API key), unique."""

    topic = StringField(required=True, max_length=128)
    content = DictField()
    owner = StringField()
    state = StringField(required=True)
    after = StringField(default="")
    done = IntField(default=0)
    total = IntField()
    pages = IntField(default=0)
    lease_until = IntField(default=0)
    claim = StringField()
    created_at = DateTimeField(required=True)
    started_at = DateTimeField()
    finished_at = DateTimeField()
    idem = StringField()
    idem_hash = StringField()

    meta = {
        "collection": "fanouts",
        "auto_create_index": False,
        "strict": False,
        "indexes": [
            {"fields": ["state", "lease_until"], "name": FANOUT_STATE_INDEX},
            {"fields": ["idem"], "name": FANOUT_KEY_INDEX, "unique": True, "sparse": True},
        ],
    }


def subscribers_collection() -> Collection:
    return TopicSubscriber._get_collection()


def topics_collection() -> Collection:
    return Topic._get_collection()


def fanouts_collection() -> Collection:
    return Fanout._get_collection()
