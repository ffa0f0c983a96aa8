"""One user's history for the support console: pages by cursor, filters, bounded search.

Every read walks the ``user_read_seq`` index (``user_id``, ``read``, ``seq``) in cursor
order: a page is a ``seq`` range (after or before a notification of the user), never an
offset, so page 1,000 costs what page 1 does. The other filters (state, category, dates)
are tested on the documents the index yields; a date range also bounds ``seq``, which is
the publish time in microseconds (a margin covers clocks), so an old week is found
without walking everything newer. The query names the index: SecantusDB plans a filter
with more fields than the index's as a collection scan over every user.

A text search reads at most ``SCAN_LIMIT`` of the user's notifications per page (from
the page's cursor on) and matches title and message here, case-insensitively: a rare
word costs one bounded index walk, and the page offers to go on from where it stopped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bson import ObjectId
from pymongo.errors import PyMongoError

from app.errors import ApiError
from app.store.inbox import STATE_QUERIES
from app.store.models import (
    EITHER_READ,
    PUBLIC_PROJECTION,
    by_history_index,
    is_marker,
    notifications_collection,
)
from app.store.serialization import public_json

PAGE = 50
SCAN_LIMIT = 1000  # notifications a text search reads per page
SEQ_MARGIN_US = 5 * 60 * 1_000_000  # a cursor is its publish time, within this of created_at
OBJECT_ID_RE = re.compile(r"^[0-9a-fA-F]{24}$")
MAX_CATEGORY = 64
MAX_TEXT = 200

# The state filter: the value in the URL, its label and what it selects.
STATES: dict[str, tuple[str, dict[str, Any]]] = {
    "": ("Inbox (not archived)", STATE_QUERIES[None]),
    "unread": ("Unread", STATE_QUERIES["unread"]),
    "read": ("Read", STATE_QUERIES["read"]),
    "archived": ("Archived", STATE_QUERIES["archived"]),
    "deleted": ("Deleted by the user", {"read": EITHER_READ, "deleted_at": {"$ne": None}}),
    "all": ("All, deleted included", {"read": EITHER_READ}),
}


class HistoryError(Exception):
    """A filter or link that cannot be served, in words for the page."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class Filters:
    state: str = ""
    category: str = ""
    start: str = ""  # YYYY-MM-DD as typed (the form's "from")
    end: str = ""  # YYYY-MM-DD, inclusive (the form's "to")
    tz: str = ""  # the browser's zone (set by the page's script); UTC without it
    text: str = ""
    # Derived: the date range as UTC instants, [since, until).
    since: datetime | None = None
    until: datetime | None = None

    @property
    def active(self) -> bool:
        return bool(self.state or self.category or self.start or self.end or self.text)

    def args(self) -> dict[str, str]:
        """The filters as URL parameters (for the pager's links)."""
        named = {"state": self.state, "category": self.category, "from": self.start, "to": self.end}
        named.update(q=self.text, tz=self.tz if (self.start or self.end) else "")
        return {k: v for k, v in named.items() if v}

    def live(self) -> dict[str, Any]:
        """What the page's script needs to tell whether a live notification belongs here."""
        return {
            "state": self.state,
            "category": self.category,
            "since": _iso(self.since),
            "until": _iso(self.until),
            "q": self.text.lower(),
        }


@dataclass
class HistoryPage:
    notifications: list[dict[str, Any]] = field(default_factory=list)
    filters: Filters = field(default_factory=Filters)
    older: str | None = None  # the id to page on from (``before=``)
    newer: str | None = None  # (``after=``)
    first: bool = True  # the newest page: live notifications join it
    focus: str | None = None  # the notification jumped to
    from_cache: bool | None = None  # None: not the user's own first inbox page
    stopped: bool = False  # a text search that reached SCAN_LIMIT before filling the page
    error: str | None = None
    status: int = 200
    owner: str | None = None  # a notification id of another user: their page is the answer


