"""``flask staff ...``: create, list, disable, enable, reset-password (Flask's CliRunner)."""

from __future__ import annotations

from flask import Flask

from app.dashboard import staff


def run(app: Flask, *args: str, input: str | None = None):
    return app.test_cli_runner().invoke(args=["staff", *args], input=input)


def test_create_list_disable_enable_and_reset(app: Flask) -> None:
    created = run(app, "create", "Alice", "--password", "first password")
    assert created.exit_code == 0, created.output
    assert "created staff user 'alice'" in created.output
    prompted = run(app, "create", "bob", input="second password\nsecond password\n")
    assert prompted.exit_code == 0, prompted.output
    with app.app_context():
        user = staff.get("alice")
        assert user is not None and user.password_hash.startswith("scrypt:")
        assert "first password" not in user.password_hash
        assert staff.authenticate("bob", "second password") is not None

    listing = run(app, "list")
    assert listing.exit_code == 0
    rows = listing.output.splitlines()[1:]
    assert [r.split()[:2] for r in rows] == [["alice", "active"], ["bob", "active"]]

    assert run(app, "disable", "alice").exit_code == 0
    assert [r.split()[:2] for r in run(app, "list").output.splitlines()[1:]][0] == ["alice", "disabled"]
    with app.app_context():
        assert staff.authenticate("alice", "first password") is None
    assert run(app, "enable", "alice").exit_code == 0
    with app.app_context():
        assert staff.authenticate("alice", "first password") is not None

    reset = run(app, "reset-password", "alice", input="a brand new one\na brand new one\n")
    assert reset.exit_code == 0, reset.output
    with app.app_context():
        assert staff.authenticate("alice", "first password") is None
        assert staff.authenticate("alice", "a brand new one") is not None


def test_errors_are_clear_and_exit_nonzero(app: Flask) -> None:
    assert run(app, "create", "carol", "--password", "long enough").exit_code == 0
    duplicate = run(app, "create", "CAROL", "--password", "long enough")
    assert duplicate.exit_code == 1 and "already exists" in duplicate.output
    short = run(app, "create", "dave", "--password", "short")
    assert short.exit_code == 1 and "password must be" in short.output
    bad_name = run(app, "create", "no spaces please", "--password", "long enough")
    assert bad_name.exit_code == 1 and "username must be" in bad_name.output
    missing = (
        ["disable", "nobody"],
        ["enable", "nobody"],
        ["reset-password", "nobody", "--password", "x" * 9],
    )
    for command in missing:
        result = run(app, *command)
        assert result.exit_code == 1 and "no staff user 'nobody'" in result.output
    typed = "one password\nanother one\none password\none password\n"
    mismatch = run(app, "reset-password", "carol", input=typed)
    assert mismatch.exit_code == 0 and "do not match" in mismatch.output


def test_list_when_empty(app: Flask) -> None:
    result = run(app, "list")
    assert result.exit_code == 0 and "no staff accounts" in result.output
