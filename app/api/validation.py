"""Request body parsing and field validation, naming the field that is wrong.

JSON is parsed with orjson, which refuses nesting deeper than 1024 and numbers that
overflow a double in microseconds, so hostile bodies cost nothing and never crash a worker.
What passes here is what the store can hold: ``data`` is walked once and a value BSON
cannot encode (an integer outside int64, a key MongoDB refuses) is named by its path.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from app.errors import ApiError

USER_ID_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")
MAX_USER_IDS = 1000
MAX_DATA_BYTES = 8 * 1024
MAX_DATA_DEPTH = 32  # objects and lists, ``data`` itself included
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
PRIORITIES = ("low", "normal", "high")
MAX_ACTIONS = 3
MAX_ACTION_LABEL = 64
MAX_ACTION_URL = 2048
MAX_IDS = 1000  # ids one call may name (stored calls take them MAX_IDS_PER_CALL at a time)
STATES = ("unread", "read", "archived")
# An action's URL: http(s) with a host, or a path on the page's own site ("/x", not "//host").
# Nothing a browser runs (javascript:, data:) or reads as another host (//, backslashes);
# the same pattern is the OpenAPI description's.
_URL_CHAR = "[^\\x00-\\x20\\x7f\\\\]"
ACTION_URL_RE = re.compile(
    "^(?:[Hh][Tt][Tt][Pp][Ss]?://[^/?#\\x00-\\x20\\x7f\\\\]+|/[^/\\x00-\\x20\\x7f\\\\]|/$)" + _URL_CHAR + "*$"
)


def json_body() -> dict[str, Any]:
    """The request's JSON object, or an ApiError with 415 / 400 / 413."""
    if not is_json_mimetype(request.mimetype or ""):
        raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json")
    raw = request.get_data(cache=True)  # MAX_CONTENT_LENGTH makes this raise 413
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(raw) >= limit:
        raise RequestEntityTooLarge()  # a chunked body is cut at the limit, not refused: refuse it
    return json_object(raw)


def is_json_mimetype(mimetype: str) -> bool:
    return mimetype == "application/json" or mimetype.endswith("+json")


def json_object(raw: bytes) -> dict[str, Any]:
    """``raw`` parsed as a JSON object, or an ApiError 400."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "malformed_json", "request body must be a JSON object")
    return body


def invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_field", f"{field}: {message}", field=field)


def user_id(value: Any, field: str = "user_id") -> str:
    if not isinstance(value, str) or not USER_ID_RE.fullmatch(value):
        raise invalid(field, "must be 1-128 characters of A-Z a-z 0-9 _ . : @ -")
    return value


def idempotency_key(value: str) -> str:
    if not IDEMPOTENCY_KEY_RE.fullmatch(value):
        raise invalid("Idempotency-Key", "must be 1-255 printable ASCII characters")
    return value


def text(body: dict[str, Any], name: str, max_len: int, *, required: bool, path: str = "") -> str:
    value = body.get(name)
    field = f"{path}.{name}" if path else name
    if value is None:
        if required:
            raise invalid(field, "is required")
        return ""
    if not isinstance(value, str):
        raise invalid(field, "must be a string")
    if required and not value:
        raise invalid(field, "must not be empty")
    if len(value) > max_len:
        raise invalid(field, f"must be at most {max_len} characters")
    return value


def data_object(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid("data", "must be a JSON object")
    _check_storable(value, "data", 1)
    if len(orjson.dumps(value)) > MAX_DATA_BYTES:
        raise invalid("data", f"must be at most {MAX_DATA_BYTES} bytes encoded")
    return value


def priority(value: Any) -> str:
    if value is None:
        return "normal"
    if value not in PRIORITIES:
        raise invalid("priority", "must be one of " + ", ".join(PRIORITIES))
    return value


def actions(value: Any) -> list[dict[str, str]]:
    """Up to ``MAX_ACTIONS`` ``{"label", "url"}``, each URL matching ``ACTION_URL_RE``."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_ACTIONS:
        raise invalid("actions", f"must be a list of at most {MAX_ACTIONS} actions")
    out = []
    for index, item in enumerate(value):
        path = f"actions[{index}]"
        if not isinstance(item, dict):
            raise invalid(path, 'must be an object {"label", "url"}')
        known_fields(item, ACTION_FIELDS, path)
        label = text(item, "label", MAX_ACTION_LABEL, required=True, path=path)
        out.append({"label": label, "url": _action_url(item.get("url"), f"{path}.url")})
    return out


