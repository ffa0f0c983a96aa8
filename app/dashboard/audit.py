"""The audit log: what staff did in the console, who did it and to whom, in MongoDB.

Every staff action that changes something (a test send, marking read, closing a user's
connection, creating or revoking an API key; key changes made with ``flask keys`` too,
as ``cli:<login>``) is written here once it is done, before the page or command
answers: when the entry cannot be written the answer is the store's 503, so staff are
never told an action went through that the log does not hold. Entries are only ever
inserted, and read newest first (index on ``at``) or per user or key (``target``, ``at``).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from mongoengine import DateTimeField, DictField, Document, StringField

from app.store.serialization import iso

ACTIONS = {
    "test_send": "sent a test notification",
    "mark_read": "marked notifications read",
    "disconnect": "closed a connection",
    "api_key_create": "created an API key",
    "api_key_revoke": "revoked an API key",
}
PAGE = 100


class AuditEntry(Document):
    at = DateTimeField(required=True)
    staff = StringField(required=True, max_length=64)
    action = StringField(required=True, choices=list(ACTIONS))
    target = StringField(max_length=200)  # the user, or the API key's name
    detail = DictField()

    meta = {
        "collection": "audit_log",
        "auto_create_index": False,
        "indexes": [
            {"fields": ["-at"], "name": "newest"},
            {"fields": ["target", "-at"], "name": "target_newest"},
        ],
    }


def record(staff: str, action: str, target: str, **detail: Any) -> None:
    AuditEntry(at=datetime.now(timezone.utc), staff=staff, action=action, target=target, detail=detail).save(
        force_insert=True
    )


def entries(target: str | None = None, limit: int = PAGE) -> list[dict[str, Any]]:
    """The newest entries (of one target), as the audit page shows them."""
    query = AuditEntry.objects(target=target) if target else AuditEntry.objects
    return [
        {
            "at": iso(e.at),
            "staff": e.staff,
            "action": e.action,
            "summary": ACTIONS[e.action],
            "target": e.target,
            "detail": dict(e.detail or {}),
        }
        for e in query.order_by("-at").limit(limit)
    ]
