"""What a client may say on its WebSocket: inbox state changes and delivery receipts.

``{"type": <change>, "ids": [...]}`` or ``{"type": <change>, "all": true}`` for a change
of ``CHANGES`` (as ``POST /api/me/<change>``), ``{"type": "delete", "ids": [...]}``, and
``{"type": "ack", "ids": [...]}``: the client received those notifications (recorded in
Redis in batches, ``app/store/receipts.py``). Anything else gets an error frame and the
stream goes on: one bad frame never ends a client's stream, let alone another's.
"""

from __future__ import annotations

from typing import Any

import orjson

from app.api import validation as v
from app.errors import ApiError

CHANGES = ("read", "seen", "unread", "archive", "unarchive")
EXPECTED = (
    'expected {"type": "read"|"seen"|"unread"|"archive"|"unarchive", "ids": [...]} or {..., "all": true}, '
    '{"type": "delete", "ids": [...]} or {"type": "ack", "ids": [...]}'
)


def _error(code: str, message: str) -> str:
    return orjson.dumps({"type": "error", "code": code, "message": message}).decode()


def handle(data: str | bytes, user_id: str, service: Any, ack: Any = None) -> str | None:
    """Act on one client message; the reply to send, if any. ``ack(ids)`` records receipts."""
    if isinstance(data, bytes):
        return _error("unsupported", "binary frames are not supported")
    try:
        frame = orjson.loads(data)
    except orjson.JSONDecodeError:
        return _error("malformed_json", "frame is not valid JSON")
    kind = frame.get("type") if isinstance(frame, dict) else None
    if kind not in (*CHANGES, "delete", "ack"):
        return _error("unknown_type", EXPECTED)
    body = {k: val for k, val in frame.items() if k != "type"}
    try:
        if kind in CHANGES:
            service.change(user_id, kind, v.id_selection(body))
        elif kind == "delete":
            service.change(user_id, "delete", v.id_list(body.get("ids")))
        elif ack is not None:
            ack(v.id_list(body.get("ids")))
    except ApiError as exc:
        return _error(exc.code, exc.message)
    return None


class Commands:
    """One WebSocket stream's ``on_message``: its user's commands, its connection's receipts.

    A slotted object of three references, where two ``functools.partial`` held about
    400 B more per idle connection (bench/memprobe.py)."""

    __slots__ = ("user_id", "service", "connection")

    def __init__(self, user_id: str, service: Any, connection: str | None) -> None:
        self.user_id = user_id
        self.service = service
        self.connection = connection

    def __call__(self, data: str | bytes) -> str | None:
        return handle(data, self.user_id, self.service, self._ack)

    def _ack(self, ids: list[str]) -> None:
        self.service.acknowledge(self.user_id, ids, connection=self.connection)
