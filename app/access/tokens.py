"""Who is calling: publisher API keys and signed subscriber tokens.

API keys are compared in constant time and identified afterwards only by a short
fingerprint, so the key itself never reaches logs, Redis or MongoDB. Subscriber tokens
are itsdangerous-signed ``{"u": user_id, "exp": unix seconds}``: stateless to verify on
every stream connect, scoped to one user.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from flask import current_app, g, request
from itsdangerous import BadSignature, URLSafeSerializer

from app.errors import ApiError

TOKEN_SALT = "subscriber-token"


def fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def bearer_token() -> str | None:
    return bearer_from(request.headers.get("Authorization", ""))


def bearer_from(header: str) -> str | None:
    """The credentials of an ``Authorization: Bearer ...`` header value."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def check_api_key(candidate: str | None, extensions: dict[str, Any] | None = None) -> str | None:
    """The fingerprint of a valid publisher key, else None (``extensions``: the app's, outside a request)."""
    if not candidate:
        return None
    ext = current_app.extensions if extensions is None else extensions
    config = ext["config"]
    valid = False
    for key in config.api_keys():
        valid |= hmac.compare_digest(candidate.encode(), key.encode())
    if valid:
        return fingerprint(candidate)
    extra = ext.get("api_key_checker")
    return extra(candidate) if extra else None


def unknown_api_key() -> ApiError:
    return ApiError(
        401,
        "unauthorized",
        "missing or unknown API key (send Authorization: Bearer <key>)",
        headers={"WWW-Authenticate": 'Bearer realm="api"'},
    )


def require_api_key(view: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        key_id = check_api_key(bearer_token())
        if key_id is None:
            raise unknown_api_key()
        g.api_key_id = key_id
        return view(*args, **kwargs)

    return wrapper


@dataclass(frozen=True)
class Subscriber:
    user_id: str
    expires_at: float


def _serializer() -> URLSafeSerializer:
    return URLSafeSerializer(current_app.config["SECRET_KEY"], salt=TOKEN_SALT)


def mint_token(user_id: str, ttl_seconds: int) -> tuple[str, float]:
    expires_at = int(time.time()) + ttl_seconds
    return _serializer().dumps({"u": user_id, "exp": expires_at}), float(expires_at)


def verify_token(token: str | None) -> Subscriber | None:
    """The subscriber a token names, or None when missing, forged or expired."""
    if not token:
        return None
    try:
        payload = _serializer().loads(token)
    except BadSignature:
        return None
    if not isinstance(payload, dict):
        return None
    user_id, expires_at = payload.get("u"), payload.get("exp")
    if not isinstance(user_id, str) or not isinstance(expires_at, (int, float)):
        return None
    if expires_at <= time.time():
        return None
    return Subscriber(user_id, float(expires_at))


def require_subscriber(view: Callable[..., Any]) -> Callable[..., Any]:
    """For ``/api/me/...``: a subscriber token in ``Authorization: Bearer``."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        subscriber = verify_token(bearer_token())
        if subscriber is None:
            raise ApiError(401, "unauthorized", "missing, invalid or expired subscriber token")
        g.subscriber = subscriber
        return view(*args, **kwargs)

    return wrapper
