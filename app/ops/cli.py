"""Operator commands: ``flask --app wsgi keys|send|token|db|seed ...``.

Each command runs inside the app context of the configured app (same environment as the
server), so it talks to the same MongoDB and Redis and publishes live like the API does.
"""

from __future__ import annotations

import getpass
from typing import NoReturn

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext

from app.access import apikeys
from app.access.tokens import mint_token
from app.dashboard import audit
from app.errors import ApiError
from app.store import retention
from app.store.indexes import create_indexes
from app.store.models import notifications_collection
from app.store.serialization import iso

keys = AppGroup("keys", help="Publisher API keys stored in MongoDB (hashed at rest).")
db = AppGroup("db", help="MongoDB maintenance.")


def _fail(message: str) -> NoReturn:
    raise click.ClickException(message)


def _operator() -> str:
    """Who ran the command, for the audit log (``cli:<login>``)."""
    try:
        return f"cli:{getpass.getuser()}"[:64]
    except (KeyError, OSError):  # no login name for this uid (a bare container)
        return "cli"


@keys.command("create")
@click.argument("name")
def keys_create(name: str) -> None:
    """Create a key; it is printed once and cannot be shown again."""
    try:
        created = apikeys.create_key(name)
    except apikeys.ApiKeyProblem as exc:
        _fail(str(exc))
    audit.record(_operator(), "api_key_create", created.record.name, key=str(created.record.id))
    click.echo(f"created API key {created.record.name!r} (id {created.record.id})")
    click.echo("store it now, it is not shown again:")
    click.echo(created.key)


@keys.command("list")
def keys_list() -> None:
    """List keys: id, name, hint, created, last used, state. Never the keys themselves."""
    records = apikeys.list_keys()
    if not records:
        click.echo("no API keys in MongoDB (keys in API_KEYS are not listed)")
        return
    click.echo(f"{'ID':<24}  {'NAME':<20}  {'HINT':<10}  {'CREATED':<24}  {'LAST USED':<24}  STATE")
    for r in records:
        last = iso(r.last_used) if r.last_used else "never"
        state = "revoked" if r.revoked else "active"
        hint = r.hint + "..."
        click.echo(f"{str(r.id):<24}  {r.name:<20}  {hint:<10}  {iso(r.created_at):<24}  {last:<24}  {state}")


@keys.command("revoke")
@click.argument("name_or_id")
def keys_revoke(name_or_id: str) -> None:
    """Revoke a key by name or id (other processes stop accepting it within the cache time)."""
    try:
        record = apikeys.find_key(name_or_id)
        was_revoked = record.revoked
        record = apikeys.revoke_key(name_or_id, current_app.extensions.get("api_key_checker"))
    except apikeys.ApiKeyProblem as exc:
        _fail(str(exc))
    if not was_revoked:
        audit.record(_operator(), "api_key_revoke", record.name, key=str(record.id))
    click.echo(f"revoked API key {record.name!r} (id {record.id})")


@click.command("send")
@with_appcontext
@click.argument("user")
@click.argument("message")
@click.option("--title", default="", help="Short title.")
@click.option("--category", default="", help="Category, e.g. billing.")
def send(user: str, message: str, title: str, category: str) -> None:
    """Store a notification for USER and push it live."""
    from app.api import validation as v

    try:
        user = v.user_id(user)
        body = {"message": message, "title": title, "category": category}
        stored = current_app.extensions["notifications"].create(
            [user],
            message=v.text(body, "message", 4000, required=True),
            title=v.text(body, "title", 200, required=False),
            category=v.text(body, "category", 64, required=False),
        )
    except ApiError as exc:
        _fail(f"{exc.field + ': ' if exc.field else ''}{exc.message}")
    note = stored.notifications[0]
    live = "published" if stored.published else "stored, will be published when Redis is back"
    click.echo(f"notification {note['id']} for {user}: {live}")


@click.command("token")
@with_appcontext
@click.argument("user")
@click.option("--ttl", type=int, default=None, help="Lifetime in seconds (default TOKEN_TTL_SECONDS).")
def token(user: str, ttl: int | None) -> None:
    """Print a subscriber token for USER (for /stream, /ws and /api/me)."""
    from app.api import validation as v

    config = current_app.extensions["config"]
    ttl = config.TOKEN_TTL_SECONDS if ttl is None else ttl
    if not 1 <= ttl <= config.TOKEN_MAX_TTL_SECONDS:
        _fail(f"--ttl must be from 1 to {config.TOKEN_MAX_TTL_SECONDS}")
    try:
        user = v.user_id(user)
    except ApiError as exc:
        _fail(exc.message)
    value, _expires = mint_token(user, ttl)
    click.echo(value)


@db.command("create-indexes")
def db_create_indexes() -> None:
    """Create all indexes (and upgrade what an older version left); report the retention."""
    config = current_app.extensions["config"]
    seconds = retention.retention_seconds(config)
    create_indexes()
    ttl = f"{config.RETENTION_DAYS} days" if seconds else "none (kept forever)"
    click.echo(f"indexes ready; notification retention: {ttl}")


@db.command("prune")
@click.option("--days", type=float, required=True, help="Delete notifications older than this.")
def db_prune(days: float) -> None:
    """Delete notifications older than --days now (the sweeper does it every minute)."""
    if days < 0:
        _fail("--days must not be negative")
    deleted = retention.prune(notifications_collection(), days)
    click.echo(f"deleted {deleted} notifications older than {days:g} days")


@click.command("seed")
@with_appcontext
@click.option("--users", type=click.IntRange(1, 10_000), default=5, show_default=True)
@click.option("--per-user", type=click.IntRange(1, 1_000), default=10, show_default=True)
@click.option("--prefix", default="demo-user-", show_default=True, help="User id prefix.")
def seed(users: int, per_user: int, prefix: str) -> None:
    """Create demo notifications: --per-user for each of --users users (not in production)."""
    if current_app.extensions["config"].is_production:
        _fail("seed writes demo data and is refused when APP_ENV=production")
    service = current_app.extensions["notifications"]
    ids = [f"{prefix}{i}" for i in range(1, users + 1)]
    categories = ("billing", "security", "social", "system")
    for n in range(1, per_user + 1):
        for start in range(0, len(ids), 500):
            service.create(
                ids[start : start + 500],
                message=f"Demo notification {n} of {per_user}",
                title=f"Demo #{n}",
                category=categories[n % len(categories)],
                data={"demo": True, "n": n},
            )
    click.echo(f"created {users * per_user} notifications for {users} users ({ids[0]} .. {ids[-1]})")


def register_ops_cli(app: Flask) -> None:
    app.cli.add_command(keys)
    app.cli.add_command(db)
    app.cli.add_command(send)
    app.cli.add_command(token)
    app.cli.add_command(seed)
