"""A user's notification preferences: which channels deliver each category, and quiet hours.

Channels are ``inbox`` (the user's inbox: history pages, counts, replays), ``live`` (the
user's open SSE / WebSocket streams) and ``push`` (Web Push). ``live`` and ``push`` each
imply ``inbox``: what pops up or is pushed is something the user can find in the inbox,
so ``["live", "push"]`` means all three, as it did before the inbox was a channel, and the
lists stored by earlier versions keep their meaning. The lists a category may have:

- ``["inbox", "live", "push"]`` (the default), ``["inbox", "live"]``, ``["inbox", "push"]``
  (``inbox`` may be left out of these);
- ``["muted"]`` (or ``["inbox"]``): in the inbox, sent on no channel;
- ``[]``: off everywhere. The notification is still stored (MongoDB is the truth, and its
  sender can see what became of it: ``hidden: "preferences"``), but it is in no inbox
  listing, count or replay, not sent on open streams and not pushed.

The choice is made when a notification is sent (for a scheduled one, when it is due) and
stays with it: turning a category off leaves what is in the inbox there, turning it back
on does not bring back what was hidden.

``default`` applies to uncategorised notifications and to every category not listed.
Quiet hours (``start`` to ``end``, local time in ``timezone``) hold Web Push back until
they end; live delivery and the inbox go on. A user with no stored preferences has every
channel on and no quiet hours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from app.errors import FieldInvalid

CHANNELS = ("inbox", "live", "push")
SENDING = ("live", "push")  # each implies the inbox
MUTED = "muted"  # the inbox alone
MAX_CATEGORIES = 100
MAX_CATEGORY = 64  # as a notification's category
HHMM_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
FIELDS = frozenset({"default", "categories", "quiet_hours"})
QUIET_FIELDS = frozenset({"start", "end", "timezone"})


@dataclass(frozen=True)
class QuietHours:
    start: time
    end: time
    zone: str

    def active(self, now: datetime) -> bool:
        """Whether ``now`` (aware) is inside the window, in the user's local time."""
        local = now.astimezone(ZoneInfo(self.zone)).time().replace(second=0, microsecond=0)
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end  # across midnight

    def ends_after(self, now: datetime) -> datetime:
        """The first end of the window after ``now``, in UTC."""
        local = now.astimezone(ZoneInfo(self.zone))
        end = datetime.combine(local.date(), self.end, tzinfo=ZoneInfo(self.zone))
        if end <= local:
            end = datetime.combine(local.date() + timedelta(days=1), self.end, tzinfo=ZoneInfo(self.zone))
        return end.astimezone(timezone.utc)

    def to_json(self) -> dict[str, str]:
        return {
            "start": self.start.strftime("%H:%M"),
            "end": self.end.strftime("%H:%M"),
            "timezone": self.zone,
        }


@dataclass(frozen=True)
class Preferences:
    default: frozenset[str] = frozenset(CHANNELS)
    categories: dict[str, frozenset[str]] = field(default_factory=dict)
    quiet_hours: QuietHours | None = None

    def channels(self, category: str | None) -> frozenset[str]:
        if category and category in self.categories:
            return self.categories[category]
        return self.default

    def inbox(self, category: str | None) -> bool:
        return "inbox" in self.channels(category)

    def live(self, category: str | None) -> bool:
        return "live" in self.channels(category)

    def push(self, category: str | None) -> bool:
        return "push" in self.channels(category)

    def to_json(self) -> dict[str, Any]:
        return {
            "default": _channels_json(self.default),
            "categories": {name: _channels_json(c) for name, c in sorted(self.categories.items())},
            "quiet_hours": self.quiet_hours.to_json() if self.quiet_hours else None,
        }

    def to_doc(self) -> dict[str, Any]:
        """What MongoDB stores: the API's shape, categories as a list of ``[name, channels]``
        (a category is free text, and not every name is a field name MongoDB accepts), and
        each list without ``inbox``, which the others imply: the lists earlier versions
        wrote, which ``parse`` reads as they meant, and ``[]`` (off everywhere), which an
        earlier version would read as muted."""
        return {
            "default": _stored_channels(self.default),
            "categories": [[name, _stored_channels(c)] for name, c in sorted(self.categories.items())],
            "quiet_hours": self.quiet_hours.to_json() if self.quiet_hours else None,
        }


