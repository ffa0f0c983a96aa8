"""The OpenAPI 3.1 description of the whole HTTP API, and the docs page that renders it.

Kept as Python data next to the code so limits come from the same constants the
validators use; ``tests/test_openapi.py`` checks it against the app's URL map and
schemathesis checks it against the live app.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
from flask import Blueprint, Response, current_app, send_from_directory

from app.api import validation as v
from app.config import Config
from app.preferences import model as prefs
from app.push.endpoints import MAX_ENDPOINT_LENGTH

bp = Blueprint("docs", __name__, url_prefix="/api")

JSON = "application/json"
USER_ID = {"type": "string", "pattern": v.USER_ID_RE.pattern, "example": "alice"}
OBJECT_ID = {"type": "string", "pattern": "^[0-9a-fA-F]{24}$", "example": "6650f0c2a1b2c3d4e5f60718"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


DATA_KEY = {"type": "string", "pattern": "^([^$.\\x00][^.\\x00]*)?$"}
EXAMPLE_NOTE = {
    "id": "6650f0c2a1b2c3d4e5f60718", "seq": 1764172800000001, "user_id": "alice",
    "title": "Build finished", "message": "main is green", "category": "ci",
    "data": {"run": 42}, "created_at": "2026-11-26T16:00:00.000Z", "read": False,
    "seen": False, "archived": False, "priority": "high",
    "actions": [{"label": "Open the run", "url": "https://ci.example/runs/42"}],
}  # fmt: skip
SENT_FIELDS = ["connection", "transport", "instance", "worker", "at", "received_at"]
ACTION = {
    "type": "object",
    "required": ["label", "url"],
    "additionalProperties": False,
    "properties": {
        "label": {"type": "string", "minLength": 1, "maxLength": v.MAX_ACTION_LABEL},
        "url": {"type": "string", "minLength": 1, "maxLength": v.MAX_ACTION_URL,
                "pattern": v.ACTION_URL_RE.pattern,
                "description": "An http(s) URL, or a path on the page's own site (`/...`, not `//host`); "
                "no spaces, control characters or backslashes"},
    },
}  # fmt: skip
PRIORITY = {"enum": list(v.PRIORITIES), "description": "How prominently a client shows it"}

# Dense on purpose: the document reads best close to its JSON shape.
# fmt: off
SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "example": "invalid_field"},
                    "message": {"type": "string"},
                    "field": {"type": "string", "description": "The offending field, for validation errors"},
                },
            }
        },
    },
    "Notification": {
        "type": "object",
        "required": ["id", "seq", "user_id", "title", "message", "category", "data", "created_at", "read",
                     "seen", "archived", "priority", "actions"],
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9a-f]{24}$"},
            "seq": {"type": ["integer", "null"], "description": "Cursor; null in a 201 if Redis was down"},
            "user_id": {"type": "string"},
            "title": {"type": "string"},
            "message": {"type": "string"},
            "category": {"type": "string"},
            "data": {"type": "object"},
            "created_at": {"type": "string", "format": "date-time"},
            "read": {"type": "boolean"},
            "seen": {"type": "boolean", "description": "Shown in an inbox (or read): not unseen any more"},
            "archived": {"type": "boolean"},
            "priority": PRIORITY,
            "actions": {"type": "array", "items": ACTION, "maxItems": v.MAX_ACTIONS},
        },
        "example": EXAMPLE_NOTE,
    },
    "Data": {
        "type": "object",
        "description": f"Free-form JSON: at most {v.MAX_DATA_BYTES} bytes encoded, {v.MAX_DATA_DEPTH} levels "
        "of objects and lists (this one included); keys must not start with '$' or contain '.'; integers "
        "(numbers with no fractional part, however written) must fit in 64 bits (-2^63 to 2^63-1)",
        "propertyNames": DATA_KEY,
        "additionalProperties": {"$ref": "#/components/schemas/DataValue"},
    },
    "DataValue": {"anyOf": [
        {"type": ["string", "boolean", "null"]},
        {"type": "integer", "minimum": v.INT64_MIN, "maximum": v.INT64_MAX},
        {"type": "number", "not": {"type": "integer"}},
        {"type": "array", "items": {"$ref": "#/components/schemas/DataValue"}},
        {"$ref": "#/components/schemas/Data"},
    ]},
    "NotificationList": {
        "type": "object",
        "required": ["notifications"],
        "properties": {"notifications": {"type": "array", "items": _ref("Notification")}},
    },
    "HistoryPage": {
        "type": "object",
        "required": ["notifications", "next"],
        "properties": {
            "notifications": {"type": "array", "items": _ref("Notification")},
            "next": {"type": ["string", "null"], "description": "Pass as `before` for the next page"},
        },
    },
    "NewNotification": {
        "type": "object",
        "description": "Send exactly one of `user_id` or `user_ids`.",
        "required": ["message"],
        "properties": {
            "user_id": USER_ID,
            "user_ids": {"type": "array", "items": USER_ID, "minItems": 1, "maxItems": v.MAX_USER_IDS,
                         "uniqueItems": True},
            "message": {"type": "string", "minLength": 1, "maxLength": 4000},
            "title": {"type": ["string", "null"], "maxLength": 200},
            "category": {"type": ["string", "null"], "maxLength": 64},
            "data": {"anyOf": [_ref("Data"), {"type": "null"}]},
            "priority": {"anyOf": [PRIORITY, {"type": "null"}], "default": "normal"},
            "actions": {"anyOf": [{"type": "array", "items": ACTION, "maxItems": v.MAX_ACTIONS},
                                  {"type": "null"}]},
        },
        "additionalProperties": False,
        "oneOf": [{"required": ["user_id"]}, {"required": ["user_ids"]}],
        "example": {"user_id": "alice", "title": "Build finished", "message": "main is green",
                    "category": "ci", "data": {"run": 42}},
    },
    "Selection": {
        "type": "object",
        "description": 'Either `{"ids": [...]}` or `{"all": true}`.',
        "oneOf": [
            {"type": "object", "required": ["ids"], "properties": {
                "ids": {"type": "array", "items": OBJECT_ID, "minItems": 1, "maxItems": v.MAX_IDS},
                "all": False}},
            {"type": "object", "required": ["all"], "properties": {"all": {"const": True}, "ids": False}},
        ],
        "example": {"ids": ["6650f0c2a1b2c3d4e5f60718"]},
    },
    "ChangeResult": {"type": "object", "required": ["updated"],
                     "properties": {"updated": {"type": "integer"}}},
    "Deleted": {"type": "object", "required": ["deleted"], "properties": {"deleted": OBJECT_ID}},
    "Counts": {
        "type": "object",
        "description": "The inbox (not archived, not deleted): unseen (never shown nor read), unread, all",
        "required": ["unseen", "unread", "total"],
        "properties": {k: {"type": "integer", "minimum": 0} for k in ("unseen", "unread", "total")},
    },
    "UnreadCount": {
        "type": "object",
        "required": ["user_id", "unread"],
        "properties": {"user_id": {"type": "string"}, "unread": {"type": "integer", "minimum": 0}},
    },
    "TokenRequest": {
        "type": "object",
        "required": ["user_id"],
        "properties": {"user_id": USER_ID, "ttl_seconds": {"type": "integer", "minimum": 1}},
        "example": {"user_id": "alice", "ttl_seconds": 3600},
    },
    "PushSubscription": {
        "type": "object",
        "required": ["endpoint", "keys"],
        "additionalProperties": False,
        "description": "A browser's `PushSubscription.toJSON()`. The endpoint must be https:// on a host "
        "whose every address is public (no loopback, private, link-local, multicast or reserved address); "
        "checked again before every push",
        "properties": {
            "endpoint": {"type": "string", "format": "uri", "maxLength": MAX_ENDPOINT_LENGTH,
                         "example": "https://fcm.googleapis.com/fcm/send/c1x..."},
            "expirationTime": {"type": ["number", "null"]},
            "keys": {
                "type": "object",
                "required": ["p256dh", "auth"],
                "additionalProperties": False,
                "properties": {
                    "p256dh": {"type": "string", "pattern": "^[A-Za-z0-9_-]{87}={0,1}$",
                               "description": "base64url P-256 public key (65 bytes, uncompressed)"},
                    "auth": {"type": "string", "pattern": "^[A-Za-z0-9_-]{22}(==)?$",
                             "description": "base64url auth secret (16 bytes)"},
                },
            },
        },
    },
    "PushUnsubscribe": {
        "type": "object",
        "required": ["endpoint"],
        "properties": {"endpoint": {"type": "string", "minLength": 1}},
    },
    "PushSubscribed": {"type": "object", "required": ["subscribed", "id"],
                       "properties": {"subscribed": {"const": True}, "id": {"type": "string"}}},
    "PushRemoved": {"type": "object", "required": ["removed"],
                    "properties": {"removed": {"type": "boolean"}}},
    "PushKey": {"type": "object", "required": ["public_key"], "properties": {"public_key": {
        "type": "string",
        "description": "The VAPID public key (base64url), PushManager's applicationServerKey"}}},
    "Token": {
        "type": "object",
        "required": ["token", "user_id", "expires_at"],
        "properties": {"token": {"type": "string"}, "user_id": {"type": "string"},
                       "expires_at": {"type": "string", "format": "date-time"}},
    },
    "Traced": {
        "allOf": [_ref("Notification")],
        "type": "object",
        "required": ["delivery", "sent_by"],
        "properties": {"delivery": _ref("Delivery"), "sent_by": {
            "type": ["string", "null"], "description": "The support staff member who sent it from the "
            "dashboard (a test send); null when a service sent it"}},
    },
    "Presence": {
        "type": "object",
        "description": "Open connections within about 3 x PRESENCE_INTERVAL_SECONDS (each worker reports "
        "its own); staff watching the user in the dashboard are not the user",
        "required": ["user_id", "online", "connections", "last_seen"],
        "properties": {
            "user_id": {"type": "string"},
            "online": {"type": "boolean"},
            "connections": {"type": "array", "description": "Oldest first", "items": {
                "type": "object",
                "required": ["id", "transport", "instance", "worker", "since", "last_receipt"],
                "properties": {
                    "id": {"type": "string",
                           "description": "The stream's id, as in its `connected` event and the trace"},
                    "transport": {"enum": ["sse", "ws"]},
                    "instance": {"type": "string", "description": "INSTANCE_NAME, else the host name"},
                    "worker": {"type": "string", "description": "The worker's process id"},
                    "since": {"type": "string", "format": "date-time"},
                    "last_receipt": {"type": ["string", "null"], "format": "date-time",
                                     "description": "The newest receipt of this connection"}}}},
            "last_seen": {"type": ["string", "null"], "format": "date-time",
                          "description": "Now while online; else when the last connection ended; null: "
                          "never seen (or not in the last 90 days)"},
        },
    },
    "Delivery": {
        "type": "object",
        "description": "What happened to the notification; null where it did not happen (yet). Writes and "
        "receipts reach it within RECEIPT_FLUSH_SECONDS",
        "required": ["stored_at", "published_at", "sent", "received_at", "seen_at", "read_at", "archived_at"],
        "properties": {
            **{k: {"type": ["string", "null"], "format": "date-time"} for k in (
                "stored_at", "published_at", "received_at", "seen_at", "read_at", "archived_at")},
            "sent": {"type": "array", "description": "Each connection it was written to, oldest first",
                     "items": {"type": "object",
                               "required": SENT_FIELDS,
                               "properties": {
                                   "connection": {"type": "string"}, "transport": {"enum": ["sse", "ws"]},
                                   "instance": {"type": "string"}, "worker": {"type": "string"},
                                   "at": {"type": "string", "format": "date-time"},
                                   "received_at": {"type": ["string", "null"], "format": "date-time"}}}},
        },
    },
    "AckRequest": {
        "type": "object",
        "required": ["ids"],
        "additionalProperties": False,
        "properties": {
            "ids": {"type": "array", "items": OBJECT_ID, "minItems": 1, "maxItems": v.MAX_IDS},
            "connection": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9_~-]{1,200}$",
                           "description": "The stream's id, from its `connected` event"},
        },
        "example": {"ids": ["6650f0c2a1b2c3d4e5f60718"], "connection": "sse~host~1234~1"},
    },
    "Acked": {"type": "object", "required": ["acked"], "properties": {"acked": {"type": "integer"}}},
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
    "Ready": {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"enum": ["ok", "unavailable"]},
            "checks": {"type": "object", "additionalProperties": {"enum": ["ok", "down"]}},
            "error": {"type": "object"},
            "redis_mode": {"enum": ["standalone", "sentinel", "cluster"], "description": "REDIS_MODE"},
            "redis_primary": {
                "type": "string",
                "description": "sentinel mode: host:port of the primary this worker's commands go to",
            },
            "redis_masters": {
                "type": "array",
                "items": {"type": "string"},
                "description": "cluster mode: host:port of each master in this worker's slot map",
            },
        },
    },
}

_ERROR_TEXT = {
    400: "Malformed JSON", 401: "Missing or invalid credentials", 403: "Origin not allowed", 404: "Not found",
    405: "Method not allowed", 409: "Idempotency-Key used with another body", 413: "Body too large",
    415: "Content-Type is not application/json", 422: "A field is invalid (named in `error.field`)",
    429: "Rate limited; see Retry-After", 503: "A backing store is unavailable; retry later",
}  # fmt: skip


def _json(schema: str | dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"} if isinstance(schema, str) else schema
    return {"description": description, "content": {JSON: {"schema": ref}}, **extra}


def _errors(*codes: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for code in codes:
        out[str(code)] = {"$ref": f"#/components/responses/E{code}"}
    return out


# gunicorn itself refuses an over-long request line before the app sees it (no JSON body).
TOO_LONG = {"414": {"description": "URI too long (refused by gunicorn)"}}


def _op(summary: str, ok: dict[str, Any], errors: tuple[int, ...], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {**ok, **_errors(*errors), **TOO_LONG}, **extra}


def _text(mime: str, description: str, kind: str = "string") -> dict[str, Any]:
    return {"200": {"description": description, "content": {mime: {"schema": {"type": kind}}}}}


def _body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


API_KEY = [{"apiKey": []}]
SUBSCRIBER = [{"subscriberToken": []}]
STREAM_AUTH = [{"subscriberToken": []}, {"tokenQuery": []}]
USER_PARAM = {"name": "user_id", "in": "path", "required": True, "schema": USER_ID}
HISTORY_PARAMS = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
    {"name": "before", "in": "query", "schema": {**OBJECT_ID, "pattern": "^([0-9a-fA-F]{24})?$"},
     "description": "`next` from the previous page"},
    {"name": "state", "in": "query", "schema": {"enum": ["", *v.STATES]},
     "description": "`unread` or `read` (of the inbox), `archived`; absent or empty: the inbox (all but "
     "archived)"},
    {"name": "category", "in": "query", "schema": {"type": "string", "maxLength": 64},
     "description": "Only this category"},
    {"name": "unread", "in": "query", "schema": {"type": "boolean", "default": False},
     "description": "`true`: only the unread ones (`state=unread` for the inbox)"},
]
CURSOR_PARAMS = [
    {"name": "last_event_id", "in": "query", "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"},
     "description": "Resume after this cursor (the last `id` seen)"},
]
POST_ERRORS = (400, 401, 413, 415, 422, 503)
HISTORY_OK = {"200": _json("HistoryPage", "Newest first", headers={
    "X-Cache": {"schema": {"enum": ["HIT", "MISS"]}, "description": "Whether Redis served the page"}})}


def _history_op(summary: str, security: list, errors: tuple[int, ...]) -> dict[str, Any]:
    return _op(summary, HISTORY_OK, errors, security=security, parameters=HISTORY_PARAMS)


NOTIFICATION_PARAM = {"name": "notification_id", "in": "path", "required": True, "schema": OBJECT_ID}
CHANGE_TEXT = {
    "read": "Mark notifications read (and seen)",
    "seen": "Mark notifications seen: the inbox was shown (clears the unseen badge, not the unread count)",
    "unread": "Mark notifications unread again (they stay seen)",
    "archive": "Archive notifications: out of the inbox and its counts, listed with `state=archived`",
    "unarchive": "Bring archived notifications back to the inbox",
}


def _inbox_paths(base: str, whose: str, security: list, errors: tuple[int, ...]) -> dict[str, Any]:
    """The inbox operations, the same for a service (``/api/users/{user_id}``) and the
    subscriber (``/api/me``); every change reaches each open stream of the user as a
    ``state`` event."""
    param = {"parameters": [USER_PARAM]} if "{user_id}" in base else {}
    paths: dict[str, Any] = {
        f"{base}/notifications": {
            **param, "get": _history_op(f"{whose} inbox, newest first", security, errors)},
        f"{base}/unread-count": {**param, "get": _op(
            f"{whose} unread count (of the inbox)", {"200": _json("UnreadCount", "Count")}, errors,
            security=security)},
        f"{base}/counts": {**param, "get": _op(
            f"{whose} inbox counts", {"200": _json("Counts", "Counts")}, errors, security=security)},
        f"{base}/notifications/{{notification_id}}": {
            "parameters": [*param.get("parameters", []), NOTIFICATION_PARAM], "delete": _op(
                f"Delete one of {whose.lower()} notifications: out of the inbox, its counts and replays",
                {"200": _json("Deleted", "Deleted")}, (*errors, 404), security=security)},
    }
    for change, text in CHANGE_TEXT.items():
        paths[f"{base}/{change}"] = {**param, "post": _op(
            f"{text} ({whose.lower()})", {"200": _json("ChangeResult", "How many changed")},
            (*POST_ERRORS, *errors), security=security, requestBody=_body("Selection"))}
    return paths


PATHS: dict[str, Any] = {
    "/api/notifications": {"post": _op(
        "Create a notification for one user (201 Notification) or many (201 NotificationList)",
        {"201": {"description": "Stored (and published)", "headers": {
            "Idempotent-Replayed": {"schema": {"const": "true"}, "description": "A replayed response"}},
            "content": {JSON: {"schema": {"oneOf": [{"$ref": "#/components/schemas/Notification"},
                                                     {"$ref": "#/components/schemas/NotificationList"}]},
                               "example": EXAMPLE_NOTE}}}},
        (*POST_ERRORS, 409, 429), security=API_KEY, requestBody=_body("NewNotification"),
        parameters=[{"name": "Idempotency-Key", "in": "header", "schema": {
            "type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
            "description": "A retry with the same key and body gets the first response"}])},
    **_inbox_paths("/api/users/{user_id}", "A user's", API_KEY, (401, 404, 422, 503)),
    **_inbox_paths("/api/me", "The subscriber's", SUBSCRIBER, (401, 422, 503)),
    "/api/notifications/{notification_id}": {"parameters": [NOTIFICATION_PARAM], "get": _op(
        "A notification with its delivery trace (stored, published, each connection written to, "
        "received, seen, read, archived)", {"200": _json("Traced", "The notification and its trace")},
        (401, 404, 422, 503), security=API_KEY)},
    "/api/users/{user_id}/presence": {"parameters": [USER_PARAM], "get": _op(
        "Whether the user is connected: each open connection (transport, instance, worker, since, last "
        "receipt) across all instances, and when the user was last seen",
        {"200": _json("Presence", "The user's presence")}, (401, 422, 503), security=API_KEY)},
    "/api/me/ack": {"post": _op(
        "Receipts: the subscriber's client received these notifications (SSE clients; a WebSocket "
        'client sends `{"type":"ack","ids":[...]}`). Recorded within RECEIPT_FLUSH_SECONDS',
        {"200": _json("Acked", "How many ids were recorded")}, POST_ERRORS, security=SUBSCRIBER,
        requestBody=_body("AckRequest"))},
    "/api/me/push-key": {"get": _op(
        "The service's VAPID public key, to subscribe with (404 `push_disabled` while PUSH_ENABLED is off)",
        {"200": _json("PushKey", "The key")}, (401, 404), security=SUBSCRIBER)},
    "/api/me/push-subscriptions": {
        "post": _op(
            "Store this browser's Web Push subscription for the subscriber: notifications are pushed to it "
            "while the user has no live stream (TTL PUSH_TTL_SECONDS). The same endpoint is stored once; "
            "the newest PUSH_MAX_SUBSCRIPTIONS_PER_USER are kept",
            {"201": _json("PushSubscribed", "Stored")}, (*POST_ERRORS, 404), security=SUBSCRIBER,
            requestBody=_body("PushSubscription")),
        "delete": _op(
            "Remove one of the subscriber's push subscriptions, by endpoint (idempotent)",
            {"200": _json("PushRemoved", "Whether it was stored")}, (*POST_ERRORS, 404), security=SUBSCRIBER,
            requestBody=_body("PushUnsubscribe")),
    },
    "/api/recent": {"get": _op(
        "The newest notifications across all users", {"200": _json("NotificationList", "Newest first")},
        (401, 503), security=API_KEY)},
    "/api/tokens": {"post": _op(
        "Mint a subscriber token for one user's stream and /api/me", {"201": _json("Token", "Minted")},
        POST_ERRORS, security=API_KEY, requestBody=_body("TokenRequest"))},
    "/stream": {"get": _op(
        "Server-Sent Events: `connected` (the stream's id, for receipts), `notification` (id = cursor), "
        "`state` (an inbox change made anywhere: "
        "`change`, `ids`, `all` and the counts after it; id = cursor), `update` (a notification changed "
        "in place: `id` and the `notification` as it is now; id = cursor), `reset`, `expired` events; "
        "`disconnected` when support staff closed the stream",
        {"200": {"description": "An endless event stream", "content": {"text/event-stream": {
            "schema": {"type": "string"},
            "example": 'retry: 2000\n\nid: 1764172800000001\nevent: notification\ndata: {"id":"..."}\n\n'}}}},
        (401, 429, 503), security=STREAM_AUTH, parameters=[*CURSOR_PARAMS, {
            "name": "Last-Event-ID", "in": "header", "schema": {"type": "string"},
            "description": "Sent by EventSource on reconnect; same as last_event_id"}])},
    "/ws": {"get": _op(
        "WebSocket (GET with Upgrade: websocket). Server frames: "
        '`{"type":"notification","id":cursor,"notification":{...}}`, '
        '`{"type":"state","seq":cursor,"change",...}`, `{"type":"update","seq":cursor,"id",'
        '"notification":{...}}`, `reset`, `error`. Client frames: '
        '`{"type":"read"|"seen"|"unread"|"archive"|"unarchive","ids":[...]}` (or `"all":true`), '
        '`{"type":"delete","ids":[...]}`, `{"type":"ack","ids":[...]}` (receipts). Close codes: '
        "1008 slow consumer, 1009 frame too large, 4401 token expired, 4000 closed by support staff.",
        {"101": {"description": "Switching Protocols"}}, (401, 403, 429), security=STREAM_AUTH,
        parameters=CURSOR_PARAMS)},
    "/healthz": {"get": _op("Liveness", {"200": _json("Health", "The process runs")}, (), security=[])},
    "/readyz": {"get": _op("Readiness: MongoDB and Redis reachable", {
        "200": _json("Ready", "Ready"), "503": _json("Ready", "A dependency is down")}, (), security=[])},
    "/metrics": {"get": _op(
        "Prometheus metrics of all workers. Needs the METRICS_TOKEN bearer when one is set; "
        "refused in production without one", _text("text/plain", "Prometheus text format"),
        (401, 403), security=[{"metricsToken": []}, {}])},
    "/api/openapi.json": {"get": _op("This document", _text(JSON, "OpenAPI 3.1", "object"), (), security=[])},
    "/api/docs": {"get": _op("Human-readable API docs", _text("text/html", "HTML page"), (), security=[])},
}



# -- topics (app/topics/) -------------------------------------------------------------
TOPIC_PARAM = {"name": "topic", "in": "path", "required": True,
               "schema": {"type": "string", "pattern": v.TOPIC_RE.pattern, "example": "deploys"}}
TOPIC_SCHEMAS: dict[str, Any] = {
    "TopicUsers": {
        "type": "object", "required": ["user_ids"], "additionalProperties": False,
        "properties": {"user_ids": {"type": "array", "items": USER_ID, "minItems": 1,
                                    "maxItems": v.MAX_USER_IDS, "uniqueItems": True}},
        "example": {"user_ids": ["alice", "bob"]},
    },
    "Subscribed": {"type": "object", "required": ["topic", "subscribed"], "properties": {
        "topic": {"type": "string"},
        "subscribed": {"type": "integer", "minimum": 0, "description": "How many were not subscribed yet"}}},
    "Unsubscribed": {"type": "object", "required": ["topic", "unsubscribed"], "properties": {
        "topic": {"type": "string"},
        "unsubscribed": {"type": "integer", "minimum": 0, "description": "How many were subscribed"}}},
    "SubscriberPage": {"type": "object", "required": ["topic", "subscribers", "next", "total"],
                       "properties": {
        "topic": {"type": "string"},
        "total": {"type": "integer", "minimum": 0, "description": "How many users are subscribed"},
        "subscribers": {"type": "array", "items": {"type": "string"}, "description": "In user id order"},
        "next": {"type": ["string", "null"], "description": "Pass as `after` for the next page"}}},
    "Fanout": {
        "type": "object",
        "description": "A notification published to a topic, sent to its subscribers page by page by "
        "whichever instance holds its lease; a fan-out whose worker died is resumed by another",
        "required": ["id", "topic", "state", "done", "total", "created_at", "started_at", "finished_at"],
        "properties": {
            "id": OBJECT_ID, "topic": {"type": "string"},
            "state": {"enum": ["pending", "running", "done", "failed"]},
            "done": {"type": "integer", "minimum": 0, "description": "Subscribers whose copy is stored"},
            "total": {"type": ["integer", "null"], "description": "Subscribers when it started (null "
                      "until then); at the end, the copies sent"},
            **{k: {"type": ["string", "null"], "format": "date-time"}
               for k in ("created_at", "started_at", "finished_at")},
        },
    },
}
SUBSCRIBER_PAGE_PARAMS = [
    {"name": "after", "in": "query", "schema": {"type": "string", "pattern": "^$|" + v.USER_ID_RE.pattern},
     "description": "`next` of the previous page"},
    {"name": "limit", "in": "query",
     "schema": {"type": "integer", "minimum": 1, "maximum": v.MAX_TOPIC_PAGE, "default": 100}},
]
TOPIC_PATHS: dict[str, Any] = {
    "/api/topics/{topic}/subscribers": {
        "parameters": [TOPIC_PARAM],
        "put": _op("Subscribe users to a topic (idempotent)", {"200": _json("Subscribed", "Subscribed")},
                   POST_ERRORS, security=API_KEY, requestBody=_body("TopicUsers")),
        "delete": _op("Unsubscribe users from a topic", {"200": _json("Unsubscribed", "Unsubscribed")},
                      POST_ERRORS, security=API_KEY, requestBody=_body("TopicUsers")),
        "get": _op("A page of the topic's subscribers, in user id order",
                   {"200": _json("SubscriberPage", "A page")}, (401, 422, 503), security=API_KEY,
                   parameters=SUBSCRIBER_PAGE_PARAMS),
    },
    "/api/fanouts/{fanout_id}": {
        "parameters": [{"name": "fanout_id", "in": "path", "required": True, "schema": OBJECT_ID}],
        "get": _op("A topic fan-out's progress", {"200": _json("Fanout", "Its state and counts")},
                   (401, 404, 422, 503), security=API_KEY),
    },
}


def _with_topics(schemas: dict[str, Any], paths: dict[str, Any]) -> None:
    """``"topic"`` as a third way to name the recipients of ``POST /api/notifications``."""
    schemas.update(copy.deepcopy(TOPIC_SCHEMAS))
    new = schemas["NewNotification"]
    new["description"] = "Send exactly one of `user_id`, `user_ids` or `topic` (every subscriber, 202)."
    new["properties"]["topic"] = TOPIC_PARAM["schema"]
    new["oneOf"].append({"required": ["topic"]})
    post = paths["/api/notifications"]["post"]
    post["summary"] += "; or for a topic's subscribers (202 Fanout)"
    post["responses"]["202"] = _json("Fanout", "Accepted: sent in the background; progress at Location",
                                     headers={"Location": {"schema": {"type": "string"},
                                                           "description": "/api/fanouts/{id}"}})
    paths.update(copy.deepcopy(TOPIC_PATHS))

# fmt: on


# -- scheduled, expiring and updatable notifications (issue 22.2) -----------------------------
# fmt: off
TIME = {"type": ["string", "null"], "format": "date-time",
        "description": "ISO 8601 with its offset (`Z` or `+hh:mm`)"}
SCHEDULE_FIELDS: dict[str, Any] = {
    "send_at": {**TIME, "description": "Send at this time (ISO 8601 with its offset), at most a year ahead; "
                "a past time sends now. Until then it is in no inbox, count or replay, and "
                "`DELETE /api/notifications/{notification_id}` cancels it"},
    "expires_at": {**TIME, "description": "After this time it leaves the inbox and the counts and is not "
                   "replayed; later than now and than `send_at`"},
    "collapse_key": {"type": ["string", "null"], "minLength": 1, "maxLength": v.MAX_COLLAPSE_KEY,
                     "description": "A new notification with the same key for the same user replaces the "
                     "previous one (which leaves the inbox; the new one names it in `replaces`)"},
}
SCHEMAS["NewNotification"]["properties"].update(SCHEDULE_FIELDS)
SCHEMAS["Notification"]["properties"].update({
    "send_at": {"type": "string", "format": "date-time", "description": "Only on a scheduled one"},
    "expires_at": {"type": "string", "format": "date-time", "description": "Only when it expires"},
    "updated_at": {"type": "string", "format": "date-time", "description": "Only once it was updated"},
    "collapse_key": {"type": "string", "description": "Only when sent with one"},
    "replaces": {**OBJECT_ID, "description": "The notification it replaced (same `collapse_key`)"},
    "hidden": {"const": "preferences", "description": "Only when its user's preferences keep its category "
               "out of the inbox (`[]`): stored, but in no inbox, count or replay, not sent on open streams "
               "and not pushed (`delivery.published_at` stays null)"},
})
SCHEMAS["Traced"]["required"] += ["sent", "sent_at"]
SCHEMAS["Traced"]["properties"].update({
    "sent": {"type": "boolean", "description": "false while a scheduled one waits for its `send_at` (true "
             "once due, also when `hidden` kept it from being published)"},
    "sent_at": {**TIME, "description": "When a scheduled one was sent"},
})
SCHEMAS["NotificationUpdate"] = {
    "type": "object",
    "description": "The fields to change (at least one), validated as on create",
    "minProperties": 1,
    "additionalProperties": False,
    "properties": {name: SCHEMAS["NewNotification"]["properties"][name]
                   for name in ("title", "data", "priority", "actions")}
    | {"message": {"type": "string", "minLength": 1, "maxLength": 4000}},
    "example": {"message": "Upload 90% done", "data": {"progress": 90}},
}
SCHEMAS["Cancelled"] = {"type": "object", "required": ["cancelled"], "properties": {"cancelled": OBJECT_ID}}
ALREADY_SENT = {"409": _json("Error", "Sent already (or being sent now): `already_sent`")}
PATHS["/api/notifications/{notification_id}"].update({
    "patch": _op(
        "Update a notification in place (title, message, data, priority, actions): stored, and once sent "
        "an `update` event reaches every open client of the user, in their cursor order",
        {"200": _json("Notification", "The notification as it is now")}, (*POST_ERRORS, 404),
        security=API_KEY, requestBody=_body("NotificationUpdate")),
    "delete": _op(
        "Cancel a scheduled notification before it is sent (409 once it was: a user's inbox entry is "
        "deleted with `DELETE /api/users/{user_id}/notifications/{notification_id}`)",
        {"200": _json("Cancelled", "Cancelled: it will not be sent"), **ALREADY_SENT},
        (401, 404, 422, 503), security=API_KEY),
})

# -- preferences (app/preferences/) ----------------------------------------------------------
CHANNELS = {"description": "The channels that deliver it: `inbox` (inbox, history, counts, replays), `live` "
            "(open streams), `push` (Web Push); `live` and `push` imply `inbox`, which may be left out "
            '(`["live", "push"]` is all three). `["muted"]` (or `["inbox"]`): in the inbox, sent on no '
            "channel. "
            "`[]`: off everywhere: still stored (the notification says `hidden: \"preferences\"`), but in no "
            "inbox, count or replay, not streamed and not pushed",
            "anyOf": [{"type": "array", "items": {"enum": list(prefs.CHANNELS)},
                       "maxItems": len(prefs.CHANNELS), "uniqueItems": True}, {"const": [prefs.MUTED]}]}
HHMM = {"type": "string", "pattern": prefs.HHMM_RE.pattern, "example": "22:00"}
SCHEMAS["Preferences"] = {
    "type": "object",
    "additionalProperties": False,
    "description": "A PUT replaces them all: what it leaves out takes the default (every channel on, "
    "no quiet hours)",
    "properties": {
        "default": {**CHANNELS, "description": "For uncategorised notifications and unlisted categories. "
                    + CHANNELS["description"]},
        "categories": {"type": "object", "maxProperties": prefs.MAX_CATEGORIES,
                       "propertyNames": {"minLength": 1, "maxLength": prefs.MAX_CATEGORY},
                       "additionalProperties": CHANNELS, "description": "Per notification `category`"},
        "quiet_hours": {"oneOf": [{"type": "null"}, {
            "type": "object", "required": ["start", "end", "timezone"], "additionalProperties": False,
            "description": "Web Push waits until `end` (local time in `timezone`; the window may cross "
            "midnight); live delivery and the inbox go on",
            "properties": {"start": HHMM, "end": {**HHMM, "example": "07:00"},
                           "timezone": {"type": "string", "minLength": 1, "maxLength": 64,
                                        "description": "An IANA time zone", "example": "Europe/Paris"}},
        }]},
    },
    "example": {"default": ["inbox", "live", "push"],
                "categories": {"promo": ["muted"], "chat": ["inbox", "live"], "ads": []},
                "quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Europe/Paris"}},
}
PREFERENCES_OK = {"200": _json("Preferences", "The preferences (defaults when none are stored)")}
PATHS["/api/me/preferences"] = {
    "get": _op("The subscriber's notification preferences", PREFERENCES_OK, (401, 503), security=SUBSCRIBER),
    "put": _op("Replace the subscriber's notification preferences", PREFERENCES_OK, POST_ERRORS,
               security=SUBSCRIBER, requestBody=_body("Preferences")),
}
PATHS["/api/users/{user_id}/preferences"] = {
    "parameters": [USER_PARAM],
    "get": _op("A user's notification preferences", PREFERENCES_OK, (401, 422, 503), security=API_KEY),
    "put": _op("Replace a user's notification preferences", PREFERENCES_OK, POST_ERRORS, security=API_KEY,
               requestBody=_body("Preferences")),
}
# fmt: on


def build_spec(config: Config) -> dict[str, Any]:
    """The document for this app's settings (limits that are configurable are filled in)."""
    schemas = copy.deepcopy(SCHEMAS)
    schemas["TokenRequest"]["properties"]["ttl_seconds"]["maximum"] = config.TOKEN_MAX_TTL_SECONDS
    paths = copy.deepcopy(PATHS)
    _with_topics(schemas, paths)
    responses = {f"E{code}": _json("Error", text) for code, text in _ERROR_TEXT.items()}
    responses["E413"]["description"] = f"Body larger than {config.MAX_BODY_BYTES} bytes"
    responses["E429"]["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds"}}
    responses["E401"]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Notification service API",
            "version": "1.0.0",
            "description": "Services send notifications with an API key; browsers read them live over "
            "`/stream` (SSE) or `/ws` (WebSocket) with a per-user subscriber token minted by "
            '`POST /api/tokens`. Errors are always `{"error": {"code", "message", "field"?}}`.',
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": responses,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "A publisher API key"},
                "subscriberToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A subscriber token from POST /api/tokens",
                },
                "metricsToken": {"type": "http", "scheme": "bearer", "description": "METRICS_TOKEN"},
                "tokenQuery": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "token",
                    "description": "The subscriber token, for EventSource/WebSocket clients",
                },
            },
        },
    }


# The page builds its DOM from the spec with text nodes only; nothing inline, nothing remote.
DOCS_CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:"


@bp.get("/openapi.json")
def openapi_json() -> Response:
    body = orjson.dumps(build_spec(current_app.extensions["config"]))
    return Response(body, mimetype=JSON, headers={"Cache-Control": "no-cache"})


@bp.get("/docs")
def docs_page() -> Response:
    static = current_app.static_folder or "static"
    resp = send_from_directory(f"{static}/docs", "index.html", max_age=0)
    resp.headers["Content-Security-Policy"] = DOCS_CSP
    return resp
