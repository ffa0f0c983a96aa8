"""Settings read from the environment (and a ``.env`` file), with safe dev defaults.

``Config.from_env()`` builds the settings; ``Config.validate()`` refuses a production
start that lacks secrets, naming what is missing, so a misconfigured deploy fails loudly
instead of running with dev keys.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
DEV_SECRET_KEY = "dev-secret-key-change-me"
DEV_API_KEY = "dev-api-key"
REDIS_MODES = ("standalone", "sentinel", "cluster")
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


class ConfigError(RuntimeError):
    """Raised when settings are missing or invalid; the message says which."""


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class Config:
    APP_ENV: str = "development"
    PORT: int = 8000
    MONGO_URI: str = "mongodb://127.0.0.1:27030/notifications"
    REDIS_URL: str = "redis://127.0.0.1:6390/0"
    REDIS_MODE: str = "standalone"  # or "sentinel", "cluster" (app/store/redis_connect.py)
    REDIS_SENTINELS: tuple[str, ...] = ()  # host:port of each Sentinel (sentinel mode)
    REDIS_SENTINEL_MASTER: str = ""  # the name Sentinel monitors the primary under
    REDIS_PASSWORD: str = ""  # the primary's and replicas' (sentinel mode; standalone: in REDIS_URL)
    REDIS_SENTINEL_PASSWORD: str = ""  # the Sentinels' own, when they require one
    SECRET_KEY: str = ""
    API_KEYS: tuple[str, ...] = ()
    CACHE_TTL_SECONDS: int = 120
    RECENT_LIMIT: int = 50
    MAX_BODY_BYTES: int = 65536
    BODY_READ_TIMEOUT_SECONDS: float = 10.0  # the whole body, from its first read (app/ops/body.py)
    TOKEN_TTL_SECONDS: int = 3600
    TOKEN_MAX_TTL_SECONDS: int = 7 * 24 * 3600
    HEARTBEAT_SECONDS: float = 15.0
    SSE_RETRY_MS: int = 2000
    WS_PING_SECONDS: float = 25.0
    WS_MAX_MESSAGE_BYTES: int = 16 * 1024
    ALLOWED_ORIGINS: tuple[str, ...] = ()
    PUBLIC_URL: str = ""  # where browsers reach the service, e.g. https://notify.example
    CLIENT_QUEUE_SIZE: int = 256
    REPLAY_LIMIT: int = 1000
    REPLAY_BUFFER_SIZE: int = 64
    REPLAY_BUFFER_TTL_SECONDS: int = 600
    RELAY_INTERVAL_SECONDS: float = 1.0
    PUBLISH_LEASE_SECONDS: float = 10.0
    PUBLISH_TIMEOUT_SECONDS: float = 2.0  # a POST waits for Redis this long at most (app/store/publishing.py)
    OUTBOX_CLEANUP_DELAY_SECONDS: float = 0.1  # later batches share the marker delete (app/store/outbox.py)
    PROBE_INTERVAL_SECONDS: float = 5.0
    UNSUBSCRIBE_LINGER_SECONDS: float = 5.0  # a channel outlives its last stream (app/delivery/channels.py)
    REDIS_SOCKET_TIMEOUT: float = 5.0
    MONGO_TIMEOUT_MS: int = 5000  # to find and connect to the server
    MONGO_OP_TIMEOUT_MS: int = 3000  # any one call, whatever the database waits on (pymongo timeoutMS)
    AUTO_CREATE_INDEXES: int = 1  # a worker creates missing indexes at start (app/store/indexes.py)
    KEY_PREFIX: str = "notify:"
    ADMIN_USERNAME: str = ""
    ADMIN_PASSWORD: str = ""
    LOGIN_MAX_FAILURES: int = 5
    LOGIN_IP_MAX_FAILURES: int = 20
    LOGIN_LOCK_SECONDS: int = 300
    LOGIN_MAX_DELAY_SECONDS: float = 8.0  # the per-username slow-down's cap (app/dashboard/security.py)
    STAFF_SESSION_SECONDS: int = 12 * 3600
    PRESENCE_INTERVAL_SECONDS: float = 5.0
    INSTANCE_NAME: str = ""  # this instance in presence and delivery traces; empty: the host name
    DASHBOARD_TICK_SECONDS: float = 2.0
    # Topic fan-out (app/topics/fanout.py): subscribers per page, a claim's lease, how often
    # idle workers look for fan-outs to resume, and an optional pause between pages.
    FANOUT_PAGE_SIZE: int = 1000
    FANOUT_LEASE_SECONDS: float = 30.0
    FANOUT_POLL_SECONDS: float = 1.0
    FANOUT_PAGE_INTERVAL_SECONDS: float = 0.0
    TEST_CRASH_AFTER_INSERT: int = 0
    TEST_CRASH_AFTER_CLAIM: int = 0  # a scheduler exits holding its claim (app/store/scheduling.py)
    SCHEDULE_LEASE_SECONDS: float = 30.0  # a scheduled notification's claim, then another instance's
    LEAN_API: int = 1  # POST /api/notifications served in front of Flask's dispatch (app/api/fastpath.py)
    RATE_LIMIT_POSTS_PER_MINUTE: int = 6000  # per API key; 0 disables
    MAX_STREAMS_PER_USER: int = 20  # concurrent /stream + /ws per user, all instances; 0 disables
    METRICS_TOKEN: str = ""
    LOG_FORMAT: str = ""
    LOG_LEVEL: str = "INFO"
    RETENTION_DAYS: int = 30
    API_KEY_CACHE_SECONDS: float = 30.0
    PROXY_HOPS: int = 0
    RECEIPT_FLUSH_SECONDS: float = 1.0  # delivery records to Redis, per worker (app/store/receipts.py)
    RECEIPT_FOLD_SECONDS: float = 2.0  # pending traces into MongoDB, RECEIPT_FOLD_BATCH at a time
    RECEIPT_FOLD_BATCH: int = 500
    RECEIPT_FOLD_DELAY_SECONDS: float = 10.0  # a trace waits this long in Redis: most are folded once
    PUSH_ENABLED: int = 0  # Web Push to users with no live stream (app/push/)
    PUSH_VAPID_PRIVATE_KEY: str = ""  # base64url P-256 private key (`flask --app wsgi push keys`)
    PUSH_VAPID_PUBLIC_KEY: str = ""  # its public key; derived from the private key when empty
    PUSH_VAPID_SUBJECT: str = ""  # mailto: or https: contact the push services may use
    PUSH_TTL_SECONDS: int = 86400  # how long a push service keeps a push for an offline browser
    PUSH_PER_USER_PER_MINUTE: int = 30  # pushes per recipient per minute, all instances; 0 disables
    PUSH_MAX_SUBSCRIPTIONS_PER_USER: int = 10  # the newest are kept
    PUSH_MAX_ATTEMPTS: int = 4  # per push, for 429 / 5xx / network errors, with backoff
    PUSH_RETRY_BASE_SECONDS: float = 1.0  # the first backoff; doubled at each attempt
    PUSH_CONCURRENCY: int = 10  # pushes in flight per worker
    PUSH_TIMEOUT_SECONDS: float = 10.0  # one request to a push service
    PREFERENCES_CACHE_SECONDS: float = 5.0  # a worker's copy of a user's preferences (app/preferences/)
    PUSH_DEFERRED_POLL_SECONDS: float = 1.0  # how often a worker looks for pushes whose quiet hours ended
    PUSH_ALLOW_LOCAL_ENDPOINTS: int = 0  # http and private addresses as endpoints (tests; never production)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def instance(self) -> str:
        """This instance's name: ``INSTANCE_NAME``, else the host name."""
        return self.INSTANCE_NAME or socket.gethostname()

    @property
    def is_production(self) -> bool:
        return self.APP_ENV == "production"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Config:
        """Read every field from ``environ`` (default ``os.environ`` after loading ``.env``)."""
        if environ is None:
            _load_dotenv()
            environ = dict(os.environ)
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "extra" or f.name not in environ:
                continue
            raw = environ[f.name]
            try:
                values[f.name] = _coerce(f.type, raw)
            except ValueError:
                raise ConfigError(f"{f.name}={raw!r} is not a valid {f.type}") from None
        values.update(overrides)
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> Config:
        known = {f.name for f in fields(self)}
        extra = {k: v for k, v in overrides.items() if k not in known}
        data = {k: v for k, v in overrides.items() if k in known}
        if extra:
            data["extra"] = {**self.extra, **extra}
        return Config(**{**asdict(self), **data})

    def validate(self) -> None:
        """Check ranges always; in production also demand real secrets."""
        if self.APP_ENV not in ("development", "production", "testing"):
            raise ConfigError("APP_ENV must be 'development', 'production' or 'testing'")
        for name in (
            "CACHE_TTL_SECONDS",
            "RECENT_LIMIT",
            "MAX_BODY_BYTES",
            "CLIENT_QUEUE_SIZE",
            "MONGO_OP_TIMEOUT_MS",
            "RECEIPT_FLUSH_SECONDS",
            "RECEIPT_FOLD_SECONDS",
            "RECEIPT_FOLD_BATCH",
            "SCHEDULE_LEASE_SECONDS",
            "PUSH_TTL_SECONDS",
            "PUSH_MAX_SUBSCRIPTIONS_PER_USER",
            "PUSH_MAX_ATTEMPTS",
            "PUSH_CONCURRENCY",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        for origin in self.ALLOWED_ORIGINS:
            if not _ORIGIN.fullmatch(origin):
                raise ConfigError(
                    f"ALLOWED_ORIGINS: {origin!r} is not an origin (scheme://host[:port], no path;"
                    " '*' is not accepted)"
                )
        if not 0 <= self.LOGIN_MAX_DELAY_SECONDS <= 60:
            raise ConfigError("LOGIN_MAX_DELAY_SECONDS must be between 0 and 60")
        if not 0 < self.BODY_READ_TIMEOUT_SECONDS <= 300:
            raise ConfigError("BODY_READ_TIMEOUT_SECONDS must be more than 0 and at most 300")
        if not 0 <= self.OUTBOX_CLEANUP_DELAY_SECONDS <= self.PUBLISH_LEASE_SECONDS / 10:
            raise ConfigError(
                "OUTBOX_CLEANUP_DELAY_SECONDS must be between 0 and a tenth of PUBLISH_LEASE_SECONDS"
            )
        if self.PUBLIC_URL:
            origin_of(self.PUBLIC_URL)
        if not 0 < self.PUBLISH_TIMEOUT_SECONDS <= 60:
            raise ConfigError("PUBLISH_TIMEOUT_SECONDS must be above 0 and at most 60")
        if not 0 <= self.UNSUBSCRIBE_LINGER_SECONDS <= 300:
            raise ConfigError("UNSUBSCRIBE_LINGER_SECONDS must be between 0 and 300")
        if self.RETENTION_DAYS < 0:
            raise ConfigError("RETENTION_DAYS must be 0 (keep forever) or a number of days")
        if self.INSTANCE_NAME and not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", self.INSTANCE_NAME):
            raise ConfigError("INSTANCE_NAME must be 1-100 characters of A-Z a-z 0-9 _ . -")
        self._validate_redis_mode()
        self._validate_push()
        self._validate_fanout()
        if self.is_production:
            missing = [
                name
                for name, ok in (
                    ("SECRET_KEY", self.SECRET_KEY and self.SECRET_KEY != DEV_SECRET_KEY),
                    ("API_KEYS", bool(self.API_KEYS) and DEV_API_KEY not in self.API_KEYS),
                )
                if not ok
            ]
            if missing:
                raise ConfigError(
                    "refusing to start in production: set "
                    + " and ".join(missing)
                    + " (dev defaults are not accepted)"
                )

    def _validate_fanout(self) -> None:
        if not 1 <= self.FANOUT_PAGE_SIZE <= 1000:
            raise ConfigError("FANOUT_PAGE_SIZE must be from 1 to 1000 (the largest bulk POST)")
        if not 0 < self.FANOUT_POLL_SECONDS < self.FANOUT_LEASE_SECONDS:
            raise ConfigError("FANOUT_POLL_SECONDS must be above 0 and below FANOUT_LEASE_SECONDS")
        if not 0 <= self.FANOUT_PAGE_INTERVAL_SECONDS < self.FANOUT_LEASE_SECONDS:
            raise ConfigError("FANOUT_PAGE_INTERVAL_SECONDS must be from 0 to below FANOUT_LEASE_SECONDS")

    def _validate_redis_mode(self) -> None:
        if self.REDIS_MODE not in REDIS_MODES:
            raise ConfigError(f"REDIS_MODE={self.REDIS_MODE!r}: must be one of " + ", ".join(REDIS_MODES))
        if self.REDIS_MODE == "cluster":
            self.cluster_seeds()
        if self.REDIS_MODE != "sentinel":
            return
        if not self.REDIS_SENTINELS:
            raise ConfigError("REDIS_MODE=sentinel needs REDIS_SENTINELS: the Sentinels as host:port,...")
        self.sentinel_addresses()
        if not self.REDIS_SENTINEL_MASTER:
            raise ConfigError("REDIS_MODE=sentinel needs REDIS_SENTINEL_MASTER: the monitored primary's name")

    def _validate_push(self) -> None:
        if not 0 <= self.PREFERENCES_CACHE_SECONDS <= 300:
            raise ConfigError("PREFERENCES_CACHE_SECONDS must be 0-300")
        if not 0 < self.PUSH_DEFERRED_POLL_SECONDS <= 60:
            raise ConfigError("PUSH_DEFERRED_POLL_SECONDS must be above 0 and at most 60")
        if self.PUSH_TTL_SECONDS > 28 * 86400:
            raise ConfigError("PUSH_TTL_SECONDS must be at most 28 days (2419200)")
        if not 0 < self.PUSH_TIMEOUT_SECONDS <= 60:
            raise ConfigError("PUSH_TIMEOUT_SECONDS must be above 0 and at most 60")
        if not 0 <= self.PUSH_RETRY_BASE_SECONDS <= 60:
            raise ConfigError("PUSH_RETRY_BASE_SECONDS must be between 0 and 60")
        if self.PUSH_VAPID_SUBJECT and not re.fullmatch(
            r"mailto:[^@\s]+@[^@\s]+|https://[^\s/]+\S*", self.PUSH_VAPID_SUBJECT
        ):
            raise ConfigError("PUSH_VAPID_SUBJECT must be a mailto: address or an https: URL")
        if self.is_production and self.PUSH_ALLOW_LOCAL_ENDPOINTS:
            raise ConfigError("PUSH_ALLOW_LOCAL_ENDPOINTS is refused in production (SSRF)")
        if not self.PUSH_ENABLED:
            return
        if self.is_production:
            if not self.PUSH_VAPID_PRIVATE_KEY:
                raise ConfigError(
                    "PUSH_ENABLED in production needs PUSH_VAPID_PRIVATE_KEY (flask --app wsgi push keys)"
                )
            if not self.PUSH_VAPID_SUBJECT:
                raise ConfigError(
                    "PUSH_ENABLED in production needs PUSH_VAPID_SUBJECT (a mailto: or https: contact)"
                )
        from app.push.vapid import VapidKeyError, load_keys

        try:
            load_keys(self)
        except VapidKeyError as exc:
            raise ConfigError(str(exc)) from None

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """``REDIS_SENTINELS`` as (host, port) pairs; a malformed entry is named."""
        addresses = []
        for entry in self.REDIS_SENTINELS:
            host, _, port = entry.rpartition(":")
            host = host.strip("[]")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"REDIS_SENTINELS: {entry!r} is not host:port")
            addresses.append((host, int(port)))
        return addresses

    def cluster_seeds(self) -> list[tuple[str, int]]:
        """``REDIS_URL`` in cluster mode: comma-separated ``redis://host:port`` seed nodes."""
        seeds = []
        for entry in self.REDIS_URL.split(","):
            url = urlsplit(entry.strip())
            try:
                port = url.port
            except ValueError:
                port = None
            if url.scheme not in ("redis", "rediss") or not url.hostname or port is None:
                raise ConfigError(f"REDIS_URL: {entry.strip()!r} is not a redis://host:port seed node")
            seeds.append((url.hostname, port))
        return seeds

    def flask_settings(self) -> dict[str, Any]:
        """The subset Flask and its extensions read from ``app.config``."""
        return {
            "SECRET_KEY": self.SECRET_KEY or DEV_SECRET_KEY,
            "MAX_CONTENT_LENGTH": self.MAX_BODY_BYTES,
            "SESSION_COOKIE_HTTPONLY": True,
            "SESSION_COOKIE_SAMESITE": "Lax",
            "SESSION_COOKIE_SECURE": self.is_production,
            **self.extra,
        }

    def trusted_origins(self) -> tuple[str, ...]:
        """Browser origins allowed to open streams: ``ALLOWED_ORIGINS`` and ``PUBLIC_URL``'s."""
        own = (origin_of(self.PUBLIC_URL),) if self.PUBLIC_URL else ()
        return (*self.ALLOWED_ORIGINS, *own)

    def api_keys(self) -> tuple[str, ...]:
        if self.API_KEYS:
            return self.API_KEYS
        return () if self.is_production else (DEV_API_KEY,)


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of an http(s) URL, as a browser sends it in ``Origin``."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.username or parts.password:
        raise ConfigError(f"{url!r} is not an http(s) URL")
    return f"{parts.scheme}://{parts.netloc.lower()}"


def _coerce(kind: Any, raw: str) -> Any:
    kind = str(kind)
    if kind in ("int", "<class 'int'>"):
        return int(raw)
    if kind in ("float", "<class 'float'>"):
        return float(raw)
    if kind.startswith("tuple"):
        return _split(raw)
    return raw


def dev_env_file() -> Path:
    """The dev credentials ``dev.py run`` generates: ``$DEV_DATA_DIR/dev.env``, by default
    ``.devdata/dev.env`` in the checkout (the same rule as dev.py's)."""
    return Path(os.environ.get("DEV_DATA_DIR") or ROOT / ".devdata") / "dev.env"


def _load_dotenv() -> None:
    """``.env``, then in development the dev credentials: ``flask --app wsgi token alice``
    then signs with the secret the running dev server uses. Real env vars win over both."""
    try:
        from dotenv import load_dotenv
    except ImportError:  # pragma: no cover - python-dotenv is a runtime requirement
        return
    load_dotenv(override=False)
    if os.environ.get("APP_ENV", "development") == "development" and dev_env_file().is_file():
        load_dotenv(dev_env_file(), override=False)