DEFAULTS = Preferences()


def _channels_json(channels: frozenset[str]) -> list[str]:
    """The API's list: every channel on, ``["muted"]`` for the inbox alone, ``[]`` for none."""
    if channels == {"inbox"}:
        return [MUTED]
    return [c for c in CHANNELS if c in channels]


def _stored_channels(channels: frozenset[str]) -> list[str]:
    if channels == {"inbox"}:
        return [MUTED]
    return [c for c in SENDING if c in channels]


CHANNELS_RULE = (
    'a list of "inbox", "live", "push" ("live" and "push" imply "inbox"), ["muted"] '
    "(the inbox alone) or [] (off everywhere, not even in the inbox)"
)


def _channels(value: Any, name: str) -> frozenset[str]:
    """The channels a list turns on (see the module's docstring)."""
    if not isinstance(value, list) or len(value) > len(CHANNELS):
        raise FieldInvalid(name, f"must be {CHANNELS_RULE}")
    for item in value:
        if item not in (*CHANNELS, MUTED):
            allowed = '"inbox", "live", "push", "muted"'
            raise FieldInvalid(name, f"unknown channel {str(item)[:40]!r} (allowed: {allowed})")
    if MUTED in value and len(value) > 1:
        raise FieldInvalid(name, '"muted" stands alone: it means the inbox and no other channel')
    if len(set(value)) < len(value):
        raise FieldInvalid(name, "must not repeat a channel")
    if MUTED in value:
        return frozenset({"inbox"})
    on = frozenset(value)
    return on | {"inbox"} if on else on


def _hhmm(value: Any, name: str) -> time:
    match = HHMM_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise FieldInvalid(name, "must be a time of day as HH:MM (00:00-23:59)")
    return time(int(match.group(1)), int(match.group(2)))


def _quiet_hours(value: Any) -> QuietHours | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise FieldInvalid("quiet_hours", "must be null or an object with start, end and timezone")
    for name in value:
        if name not in QUIET_FIELDS:
            raise FieldInvalid(f"quiet_hours.{name}", "unknown field (allowed: end, start, timezone)")
    start = _hhmm(value.get("start"), "quiet_hours.start")
    end = _hhmm(value.get("end"), "quiet_hours.end")
    if start == end:
        raise FieldInvalid("quiet_hours.end", "must differ from start")
    zone = value.get("timezone")
    if not isinstance(zone, str) or not 0 < len(zone) <= 64:
        raise FieldInvalid("quiet_hours.timezone", "must be an IANA time zone name, e.g. Europe/Paris")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise FieldInvalid("quiet_hours.timezone", f"unknown time zone {zone[:64]!r}") from None
    return QuietHours(start, end, zone)


def parse(body: Any) -> Preferences:
    """Preferences from a PUT body (or a stored document); FieldInvalid names the field.
    Absent fields take their defaults: a PUT replaces all of a user's preferences."""
    if not isinstance(body, dict):
        raise FieldInvalid("body", "must be a JSON object")
    for name in body:
        if name not in FIELDS:
            raise FieldInvalid(name, "unknown field (allowed: categories, default, quiet_hours)")
    default = _channels(body["default"], "default") if "default" in body else DEFAULTS.default
    raw = body.get("categories", {})
    if not isinstance(raw, dict):
        raise FieldInvalid("categories", "must be an object of category: channels")
    if len(raw) > MAX_CATEGORIES:
        raise FieldInvalid("categories", f"must name at most {MAX_CATEGORIES} categories")
    categories = {}
    for name, channels in raw.items():
        if not 0 < len(name) <= MAX_CATEGORY:
            raise FieldInvalid("categories", f"a category name must be 1-{MAX_CATEGORY} characters")
        categories[name] = _channels(channels, f"categories.{name}")
    return Preferences(frozenset(default), categories, _quiet_hours(body.get("quiet_hours")))
