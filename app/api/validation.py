"""Request body parsing and field validation, naming the field that is wrong.

JSON is parsed with orjson, which refuses nesting deeper than 1024 and numbers that
overflow a double in microseconds, so hostile bodies cost nothing and never crash a worker.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from app.errors import ApiError

USER_ID_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
MAX_USER_IDS = 1000
MAX_DATA_BYTES = 8 * 1024
MAX_DATA_DEPTH = 32


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


def text(body: dict[str, Any], field: str, max_len: int, *, required: bool) -> str:
    value = body.get(field)
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
    if _depth(value) > MAX_DATA_DEPTH:
        raise invalid("data", f"must be nested at most {MAX_DATA_DEPTH} levels")
    if len(orjson.dumps(value)) > MAX_DATA_BYTES:
        raise invalid("data", f"must be at most {MAX_DATA_BYTES} bytes encoded")
    if any(key.startswith("$") or "." in key or "\x00" in key for key in _keys(value)):
        raise invalid("data", "keys must not start with '$' or contain '.' or NUL")
    return value


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


def bool_arg(name: str) -> bool:
    raw = single_arg(name)
    if raw is None or raw == "false":
        return False
    if raw == "true":
        return True
    raise invalid(name, "must be true or false")


def _depth(value: Any, level: int = 1) -> int:
    if level > MAX_DATA_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level


def _keys(value: Any):
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from _keys(item)
