"""Staff sessions, CSRF tokens and login throttling for the dashboard.

The Flask session cookie (signed, HttpOnly, SameSite=Lax, Secure in production) holds a
random session id and the CSRF token. The session id names a Redis key that says which
staff member it belongs to and at which ``auth_epoch``: logging out deletes the key, and a
password reset or disable bumps the epoch, so a copied cookie stops working either way.

Failed logins are counted in Redis per (username, client address), per address and per
username. ``LOGIN_MAX_FAILURES`` for one pair locks that pair, ``LOGIN_IP_MAX_FAILURES``
locks that address, each for ``LOGIN_LOCK_SECONDS`` from the last counted failure. Failures
for a username from elsewhere never lock it (that would let anyone lock a staff member
out): they slow every attempt for it down, exponentially (``login_delay``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any
from urllib.parse import urlsplit

import gevent
import orjson
import redis
from flask import current_app, g, redirect, request, session, url_for

from app.config import Config
from app.dashboard import staff
from app.errors import ApiError, error_response

SID = "staff_sid"
CSRF = "csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# KEYS: failure counters of the (username, address) pair, the address, the username;
# ARGV: pair limit, address limit, lock seconds. An attempt counts as a failure before its
# password is checked (a sign-in or an error takes it back, UNCOUNT_ATTEMPT), so concurrent
# attempts cannot all pass a lock check that none of them has counted yet. The first
# failure opens a window of lock seconds; reaching the limit restarts it, so a lock lasts
# the full period after the failure that triggered it. Returns {seconds locked (0: go on),
# failures for the username before this attempt}; a locked attempt is not counted.
COUNT_ATTEMPT = r"""
local lock = tonumber(ARGV[3])
local wait = 0
for i = 1, 2 do
  if tonumber(redis.call('GET', KEYS[i]) or '0') >= tonumber(ARGV[i]) then
    wait = math.max(wait, redis.call('TTL', KEYS[i]), 1)
  end
end
if wait > 0 then return {wait, 0} end
local before = tonumber(redis.call('GET', KEYS[3]) or '0')
for i, key in ipairs(KEYS) do
  local n = redis.call('INCR', key)
  if n == 1 or n >= tonumber(ARGV[i == 2 and 2 or 1]) then
    redis.call('EXPIRE', key, lock)
  end
end
return {0, before}
"""
# KEYS: counters one attempt added to; DEL the first when ARGV[1] is "1" (a sign-in).
UNCOUNT_ATTEMPT = r"""
for i, key in ipairs(KEYS) do
  if i == 1 and ARGV[1] == '1' then
    redis.call('DEL', key)
  elseif tonumber(redis.call('GET', key) or '0') > 0 then
    redis.call('DECR', key)
  end
end
"""


@dataclass(frozen=True)
class StaffSession:
    sid: str
    username: str
    epoch: int


def _redis() -> redis.Redis:
    return current_app.extensions["redis"]


def _config() -> Config:
    return current_app.extensions["config"]


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:32]


# -- CSRF ------------------------------------------------------------------------------
def csrf_token() -> str:
    """This browser session's CSRF token, created on first use."""
    token = session.get(CSRF)
    if not token:
        token = session[CSRF] = secrets.token_urlsafe(32)
    return token


def csrf_ok() -> bool:
    sent = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD) or ""
    expected = session.get(CSRF) or ""
    return bool(sent and expected) and hmac.compare_digest(sent.encode(), expected.encode())


# -- sessions --------------------------------------------------------------------------
def _session_key(sid: str) -> str:
    return f"{_config().KEY_PREFIX}staffsess:{_digest(sid)}"


def open_session(user: staff.StaffUser) -> None:
    """Start a fresh session for ``user`` (new id and CSRF token: no fixation)."""
    sid = secrets.token_urlsafe(32)
    value = orjson.dumps({"u": user.username, "e": user.auth_epoch})
    _redis().set(_session_key(sid), value, ex=_config().STAFF_SESSION_SECONDS)
    session.clear()
    session[SID] = sid
    session[CSRF] = secrets.token_urlsafe(32)


def close_session() -> None:
    sid = session.get(SID)
    if sid:
        with contextlib.suppress(redis.RedisError):  # the cookie is cleared below either way
            _redis().delete(_session_key(sid))
    session.clear()


def current_staff() -> StaffSession | None:
    """The signed-in staff member of this request, checked against Redis and MongoDB."""
    if "staff_session" in g:
        return g.staff_session
    g.staff_session = None
    sid = session.get(SID)
    if sid:
        found = check_session(sid)
        if found is not None:
            g.staff_session = found
            g.staff = found.username
    return g.staff_session


