"""Console routes for staff actions: close a user's connection, the audit log, API keys.

Thin like the other dashboard views (``app/dashboard/views.py``, whose request plumbing,
CSRF check and error pages apply to these too): the work is ``StaffActions``'.
"""

from __future__ import annotations

from typing import Any

from flask import current_app, flash, g, redirect, render_template, request, url_for

from app.dashboard import audit as audit_log
from app.dashboard import bp, security
from app.dashboard.actions import StaffActions, page_user
from app.errors import ApiError


def actions() -> StaffActions:
    return current_app.extensions["staff_actions"]


@bp.get("/users/<user_id>/connections")
@security.staff_page
def connections(user_id: str) -> str:
    """The user page's connections card alone, for the page to refresh it in place."""
    user_id = page_user(user_id)
    return render_template(
        "dashboard/_connections.html", user_id=user_id, presence=actions().connections(user_id)
    )


@bp.post("/users/<user_id>/disconnect")
@security.staff_page
def disconnect(user_id: str) -> Any:
    user_id = page_user(user_id)
    connection = request.form.get("connection", "")
    try:
        if actions().disconnect(g.staff, user_id, connection):
            flash(f"Connection {connection} closed.", "info")
        else:
            flash(f"Connection {connection} was asked to close; it leaves this list within seconds.", "info")
    except ApiError as exc:
        flash(exc.message, "error")
    return redirect(url_for("dashboard.user", user_id=user_id))


@bp.get("/audit")
@security.staff_page
def audit() -> str:
    target = request.args.get("target", "").strip()[:200] or None
    entries = actions().audit(target)
    return render_template("dashboard/audit.html", entries=entries, target=target, page_size=audit_log.PAGE)


@bp.get("/api-keys")
@security.staff_page
def api_keys() -> str:
    return render_template("dashboard/api_keys.html", keys=actions().keys(), created=None)


@bp.post("/api-keys")
@security.staff_page
def create_api_key() -> Any:
    """The new key's secret is shown in this answer only (not a redirect: it is never stored)."""
    try:
        created = actions().create_key(g.staff, request.form.get("name", ""))
    except ApiError as exc:
        flash(exc.message, "error")
        return redirect(url_for("dashboard.api_keys"))
    page = render_template("dashboard/api_keys.html", keys=actions().keys(), created=created)
    return page, 201


@bp.post("/api-keys/<key_id>/revoke")
@security.staff_page
def revoke_api_key(key_id: str) -> Any:
    try:
        record = actions().revoke_key(g.staff, key_id)
        within = current_app.extensions["config"].API_KEY_CACHE_SECONDS
        flash(f"API key {record.name!r} revoked: refused here now, everywhere within {within:g} s.", "info")
    except ApiError as exc:
        flash(exc.message, "error")
    return redirect(url_for("dashboard.api_keys"))