def _iso(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else None


def _day(raw: str, name: str) -> date:
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise HistoryError(f"{name}: “{raw}” is not a date (use YYYY-MM-DD)") from None


def parse_filters(args: Mapping[str, str]) -> Filters:
    """The filter fields of the query string, checked; HistoryError names the bad one."""
    f = Filters(
        state=args.get("state", "").strip(),
        category=args.get("category", "").strip(),
        start=args.get("from", "").strip(),
        end=args.get("to", "").strip(),
        tz=args.get("tz", "").strip(),
        text=args.get("q", "").strip(),
    )
    if f.state not in STATES:
        raise HistoryError(f"state: “{f.state}” is not one of {', '.join(s for s in STATES if s)}")
    if len(f.category) > MAX_CATEGORY:
        raise HistoryError(f"category: at most {MAX_CATEGORY} characters")
    if len(f.text) > MAX_TEXT:
        raise HistoryError(f"search: at most {MAX_TEXT} characters")
    try:
        zone = ZoneInfo(f.tz) if f.tz else timezone.utc
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder, a name too long
        raise HistoryError(f"tz: “{f.tz[:64]}” is not a time zone") from None
    try:
        if f.start:
            f.since = datetime.combine(_day(f.start, "from"), time(), zone).astimezone(timezone.utc)
        if f.end:
            next_day = _day(f.end, "to") + timedelta(days=1)
            f.until = datetime.combine(next_day, time(), zone).astimezone(timezone.utc)
    except OverflowError:
        raise HistoryError("from / to: a date out of range") from None
    if f.since and f.until and f.since >= f.until:
        raise HistoryError("from: the range ends before it starts")
    return f


def _query(user_id: str, f: Filters) -> dict[str, Any]:
    query: dict[str, Any] = {"user_id": user_id, **STATES[f.state][1]}
    if f.category:
        query["category"] = f.category
    seq: dict[str, int] = {}
    if f.since is not None:
        query.setdefault("created_at", {})["$gte"] = f.since
        seq["$gte"] = _us(f.since) - SEQ_MARGIN_US
    if f.until is not None:
        query.setdefault("created_at", {})["$lt"] = f.until
        seq["$lt"] = _us(f.until) + SEQ_MARGIN_US
    if seq:
        query["seq"] = seq
    return query


def _us(value: datetime) -> int:
    return int(value.timestamp() * 1_000_000)


def _bound(query: dict[str, Any], op: str, value: int) -> dict[str, Any]:
    """``query`` with ``seq`` also bounded by ``op value`` (the tighter bound wins)."""
    seq = dict(query.get("seq", {}))
    tighter = min if op in ("$lt", "$lte") else max
    seq[op] = tighter(seq[op], value) if op in seq else value
    return {**query, "seq": seq}


def _matches(doc: dict[str, Any], needle: str) -> bool:
    return needle in (doc.get("title") or "").lower() or needle in (doc.get("message") or "").lower()


class History:
    """Pages of one user's notifications for staff (MongoDB only: no cache, no Redis)."""

    def __init__(self, page_size: int = PAGE, scan_limit: int = SCAN_LIMIT) -> None:
        self.page_size = page_size
        self.scan_limit = scan_limit

    def find(self, notification_id: str) -> dict[str, Any] | None:
        """Any user's notification by id (the ``_id`` index); None if there is none."""
        try:
            doc = notifications_collection().find_one({"_id": ObjectId(notification_id)}, {"user_id": 1})
        except PyMongoError as exc:
            raise _unavailable() from exc
        return None if doc is None or is_marker(doc) else doc

    def page(self, user_id: str, args: Mapping[str, str]) -> HistoryPage:
        """The page the query string asks for; a bad filter or link is the page's error."""
        try:
            return self._page(user_id, args)
        except HistoryError as exc:
            typed = Filters(args.get("state", ""), args.get("category", ""), args.get("from", ""))
            typed.end, typed.tz, typed.text = args.get("to", ""), args.get("tz", ""), args.get("q", "")
            return HistoryPage(filters=typed, first=False, error=exc.message, status=exc.status)
        except PyMongoError as exc:
            raise _unavailable() from exc

    def _page(self, user_id: str, args: Mapping[str, str]) -> HistoryPage:
        jump = args.get("id", "").strip() or (args.get("q", "").strip() if _is_id(args.get("q", "")) else "")
        if jump:
            return self._jump(user_id, jump)
        f = parse_filters(args)
        if args.get("at"):
            return self._at(user_id, self._cursor(user_id, args["at"]), f)
        if args.get("after"):
            return self._newer(user_id, self._cursor(user_id, args["after"]), f)
        before = self._cursor(user_id, args["before"]) if args.get("before") else None
        return self._older(user_id, before, f)

    def _jump(self, user_id: str, raw: str) -> HistoryPage:
        if not _is_id(raw):
            raise HistoryError(f"“{raw}” is not a notification id: an id is 24 characters of 0-9 and a-f")
        doc = self.find(raw)
        if doc is None:
            raise HistoryError(f"No notification has the id {raw.lower()}.", 404)
        return HistoryPage(owner=doc["user_id"], focus=str(doc["_id"]), first=False)  # its page, at it

    def _cursor(self, user_id: str, raw: str) -> int:
        """The cursor (``seq``) of the user's notification ``raw``: where a link pages from."""
        if not _is_id(raw):
            raise HistoryError("This page link is broken (not a notification id): start from the newest.")
        # By ``_id`` alone: SecantusDB plans ``_id`` beside another field as a collection scan
        doc = notifications_collection().find_one({"_id": ObjectId(raw)}, {"seq": 1, "user_id": 1})
        if doc is None or doc["user_id"] != user_id or doc.get("seq") is None:
            raise HistoryError("The notification this page started from is gone: start from the newest.", 404)
        return int(doc["seq"])

    def _scan(
        self, query: dict[str, Any], direction: int, text: str
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None, bool]:
        """Up to ``page_size + 1`` matches in ``direction`` order; the last document read
        and whether the text search stopped at ``scan_limit`` before finding that many."""
        find = notifications_collection().find(query, PUBLIC_PROJECTION).sort("seq", direction)
        return by_history_index(lambda index: self._read(find.clone().hint(index), text))

    def _read(self, cursor: Any, text: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None, bool]:
        want = self.page_size + 1
        if not text:
            docs = list(cursor.limit(want))
            return docs, (docs[-1] if docs else None), False
        needle, found, read, last = text.lower(), [], 0, None
        for doc in cursor.limit(self.scan_limit).batch_size(200):
            read, last = read + 1, doc
            if _matches(doc, needle):
                found.append(doc)
                if len(found) == want:
                    break
        return found, last, len(found) < want and read == self.scan_limit

    def _older(self, user_id: str, before: int | None, f: Filters) -> HistoryPage:
        query = _query(user_id, f)
        if before is not None:
            query = _bound(query, "$lt", before)
        docs, last, stopped = self._scan(query, -1, f.text)
        shown = docs[: self.page_size]
        page = self._result(shown, f, first=before is None, stopped=stopped)
        if len(docs) > self.page_size:
            page.older = str(shown[-1]["_id"])
        elif stopped and last is not None:
            page.older = str(last["_id"])  # go on searching from where this page stopped
        page.newer = str(shown[0]["_id"]) if before is not None and shown else None
        return page

    def _newer(self, user_id: str, after: int, f: Filters) -> HistoryPage:
        docs, last, stopped = self._scan(_bound(_query(user_id, f), "$gt", after), 1, f.text)
        if len(docs) <= self.page_size and not stopped:
            return self._older(user_id, None, f)  # that is the newest page: show it full
        shown = list(reversed(docs[: self.page_size]))
        page = self._result(shown, f, first=False, stopped=stopped)
        if len(docs) > self.page_size:
            page.newer = str(shown[0]["_id"])
        elif last is not None:
            page.newer = str(last["_id"])
        page.older = str(shown[-1]["_id"]) if shown else None
        return page

    def _at(self, user_id: str, at: int, f: Filters) -> HistoryPage:
        page = self._older(user_id, at + 1, f)  # from ``at`` itself on, which heads the page
        page.first = False
        page.focus = page.notifications[0]["id"] if page.notifications else None
        return page

    def _result(self, docs: list[dict[str, Any]], f: Filters, first: bool, stopped: bool) -> HistoryPage:
        notes = []
        for doc in docs:
            note = public_json(doc)
            note["deleted"] = doc.get("deleted_at") is not None
            notes.append(note)
        return HistoryPage(notifications=notes, filters=f, first=first, stopped=stopped)


def _unavailable() -> ApiError:
    return ApiError(503, "unavailable", "the notification store is unavailable, retry later")


def _is_id(raw: str) -> bool:
    return bool(OBJECT_ID_RE.match(raw.strip()))