ACTION_FIELDS = frozenset({"label", "url"})


def _action_url(value: Any, field: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ACTION_URL:
        raise invalid(field, f"must be a URL of 1-{MAX_ACTION_URL} characters")
    if not ACTION_URL_RE.fullmatch(value):
        raise invalid(
            field,
            "must be an http(s) URL or a path on this site (/...), with no spaces, control "
            "characters or backslashes",
        )
    return value


def id_selection(body: dict[str, Any]) -> list[str] | None:
    """``{"ids": [...]}`` (1-``MAX_IDS`` strings) or ``{"all": true}`` (None)."""
    if body.get("all") is True and "ids" not in body:
        return None
    if "ids" in body and "all" not in body:
        return id_list(body["ids"])
    raise invalid("ids", 'send {"ids": [...]} or {"all": true}')


def id_list(ids: Any) -> list[str]:
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_IDS or not all(isinstance(i, str) for i in ids):
        raise invalid("ids", f"must be a list of 1-{MAX_IDS} notification ids")
    return ids


def known_fields(body: dict[str, Any], allowed: frozenset[str], path: str = "") -> None:
    """Refuse a field the request does not define: a typo must not be a silent loss."""
    for name in body:
        if name not in allowed:
            field = f"{path}.{name}" if path else name
            raise invalid(field, "unknown field (allowed: " + ", ".join(sorted(allowed)) + ")")


def user_ids(value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise invalid("user_ids", f"must be a list of 1-{MAX_USER_IDS} user ids")
    if len(value) > MAX_USER_IDS:
        raise invalid("user_ids", f"must hold at most {MAX_USER_IDS} user ids")
    ids = [user_id(item, "user_ids") for item in value]
    if len(set(ids)) != len(ids):
        raise invalid("user_ids", "must not repeat a user id")
    return ids


def single_arg(name: str) -> str | None:
    """A query parameter given at most once (``?limit=1&limit=2`` is ambiguous: refused)."""
    values = request.args.getlist(name)
    if len(values) > 1:
        raise invalid(name, "must be given at most once")
    return values[0] if values else None


def int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = single_arg(name)
    if raw is None:
        return default
    if not re.fullmatch(r"-?[0-9]{1,19}", raw) or not low <= int(raw) <= high:
        raise invalid(name, f"must be an integer from {low} to {high}")
    return int(raw)


def state_arg() -> str | None:
    """``state=unread|read|archived``; None: the inbox."""
    state = single_arg("state") or None
    if state is not None and state not in STATES:
        raise invalid("state", "must be one of " + ", ".join(STATES))
    return state


def bool_arg(name: str) -> bool:
    raw = single_arg(name)
    if raw is None or raw == "false":
        return False
    if raw == "true":
        return True
    raise invalid(name, "must be true or false")


def _check_storable(value: Any, path: str, level: int) -> None:
    """Depth, keys and integers of ``data``, anywhere in it, named by path (``data.a[2].b``)."""
    if isinstance(value, (dict, list)) and level > MAX_DATA_DEPTH:
        raise invalid(path, f"data must be nested at most {MAX_DATA_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if key.startswith("$") or "." in key or "\x00" in key:
                raise invalid(f"{path}.{key}", "keys must not start with '$' or contain '.' or NUL")
            _check_storable(item, f"{path}.{key}", level + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_storable(item, f"{path}[{index}]", level + 1)
    elif not _fits_int64(value):
        raise invalid(path, "integers must fit in 64 bits (-2^63 to 2^63-1); send a string")


def _fits_int64(value: Any) -> bool:
    """False for an integer beyond int64, as JSON Schema counts integers: no fractional
    part, however spelled. orjson reads ``1e30`` and integers beyond 64 bits as floats, so
    an integral float at -2^63 or beyond was such an integer (or equals one: refused too)."""
    if isinstance(value, float):
        return not value.is_integer() or -(2.0**63) < value < 2.0**63
    return not isinstance(value, int) or INT64_MIN <= value <= INT64_MAX


# -- topics (app/topics/) -------------------------------------------------------------
TOPIC_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
MAX_TOPIC_PAGE = 1000


def topic(value: Any, field: str = "topic") -> str:
    if not isinstance(value, str) or not TOPIC_RE.fullmatch(value):
        raise invalid(field, "must be 1-128 characters of A-Z a-z 0-9 _ . : @ -")
    return value


def notification_content(body: dict[str, Any]) -> dict[str, Any]:
    """A notification's own fields (all but whom it is for), validated, as stored."""
    return {
        "message": text(body, "message", 4000, required=True),
        "title": text(body, "title", 200, required=False),
        "category": text(body, "category", 64, required=False),
        "data": data_object(body.get("data")),
        "priority": priority(body.get("priority")),
        "actions": actions(body.get("actions")),
    }


# -- scheduling, expiry and updates (``send_at``, ``expires_at``, ``collapse_key``, PATCH) --------
MAX_SCHEDULE_AHEAD = timedelta(days=366)  # "up to a year ahead", a leap year's day included
MAX_COLLAPSE_KEY = 128
UPDATABLE_FIELDS = frozenset({"title", "message", "data", "priority", "actions"})


def timestamp(value: Any, field: str) -> datetime | None:
    """An ISO 8601 time with its offset (``Z`` or ``+02:00``), in UTC; None when absent.

    Without an offset the time would depend on the server's zone: refused."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 40:
        raise invalid(field, "must be an ISO 8601 time with an offset, e.g. 2030-01-31T09:00:00Z")
    try:
        parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value[-1:] in "Zz" else value)
    except ValueError:
        raise invalid(field, "must be an ISO 8601 time with an offset, e.g. 2030-01-31T09:00:00Z") from None
    if parsed.tzinfo is None:
        raise invalid(field, "must name its offset from UTC (Z or +hh:mm)")
    try:
        utc = parsed.astimezone(timezone.utc)
    except OverflowError:
        raise invalid(field, "is out of range") from None
    return utc.replace(microsecond=utc.microsecond // 1000 * 1000)  # what MongoDB stores


def send_at(value: Any, now: datetime) -> datetime | None:
    """When to send: None (now) for an absent or past time, else at most a year ahead."""
    when = timestamp(value, "send_at")
    if when is not None and when > now + MAX_SCHEDULE_AHEAD:
        raise invalid("send_at", "must be at most a year ahead")
    return when if when is not None and when > now else None


def expires_at(value: Any, now: datetime, sent_at: datetime | None) -> datetime | None:
    """When the notification leaves the inbox: after it is sent (now, or ``send_at``)."""
    when = timestamp(value, "expires_at")
    if when is not None and when <= (sent_at or now):
        raise invalid("expires_at", "must be later than now and than send_at")
    return when


def collapse_key(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_COLLAPSE_KEY:
        raise invalid("collapse_key", f"must be a string of 1-{MAX_COLLAPSE_KEY} characters")
    return value


def update_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The fields a PATCH changes, validated as a create validates them."""
    known_fields(body, UPDATABLE_FIELDS)
    if not body:
        raise invalid("body", "name at least one of " + ", ".join(sorted(UPDATABLE_FIELDS)))
    checks = {
        "title": lambda: text(body, "title", 200, required=False),
        "message": lambda: text(body, "message", 4000, required=True),
        "data": lambda: data_object(body.get("data")),
        "priority": lambda: priority(body.get("priority")),
        "actions": lambda: actions(body.get("actions")),
    }
    return {name: checks[name]() for name in body}
