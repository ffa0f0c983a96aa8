"""VAPID keys: ``flask --app wsgi push keys`` makes a usable pair; production refuses to
enable push without a key and subject, and refuses the local-endpoint test setting; a
public key that does not match its private key is refused; development derives a stable
pair from SECRET_KEY."""

from __future__ import annotations

import pytest

from app.config import Config, ConfigError
from app.push.vapid import generate, load_keys

SUBJECT = {"PUSH_VAPID_SUBJECT": "mailto:ops@example.com"}
PRODUCTION = {"APP_ENV": "production", "SECRET_KEY": "s" * 32, "API_KEYS": ("k" * 32,)}


def test_push_keys_prints_a_pair_the_config_accepts(app):
    result = app.test_cli_runner().invoke(args=["push", "keys"])
    assert result.exit_code == 0, result.output
    lines = dict(line.split("=", 1) for line in result.output.split())
    private, public = lines["PUSH_VAPID_PRIVATE_KEY"], lines["PUSH_VAPID_PUBLIC_KEY"]
    config = Config(
        **PRODUCTION,
        PUSH_ENABLED=1,
        PUSH_VAPID_PRIVATE_KEY=private,
        PUSH_VAPID_PUBLIC_KEY=public,
        PUSH_VAPID_SUBJECT="https://example.com/contact",
    )
    config.validate()
    assert load_keys(config).public_key == public and len(public) == 87


@pytest.mark.parametrize(
    "settings, named",
    [
        ({}, "PUSH_VAPID_PRIVATE_KEY"),
        ({"PUSH_VAPID_PRIVATE_KEY": generate()[0]}, "PUSH_VAPID_SUBJECT"),
        ({"PUSH_VAPID_PRIVATE_KEY": "short", **SUBJECT}, "PUSH_VAPID_PRIVATE_KEY"),
        (
            {"PUSH_VAPID_PRIVATE_KEY": generate()[0], "PUSH_VAPID_PUBLIC_KEY": generate()[1], **SUBJECT},
            "PUSH_VAPID_PUBLIC_KEY",
        ),
        (
            {"PUSH_VAPID_PRIVATE_KEY": generate()[0], "PUSH_VAPID_SUBJECT": "ops@example.com"},
            "PUSH_VAPID_SUBJECT",
        ),
        ({"PUSH_ALLOW_LOCAL_ENDPOINTS": 1}, "PUSH_ALLOW_LOCAL_ENDPOINTS"),
        ({"PUSH_TTL_SECONDS": 0}, "PUSH_TTL_SECONDS"),
    ],
)
def test_production_refuses_push_without_a_usable_key(settings, named):
    with pytest.raises(ConfigError, match=named):
        Config(**PRODUCTION, PUSH_ENABLED=1, **settings).validate()


def test_push_off_needs_no_key_and_development_derives_a_stable_one():
    Config(**PRODUCTION).validate()
    one, two = (load_keys(Config(SECRET_KEY="same")).public_key for _ in range(2))
    assert one == two != load_keys(Config(SECRET_KEY="other")).public_key