def check_session(
    sid: str, redis_client: redis.Redis | None = None, prefix: str | None = None
) -> StaffSession | None:
    """Whether ``sid`` is still a live session of an enabled account (also used by streams)."""
    client = redis_client or _redis()
    key = f"{prefix}staffsess:{_digest(sid)}" if prefix is not None else _session_key(sid)
    try:
        raw = client.get(key)
    except redis.RedisError as exc:
        raise ApiError(503, "unavailable", "session store (Redis) is unavailable, retry later") from exc
    if raw is None:
        return None
    data = orjson.loads(raw)
    user = staff.get(data.get("u", ""))
    if user is None or user.disabled or user.auth_epoch != data.get("e"):
        return None
    return StaffSession(sid, user.username, user.auth_epoch)


def safe_next(target: str | None) -> str:
    """Only redirect back inside the dashboard (no open redirect).

    A target with control characters (CR/LF would split the ``Location`` header) is the
    client's error: 400, raised before anything is done for the request, so a sign-in
    with one opens no session."""
    default = url_for("dashboard.overview")
    if not target:
        return default
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in target):
        raise ApiError(400, "bad_request", "next: must not contain control characters", field="next")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/dashboard") or "\\" in target:
        return default
    return target


def staff_page(view: Callable[..., Any]) -> Callable[..., Any]:
    """Pages: without a session, go to the login page and come back afterwards."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if current_staff() is None:
            return redirect(url_for("dashboard.login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return wrapper


def staff_api(view: Callable[..., Any]) -> Callable[..., Any]:
    """JSON endpoints and streams: without a session, 401 JSON."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if current_staff() is None:
            return error_response(401, "unauthorized", "sign in to the dashboard first")
        return view(*args, **kwargs)

    return wrapper


# -- login throttling ------------------------------------------------------------------
def _throttle_keys(username: str, ip: str) -> list[str]:
    """Failure counters: this (username, address) pair, this address, this username; one
    hash tag, so that on a Redis Cluster the throttle scripts find them in one slot."""
    prefix = _config().KEY_PREFIX + "{login}:fail:"
    name = staff.normalize_username(username)
    return [
        prefix + "p:" + _digest(f"{name}\n{ip}"),
        prefix + "ip:" + _digest(ip),
        prefix + "u:" + _digest(name),
    ]


def count_attempt(username: str, ip: str) -> tuple[int, int]:
    """Count this attempt as a failure: (seconds this pair or address is locked, 0 to go
    on; failures for the username before it, from any address)."""
    config = _config()
    script = _redis().register_script(COUNT_ATTEMPT)
    args = [config.LOGIN_MAX_FAILURES, config.LOGIN_IP_MAX_FAILURES, config.LOGIN_LOCK_SECONDS]
    locked, before = script(keys=_throttle_keys(username, ip), args=args)
    return int(locked), int(before)


def login_delay(failures: int) -> float:
    """How long an attempt for a username with ``failures`` waits for its password check.

    From the ``LOGIN_MAX_FAILURES``-th failure for the name (from any address) on, each
    further failure doubles it, up to ``LOGIN_MAX_DELAY_SECONDS``: guessing one account
    from many addresses gets slow, while its owner still signs in, only later."""
    config = _config()
    over = failures - config.LOGIN_MAX_FAILURES
    return 0.0 if over < 0 else min(2.0**over, config.LOGIN_MAX_DELAY_SECONDS)


def uncount_attempt(username: str, ip: str, signed_in: bool) -> None:
    """Take back what ``count_attempt`` added; after a sign-in the pair starts afresh."""
    script = _redis().register_script(UNCOUNT_ATTEMPT)
    script(keys=_throttle_keys(username, ip), args=["1" if signed_in else "0"])


@dataclass(frozen=True)
class LoginResult:
    user: staff.StaffUser | None
    status: int = 200
    error: str = ""


def attempt_login(username: str, password: str, ip: str) -> LoginResult:
    """Check credentials unless this pair or address is locked, after the name's delay."""
    locked, failures = count_attempt(username, ip)
    if locked:
        wait = f"about {max(1, round(locked / 60))} min"
        return LoginResult(None, 429, f"Too many failed sign-in attempts. Locked: try again in {wait}.")
    try:
        gevent.sleep(login_delay(failures))
        user = staff.authenticate(username, password)
    except BaseException:
        uncount_attempt(username, ip, signed_in=False)  # not a failure: the check never ran
        raise
    if user is None:
        return LoginResult(None, 401, "Wrong username or password, or the account is disabled.")
    uncount_attempt(username, ip, signed_in=True)
    return LoginResult(user)
