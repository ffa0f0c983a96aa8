"""``flask --app wsgi push keys``: a new VAPID key pair, printed as settings."""

from __future__ import annotations

import click
from flask import Flask
from flask.cli import AppGroup

from app.push.vapid import generate

push = AppGroup("push", help="Web Push (VAPID keys).")


@push.command("keys")
def push_keys() -> None:
    """Print a new VAPID key pair as environment settings (keep the private key secret).

    Changing the key later invalidates every browser subscription made with the old one."""
    private, public = generate()
    click.echo(f"PUSH_VAPID_PRIVATE_KEY={private}")
    click.echo(f"PUSH_VAPID_PUBLIC_KEY={public}")


def register_cli(app: Flask) -> None:
    app.cli.add_command(push)
