"""Support-staff accounts: stored in MongoDB, passwords only as werkzeug (scrypt) hashes.

The username is the document's primary key, so uniqueness needs no index and two workers
bootstrapping the admin account at once cannot create it twice. ``auth_epoch`` goes up on
every password reset and disable, which ends every dashboard session opened before.
Password hashing is slow on purpose; it runs in gevent's thread pool so one login does
not stall the worker's live streams.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timezone
from typing import Any

import gevent
from mongoengine import BooleanField, DateTimeField, Document, IntField, StringField
from mongoengine.errors import NotUniqueError
from werkzeug.security import check_password_hash, generate_password_hash

from app.config import Config

log = logging.getLogger(__name__)

USERNAME_RE = re.compile(r"^[a-z0-9_.@-]{2,64}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 512
# Checked when the username is unknown, so a miss takes as long as a wrong password.
_DUMMY_HASH = "scrypt:32768:8:1$7Vd8pQ2l0S1Zyb3X$" + "0" * 128


class StaffError(ValueError):
    """A staff operation that cannot be done; the message says why."""


class StaffUser(Document):
    id = StringField(primary_key=True, max_length=64)  # the username, lower case
    password_hash = StringField(required=True)
    disabled = BooleanField(default=False)
    auth_epoch = IntField(default=0)
    created_at = DateTimeField(required=True)
    last_login_at = DateTimeField()
    failed_logins = IntField(default=0)  # since the last successful login
    last_failed_at = DateTimeField()

    meta = {"collection": "staff_users", "auto_create_index": False}

    @property
    def username(self) -> str:
        return self.id


def normalize_username(raw: Any) -> str:
    return raw.strip().lower() if isinstance(raw, str) else ""


def check_username(raw: Any) -> str:
    name = normalize_username(raw)
    if not USERNAME_RE.match(name):
        raise StaffError("username must be 2-64 characters of a-z 0-9 _ . @ -")
    return name


def check_password(password: Any) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise StaffError(f"password must be {MIN_PASSWORD}-{MAX_PASSWORD} characters")
    return password


def _offload(fn: Any, *args: Any) -> Any:
    """Run CPU-heavy hashing off the event loop (hashlib releases the GIL)."""
    return gevent.get_hub().threadpool.apply(fn, args)


def hash_password(password: str) -> str:
    return _offload(generate_password_hash, check_password(password))


def _now() -> datetime:
    return datetime.now(timezone.utc)


def get(username: str) -> StaffUser | None:
    name = normalize_username(username)
    return StaffUser.objects(id=name).first() if name else None


def create(username: str, password: str) -> StaffUser:
    name = check_username(username)
    user = StaffUser(id=name, password_hash=hash_password(password), created_at=_now())
    try:
        user.save(force_insert=True)
    except NotUniqueError:
        raise StaffError(f"staff user {name!r} already exists") from None
    return user


def all_users() -> list[StaffUser]:
    return list(StaffUser.objects.order_by("id"))


def _require(username: str) -> StaffUser:
    user = get(username)
    if user is None:
        raise StaffError(f"no staff user {normalize_username(username)!r}")
    return user


def set_disabled(username: str, disabled: bool) -> StaffUser:
    user = _require(username)
    updates: dict[str, Any] = {"set__disabled": disabled}
    if disabled:
        updates["inc__auth_epoch"] = 1
    StaffUser.objects(id=user.id).update_one(**updates)
    user.reload()
    return user


def reset_password(username: str, password: str) -> StaffUser:
    user = _require(username)
    StaffUser.objects(id=user.id).update_one(
        set__password_hash=hash_password(password), inc__auth_epoch=1, set__failed_logins=0
    )
    user.reload()
    return user


def authenticate(username: str, password: str) -> StaffUser | None:
    """The enabled account these credentials open, else None (same cost either way)."""
    user = get(username)
    candidate = password if isinstance(password, str) and len(password) <= MAX_PASSWORD else ""
    ok = _offload(check_password_hash, user.password_hash if user else _DUMMY_HASH, candidate)
    if user is None:
        return None
    if not ok or user.disabled:
        StaffUser.objects(id=user.id).update_one(inc__failed_logins=1, set__last_failed_at=_now())
        return None
    StaffUser.objects(id=user.id).update_one(set__failed_logins=0, set__last_login_at=_now())
    return user


def ensure_admin(config: Config) -> bool:
    """Create ADMIN_USERNAME with ADMIN_PASSWORD if that account does not exist yet.

    An existing account is left alone (its password may have been reset on purpose).
    Returns True when it created the account.
    """
    if not config.ADMIN_USERNAME or not config.ADMIN_PASSWORD:
        return False
    try:
        name = check_username(config.ADMIN_USERNAME)
        check_password(config.ADMIN_PASSWORD)
    except StaffError as exc:
        log.error("ADMIN_USERNAME/ADMIN_PASSWORD ignored: %s", exc)
        return False
    if get(name) is not None:
        return False
    try:
        create(name, config.ADMIN_PASSWORD)
    except StaffError:  # another worker created it a moment ago
        return False
    log.info("created the bootstrap staff account %r", name)
    return True
