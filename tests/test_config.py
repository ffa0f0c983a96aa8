"""Production settings: the app refuses to start without real secrets, and says which."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from app import create_app
from app.config import DEV_API_KEY, DEV_SECRET_KEY, Config, ConfigError
from tests.support import ROOT
from tools.devservers import find_free_port

REAL = {"SECRET_KEY": "s3cret-for-production-only", "API_KEYS": ("pub-key-1",)}


@pytest.mark.parametrize(
    ("given", "named", "not_named"),
    [
        ({}, ["SECRET_KEY and API_KEYS"], []),
        ({"SECRET_KEY": REAL["SECRET_KEY"]}, ["API_KEYS"], ["SECRET_KEY"]),
        ({"API_KEYS": REAL["API_KEYS"]}, ["SECRET_KEY"], ["API_KEYS"]),
        ({"SECRET_KEY": DEV_SECRET_KEY, "API_KEYS": (DEV_API_KEY,)}, ["SECRET_KEY and API_KEYS"], []),
        (
            {"SECRET_KEY": REAL["SECRET_KEY"], "API_KEYS": ("pub-key-1", DEV_API_KEY)},
            ["API_KEYS"],
            ["SECRET_KEY"],
        ),
    ],
    ids=["nothing", "no-api-keys", "no-secret-key", "dev-defaults", "dev-key-among-real-ones"],
)
def test_production_refuses_missing_or_dev_secrets_and_names_them(
    given: dict, named: list[str], not_named: list[str]
) -> None:
    with pytest.raises(ConfigError, match="refusing to start in production") as refused:
        create_app(Config(APP_ENV="production", **given))
    message = str(refused.value)
    assert all(name in message for name in named), message
    assert all(name not in message for name in not_named), message


def test_production_accepts_real_secrets_and_development_runs_without_them() -> None:
    production = Config(APP_ENV="production", **REAL)
    production.validate()
    assert production.api_keys() == REAL["API_KEYS"]
    assert production.flask_settings()["SECRET_KEY"] == REAL["SECRET_KEY"]
    development = Config(APP_ENV="development")
    development.validate()
    assert development.api_keys() == (DEV_API_KEY,)


def test_gunicorn_in_production_without_secrets_exits_with_the_reason() -> None:
    """The deployed command (``gunicorn -c gunicorn.conf.py wsgi:app``) stops with the reason."""
    port = find_free_port()
    env = {**os.environ, "APP_ENV": "production", "SECRET_KEY": "", "API_KEYS": ""}
    env.update(PORT=str(port), HOST="127.0.0.1", WEB_CONCURRENCY="1")
    done = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "refusing to start in production: set SECRET_KEY and API_KEYS" in done.stdout + done.stderr


SENTINEL = {"REDIS_MODE": "sentinel", "REDIS_SENTINEL_MASTER": "n"}


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"REDIS_MODE": "replicated"}, "REDIS_MODE='replicated'"),
        ({"REDIS_MODE": "cluster", "REDIS_URL": "redis://a:7000,b:7001"}, "REDIS_URL: 'b:7001' is not"),
        ({"REDIS_MODE": "sentinel", "REDIS_SENTINEL_MASTER": "notify"}, "REDIS_SENTINELS"),
        ({"REDIS_MODE": "sentinel", "REDIS_SENTINELS": "10.0.0.1:26379"}, "REDIS_SENTINEL_MASTER"),
        (
            {**SENTINEL, "REDIS_SENTINELS": "10.0.0.1:26379,10.0.0.2"},
            "REDIS_SENTINELS: '10.0.0.2' is not host:port",
        ),
        (
            {**SENTINEL, "REDIS_SENTINELS": "10.0.0.1:99999"},
            "REDIS_SENTINELS: '10.0.0.1:99999'",
        ),
    ],
    ids=[
        "unknown-mode",
        "cluster-seed-not-a-url",
        "no-sentinels",
        "no-master-name",
        "no-port",
        "port-out-of-range",
    ],
)
def test_a_bad_redis_mode_setting_is_refused_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as refused:
        create_app(Config.from_env(env))
    assert named in str(refused.value)


def test_sentinel_mode_reads_its_variables() -> None:
    config = Config.from_env(
        {
            "REDIS_MODE": "sentinel",
            "REDIS_SENTINELS": " 10.0.0.1:26379, sentinel-b:26380 ,[::1]:26381",
            "REDIS_SENTINEL_MASTER": "notify",
            "REDIS_PASSWORD": "data-pass",
            "REDIS_SENTINEL_PASSWORD": "watch-pass",
        }
    )
    config.validate()
    assert config.sentinel_addresses() == [("10.0.0.1", 26379), ("sentinel-b", 26380), ("::1", 26381)]
    assert (config.REDIS_PASSWORD, config.REDIS_SENTINEL_PASSWORD) == ("data-pass", "watch-pass")
    standalone = Config.from_env({})
    standalone.validate()
    assert standalone.REDIS_MODE == "standalone"


def test_instance_name_defaults_to_the_host_name_and_is_checked() -> None:
    assert Config().instance == socket.gethostname()
    assert Config(INSTANCE_NAME="eu-1.a").instance == "eu-1.a"
    for bad in ("eu 1", "a:b", "a~b", "x" * 101):
        with pytest.raises(ConfigError, match="INSTANCE_NAME"):
            Config(INSTANCE_NAME=bad).validate()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PREFERENCES_CACHE_SECONDS": "-1"}, "PREFERENCES_CACHE_SECONDS"),
        ({"PREFERENCES_CACHE_SECONDS": "301"}, "PREFERENCES_CACHE_SECONDS"),
        ({"PUSH_DEFERRED_POLL_SECONDS": "0"}, "PUSH_DEFERRED_POLL_SECONDS"),
    ],
)
def test_preference_settings_out_of_range_are_refused(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Config.from_env(env).validate()
