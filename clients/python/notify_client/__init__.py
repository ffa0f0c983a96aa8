"""A small typed Python client for services that send notifications (sync, ``requests``-based).

    from notify_client import NotifyClient
    with NotifyClient("http://notify.internal:8000", api_key) as notify:
        notify.send("alice", "Your export is ready", title="Export", data={"url": url})

Every logical call is retried on connection errors and timeouts, 5xx and 429, with
exponential backoff and full jitter, honouring ``Retry-After``. Every send carries one
``Idempotency-Key`` (a uuid4 unless the caller gives one), made once per logical call and
reused on all its retries: a retry after a 503, a timeout or a lost response returns the
notification the first attempt stored, if it stored one, never a second. Any other
failure raises ``NotifyError`` with the server's status, code, message and field.

Needs only ``requests``. An installable package of its own (``clients/python``):
``pip install ./clients/python`` or
``pip install 'notify-client @ git+https://<repo>#subdirectory=clients/python'``.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypedDict

import requests

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 60.0


class Action(TypedDict):
    label: str
    url: str  # http(s) with a host, or a path from the root


class Notification(TypedDict):
    id: str
    seq: int | None
    user_id: str
    title: str
    message: str
    category: str
    data: dict[str, Any]
    created_at: str
    read: bool
    seen: bool
    archived: bool
    priority: str
    actions: list[Action]


CHANGES = ("read", "seen", "unread", "archive", "unarchive")


@dataclass(frozen=True)
class Counts:
    unseen: int
    unread: int
    total: int


@dataclass(frozen=True)
class Token:
    token: str
    user_id: str
    expires_at: str


@dataclass(frozen=True)
class HistoryPage:
    notifications: list[Notification]
    next: str | None  # pass as ``before`` for the next (older) page


class NotifyError(Exception):
    """The service refused the call (or could not be reached: ``status`` 0)."""

    def __init__(
        self, status: int, code: str, message: str, field: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after


class NotifyClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.session = session or requests.Session()
        self.session.headers["Authorization"] = f"Bearer {api_key}"
        self._sleep = sleep

    # -- notifications -------------------------------------------------------------------
    def send(
        self,
        user_id: str,
        message: str,
        *,
        title: str = "",
        category: str = "",
        data: dict[str, Any] | None = None,
        priority: str | None = None,
        actions: list[Action] | None = None,
        idempotency_key: str | None = None,
    ) -> Notification:
        body = _payload(message, title, category, data, priority, actions, user_id=user_id)
        return self._send(body, idempotency_key)

    def send_many(
        self,
        user_ids: Iterable[str],
        message: str,
        *,
        title: str = "",
        category: str = "",
        data: dict[str, Any] | None = None,
        priority: str | None = None,
        actions: list[Action] | None = None,
        idempotency_key: str | None = None,
    ) -> list[Notification]:
        body = _payload(message, title, category, data, priority, actions, user_ids=list(user_ids))
        return self._send(body, idempotency_key)["notifications"]

    def _send(self, body: dict[str, Any], idempotency_key: str | None) -> Any:
        key = idempotency_key or str(uuid.uuid4())
        return self._call("POST", "/api/notifications", json=body, headers={"Idempotency-Key": key})

    # -- tokens and read state -----------------------------------------------------------
    def mint_token(self, user_id: str, ttl_seconds: int | None = None) -> Token:
        body: dict[str, Any] = {"user_id": user_id}
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        data = self._call("POST", "/api/tokens", json=body)
        return Token(data["token"], data["user_id"], data["expires_at"])

    def history(
        self,
        user_id: str,
        limit: int = 50,
        before: str | None = None,
        unread: bool = False,
        state: str | None = None,
        category: str | None = None,
    ) -> HistoryPage:
        """A page of the user's inbox, newest first; ``state``: unread, read or archived."""
        params: dict[str, Any] = {"limit": limit}
        if before:
            params["before"] = before
        if unread:
            params["unread"] = "true"
        if state:
            params["state"] = state
        if category is not None:
            params["category"] = category
        data = self._call("GET", f"/api/users/{_path(user_id)}/notifications", params=params)
        return HistoryPage(data["notifications"], data["next"])

    def unread_count(self, user_id: str) -> int:
        return int(self._call("GET", f"/api/users/{_path(user_id)}/unread-count")["unread"])

    def counts(self, user_id: str) -> Counts:
        data = self._call("GET", f"/api/users/{_path(user_id)}/counts")
        return Counts(int(data["unseen"]), int(data["unread"]), int(data["total"]))

    def change(self, user_id: str, change: str, ids: Iterable[str] | None = None) -> int:
        """Apply one inbox change (read, seen, unread, archive, unarchive) to ``ids``, or to
        every notification of the user when ``ids`` is None; how many changed."""
        if change not in CHANGES:
            raise ValueError(f"change must be one of {', '.join(CHANGES)}")
        body = {"all": True} if ids is None else {"ids": list(ids)}
        return int(self._call("POST", f"/api/users/{_path(user_id)}/{change}", json=body)["updated"])

    def mark_read(self, user_id: str, ids: Iterable[str] | None = None) -> int:
        """Mark ``ids`` read, or every notification of the user when ``ids`` is None."""
        return self.change(user_id, "read", ids)

    def delete(self, user_id: str, notification_id: str) -> None:
        """Delete one notification from the user's inbox (kept for its trace until retention)."""
        self._call("DELETE", f"/api/users/{_path(user_id)}/notifications/{_path(notification_id)}")

    def trace(self, notification_id: str) -> dict[str, Any]:
        """The notification with its ``delivery`` record: stored, published, each connection
        it was written to, received, seen, read, archived (``None`` where it did not happen)."""
        return self._call("GET", f"/api/notifications/{_path(notification_id)}")

    # -- plumbing ------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        url = self.base_url + path
        attempt = 0
        while True:
            try:
                resp = self.session.request(method, url, timeout=self.timeout, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt >= self.retries:
                    raise NotifyError(0, "connection_error", str(exc)) from exc
                self._sleep(self._delay(attempt, None))
                attempt += 1
                continue
            if resp.status_code < 400:
                return resp.json()
            error = _error(resp)
            if attempt >= self.retries or not _retryable(resp):
                raise error
            self._sleep(self._delay(attempt, error.retry_after))
            attempt += 1

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Full jitter over an exponential cap; never earlier than the server asked."""
        delay = random.uniform(0, min(self.max_backoff, self.backoff * 2**attempt))
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
        return delay

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> NotifyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _payload(
    message: str,
    title: str,
    category: str,
    data: dict[str, Any] | None,
    priority: str | None,
    actions: list[Action] | None,
    **who: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {**who, "message": message}
    if priority:
        body["priority"] = priority
    if actions:
        body["actions"] = list(actions)
    if title:
        body["title"] = title
    if category:
        body["category"] = category
    if data:
        body["data"] = data
    return body


def _path(user_id: str) -> str:
    return requests.utils.quote(user_id, safe="")


def _retryable(resp: requests.Response) -> bool:
    return resp.status_code in RETRY_STATUSES


def _error(resp: requests.Response) -> NotifyError:
    retry_after = None
    header = resp.headers.get("Retry-After")
    if header and header.strip().isdigit():
        retry_after = float(header)
    try:
        body = resp.json()["error"]
        return NotifyError(resp.status_code, body["code"], body["message"], body.get("field"), retry_after)
    except (ValueError, KeyError, TypeError):
        return NotifyError(resp.status_code, "http_error", resp.text[:200] or resp.reason, None, retry_after)
