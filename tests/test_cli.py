"""Operator CLI: keys, send, token, db create-indexes / prune, seed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from app.access.tokens import verify_token
from app.dashboard import audit
from app.store.models import notifications_collection
from tests.support import REAL_USERS

from .support import backdated

ROOT = Path(__file__).resolve().parent.parent


def run(app: Any, *args: str) -> Any:
    return app.test_cli_runner().invoke(args=list(args))


def test_keys_create_list_revoke(app: Any, client: Any) -> None:
    created = run(app, "keys", "create", "billing")
    assert created.exit_code == 0, created.output
    key = created.output.strip().splitlines()[-1]
    assert key.startswith("nk_")
    headers = {"Authorization": f"Bearer {key}"}
    body = {"user_id": "cli", "message": "hi"}
    assert client.post("/api/notifications", json=body, headers=headers).status_code == 201

    listed = run(app, "keys", "list")
    assert listed.exit_code == 0
    assert "billing" in listed.output and "active" in listed.output and key[:7] in listed.output
    assert key not in listed.output
    assert "never" not in listed.output.split("billing", 1)[1]  # last use was recorded

    duplicate = run(app, "keys", "create", "billing")
    assert duplicate.exit_code != 0 and "already exists" in duplicate.output

    revoked = run(app, "keys", "revoke", "billing")
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    assert client.post("/api/notifications", json=body, headers=headers).status_code == 401
    assert "revoked" in run(app, "keys", "list").output
    unknown = run(app, "keys", "revoke", "no-such-key")
    assert unknown.exit_code != 0 and "no API key" in unknown.output
    assert run(app, "keys", "revoke", "billing").exit_code == 0  # again: nothing more to record
    with app.app_context():
        logged = audit.entries("billing")
    assert [e["action"] for e in logged] == ["api_key_revoke", "api_key_create"]
    assert all(e["staff"].startswith("cli") for e in logged)


def test_send_and_token(app: Any, client: Any) -> None:
    sent = run(app, "send", "cli-user", "Invoice ready", "--title", "Invoice", "--category", "billing")
    assert sent.exit_code == 0, sent.output
    assert "published" in sent.output
    bad = run(app, "send", "bad user!", "x")
    assert bad.exit_code != 0

    minted = run(app, "token", "cli-user", "--ttl", "120")
    assert minted.exit_code == 0, minted.output
    token = minted.output.strip()
    with app.test_request_context():
        subscriber = verify_token(token)
    assert subscriber is not None and subscriber.user_id == "cli-user"
    assert run(app, "token", "cli-user", "--ttl", "0").exit_code != 0

    history = client.get("/api/me/notifications", headers={"Authorization": f"Bearer {token}"}).get_json()
    note = history["notifications"][0]
    assert (note["title"], note["message"], note["category"]) == ("Invoice", "Invoice ready", "billing")


def test_db_create_indexes_and_prune(make_app: Any) -> None:
    app = make_app(RETENTION_DAYS=14)
    result = run(app, "db", "create-indexes")
    assert result.exit_code == 0, result.output
    assert "14 days" in result.output
    with app.app_context():
        notifications_collection().insert_many([backdated("p", d, f"d{d}") for d in (1, 5, 9, 20)])
    pruned = run(app, "db", "prune", "--days", "7")
    assert pruned.exit_code == 0 and "deleted 2" in pruned.output
    with app.app_context():
        assert sorted(d["message"] for d in notifications_collection().find()) == ["d1", "d5"]


def test_seed(app: Any) -> None:
    result = run(app, "seed", "--users", "3", "--per-user", "4")
    assert result.exit_code == 0, result.output
    with app.app_context():
        coll = notifications_collection()
        users = REAL_USERS  # a batch's marker may not be cleared yet
        assert coll.count_documents(users) == 12
        assert sorted(coll.distinct("user_id", users)) == ["demo-user-1", "demo-user-2", "demo-user-3"]


def test_seed_refused_in_production(make_app: Any) -> None:
    result = run(make_app(APP_ENV="production"), "seed")
    assert result.exit_code != 0 and "production" in result.output


def test_flask_cli_entry_point(stack: Any) -> None:
    """The real ``flask --app wsgi`` command (gevent-patched entry point) works."""
    env = {**os.environ, **stack.env()}
    out = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "send", "entry-user", "hello from the shell"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "entry-user: published" in out.stdout
