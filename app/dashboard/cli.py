"""Flask CLI commands: ``flask --app wsgi <group> <command>``.

``register_cli(app)`` adds every group defined here; add a new group by defining an
``AppGroup`` and listing it in ``GROUPS``. Commands run in the app context, so they use
the same MongoDB and Redis as the server.
"""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import AppGroup
from pymongo.errors import PyMongoError

from app.dashboard import staff as accounts

staff = AppGroup("staff", help="Support-dashboard staff accounts (passwords stored hashed).")

_password = click.option(
    "--password",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="The password (prompted for, hidden, when not given).",
)


def _run(action, *args):
    try:
        return action(*args)
    except accounts.StaffError as exc:
        raise click.ClickException(str(exc)) from None
    except PyMongoError as exc:
        raise click.ClickException(f"MongoDB is unavailable: {exc}") from None


@staff.command("create")
@click.argument("username")
@_password
def staff_create(username: str, password: str) -> None:
    """Create a staff account."""
    user = _run(accounts.create, username, password)
    click.echo(f"created staff user {user.username!r}")


@staff.command("list")
def staff_list() -> None:
    """List staff accounts."""
    users = _run(accounts.all_users)
    if not users:
        click.echo("no staff accounts (create one with `staff create USERNAME`)")
        return
    click.echo(f"{'USERNAME':<24} {'STATUS':<9} {'LAST LOGIN':<20} FAILED")
    for user in users:
        status = "disabled" if user.disabled else "active"
        last = user.last_login_at.strftime("%Y-%m-%d %H:%M:%S") if user.last_login_at else "never"
        click.echo(f"{user.username:<24} {status:<9} {last:<20} {user.failed_logins}")


@staff.command("disable")
@click.argument("username")
def staff_disable(username: str) -> None:
    """Disable an account and end its open sessions."""
    user = _run(accounts.set_disabled, username, True)
    click.echo(f"disabled staff user {user.username!r}")


@staff.command("enable")
@click.argument("username")
def staff_enable(username: str) -> None:
    """Enable a disabled account."""
    user = _run(accounts.set_disabled, username, False)
    click.echo(f"enabled staff user {user.username!r}")


@staff.command("reset-password")
@click.argument("username")
@_password
def staff_reset_password(username: str, password: str) -> None:
    """Set a new password and end the account's open sessions."""
    user = _run(accounts.reset_password, username, password)
    click.echo(f"password reset for staff user {user.username!r}")


GROUPS: list[click.Group] = [staff]


def register_cli(app: Flask) -> None:
    for group in GROUPS:
        app.cli.add_command(group)
