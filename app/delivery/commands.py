"""What a client may say on its WebSocket: read receipts, ``{"type": "read", ...}``.

Anything else gets an error frame and the stream goes on: one bad frame never ends a
client's stream, let alone another's.
"""

from __future__ import annotations

from typing import Any

import orjson

from app.errors import ApiError

MAX_IDS = 1000
EXPECTED = 'expected {"type": "read", "ids": [...]} or {"type": "read", "all": true}'


def _error(code: str, message: str) -> str:
    return orjson.dumps({"type": "error", "code": code, "message": message}).decode()


def handle(data: str | bytes, user_id: str, service: Any) -> str | None:
    """Act on one client message; the reply to send, if any."""
    if isinstance(data, bytes):
        return _error("unsupported", "binary frames are not supported")
    try:
        frame = orjson.loads(data)
    except orjson.JSONDecodeError:
        return _error("malformed_json", "frame is not valid JSON")
    if not isinstance(frame, dict) or frame.get("type") != "read":
        return _error("unknown_type", EXPECTED)
    ids = frame.get("ids")
    if frame.get("all") is True and ids is None:
        ids = None
    elif not (isinstance(ids, list) and 1 <= len(ids) <= MAX_IDS and all(isinstance(i, str) for i in ids)):
        return _error("invalid_field", f"ids: must be a list of 1-{MAX_IDS} notification ids")
    try:
        service.mark_read(user_id, ids)
    except ApiError as exc:
        return _error(exc.code, exc.message)
    return None
