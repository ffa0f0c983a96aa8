"""Dashboard routes: thin views over DashboardService, NotificationService and staff.

Pages answer HTML and redirect to the login page without a session; everything under
``/dashboard/api/`` (JSON and the two streams) answers JSON errors, 401 without a session.
Every POST needs the session's CSRF token (form field or ``X-CSRF-Token`` header).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
import redis
from flask import (
    Response,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from pymongo.errors import PyMongoError

from app.access.tokens import Subscriber
from app.api import validation as v
from app.dashboard import bootstrap_admin, bp, security, streams
from app.dashboard.actions import StaffActions, page_user
from app.dashboard.history import OBJECT_ID_RE, STATES
from app.dashboard.reach import reach
from app.dashboard.service import DashboardService
from app.delivery import sse
from app.delivery.session import StreamSession, parse_cursor
from app.errors import ApiError, error_response

log = logging.getLogger(__name__)


def svc() -> DashboardService:
    return current_app.extensions["dashboard"]


def _is_api() -> bool:
    return request.path.startswith("/dashboard/api/")


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status=status, mimetype="application/json")


# -- request plumbing ----------------------------------------------------------------
@bp.before_request
def _before() -> Response | None:
    _bootstrap_admin()
    if request.method in security.UNSAFE_METHODS and not security.csrf_ok():
        message = "missing or invalid CSRF token: reload the page and try again"
        if _is_api():
            return error_response(403, "csrf_failed", message)
        return _html_error(403, message)
    return None


def _bootstrap_admin() -> None:
    """Fallback for the start-up bootstrap (e.g. MongoDB was down then)."""
    if not current_app.extensions.get("dashboard_bootstrapped"):
        bootstrap_admin(current_app._get_current_object())  # type: ignore[attr-defined]


@bp.after_request
def _headers(resp: Response) -> Response:
    resp.headers.setdefault("Referrer-Policy", "same-origin")
    resp.headers.setdefault("Cache-Control", "no-store")
    return resp


@bp.context_processor
def _template_globals() -> dict[str, Any]:
    return {"csrf_token": security.csrf_token, "staff_name": g.get("staff")}


@bp.app_template_filter("json_text")
def _json_text(value: Any) -> str:
    """JSON as plain text: autoescaped like any other string."""
    return orjson.dumps(value).decode()


def _html_error(status: int, message: str) -> Response:
    return Response(
        render_template("error.html", status=status, message=message), status, mimetype="text/html"
    )


@bp.errorhandler(ApiError)
def _api_error(err: ApiError) -> Response:
    if _is_api():
        return error_response(err.status, err.code, err.message, err.field, err.headers)
    return _html_error(err.status, err.message)


@bp.errorhandler(PyMongoError)
@bp.errorhandler(redis.RedisError)
def _store_error(err: Exception) -> Response:
    log.error("dashboard: store unavailable: %s", err)
    message = "a data store (MongoDB or Redis) is unavailable; retry in a moment"
    return error_response(503, "unavailable", message) if _is_api() else _html_error(503, message)


def actions() -> StaffActions:
    return current_app.extensions["staff_actions"]


# -- sign in / out -------------------------------------------------------------------
@bp.get("/login")
def login() -> Any:
    target = request.args.get("next", "")
    destination = security.safe_next(target)
    if security.current_staff() is not None:
        return redirect(destination)
    return render_template("dashboard/login.html", next=target, error=None)


@bp.post("/login")
def login_submit() -> Any:
    username = request.form.get("username", "")
    password = request.form.get("password", "")
    target = request.form.get("next", "")
    destination = security.safe_next(target)  # a bad target fails before the login counts
    result = security.attempt_login(username, password, request.remote_addr or "unknown")
    if result.user is None:
        html = render_template("dashboard/login.html", next=target, error=result.error, username=username)
        return html, result.status
    security.open_session(result.user)
    return redirect(destination)


@bp.post("/logout")
def logout() -> Any:
    security.close_session()
    flash("You are signed out.", "info")
    return redirect(url_for("dashboard.login"))


# -- pages ---------------------------------------------------------------------------
@bp.get("")
@security.staff_page
def overview() -> str:
    fanouts = current_app.extensions["topics"].fanouts.recent()
    return render_template(
        "dashboard/overview.html", stats=svc().overview(), recent=svc().recent(), fanouts=fanouts
    )


@bp.get("/")
def overview_slash() -> Any:
    return redirect(url_for("dashboard.overview"))


@bp.get("/search")
@security.staff_page
def search() -> Any:
    query = request.args.get("q", "").strip()
    if not query:
        return redirect(url_for("dashboard.overview"))
    if OBJECT_ID_RE.match(query) and (owner := svc().notification_owner(query)) is not None:
        return _at_notification(owner, query.lower())
    matches = svc().search(query) if v.USER_ID_RE.match(query) else []
    if query in matches and len(matches) == 1:
        return redirect(url_for("dashboard.user", user_id=query))
    valid = bool(v.USER_ID_RE.match(query))
    return render_template("dashboard/search.html", query=query, matches=matches, valid=valid)


@bp.get("/users/<user_id>")
@security.staff_page
def user(user_id: str) -> Any:
    user_id = page_user(user_id)
    view = svc().user_view(user_id)
    history = svc().history_page(user_id, request.args, view)
    if history.owner is not None:  # a notification id: its user's page, from it on
        return _at_notification(history.owner, history.focus)
    presence = actions().connections(user_id)
    page = {"view": view, "history": history, "states": STATES, "presence": presence, "reach": reach(user_id)}
    html = render_template("dashboard/user.html", **page)
    return html, history.status


def _at_notification(user_id: str, notification_id: str | None) -> Any:
    return redirect(
        url_for("dashboard.user", user_id=user_id, at=notification_id, _anchor=f"n-{notification_id}")
    )


@bp.post("/users/<user_id>/test-notification")
@security.staff_page
def send_test_form(user_id: str) -> Any:
    """Without JavaScript: the form's first POST asks for confirmation, the second sends."""
    user_id = page_user(user_id)
    try:
        body = request.form.to_dict()
        message = v.text(body, "message", 4000, required=True)
        title = v.text(body, "title", 200, required=False)
        if body.get("confirmed") != "yes":
            page = "dashboard/confirm_send.html"
            return render_template(page, user_id=user_id, title=title, message=message)
        actions().send_test(g.staff, user_id, message, title)
        flash("Test notification sent.", "info")
    except ApiError as exc:
        flash(exc.message, "error")
    return redirect(url_for("dashboard.user", user_id=user_id))


# -- JSON ----------------------------------------------------------------------------
@bp.get("/api/overview")
@security.staff_api
def api_overview() -> Response:
    return json_response(svc().overview())


@bp.get("/api/users/<user_id>/history")
@security.staff_api
def api_history(user_id: str) -> Response:
    view = svc().user_view(page_user(user_id))
    return json_response(
        {
            "notifications": view.notifications,
            "from_cache": view.from_cache,
            "has_more": view.has_more,
            "cache": {"cached": view.cached, "ttl": view.ttl_seconds},
            "unread": view.unread,
        }
    )


@bp.get("/api/notifications/<notification_id>/trace")
@security.staff_api
def api_trace(notification_id: str) -> Response:
    return json_response(svc().trace(notification_id))


@bp.get("/api/users/<user_id>/status")
@security.staff_api
def api_status(user_id: str) -> Response:
    return json_response(svc().user_status(page_user(user_id)))


@bp.post("/api/users/<user_id>/notifications")
@security.staff_api
def api_send_test(user_id: str) -> Response:
    body = v.json_body()
    result = actions().send_test(
        g.staff,
        page_user(user_id),
        v.text(body, "message", 4000, required=True),
        v.text(body, "title", 200, required=False),
    )
    return json_response(result, 201)


@bp.post("/api/users/<user_id>/read")
@security.staff_api
def api_mark_read(user_id: str) -> Response:
    return json_response(actions().mark_read(g.staff, page_user(user_id), v.id_selection(v.json_body())))


# -- streams -------------------------------------------------------------------------
def _sse(frames: Any) -> Response:
    return Response(
        frames,
        mimetype="text/event-stream",
        headers=sse.STREAM_HEADERS,
    )


def _session_check() -> streams.StaffCheck:
    """A check the stream can run after the request ended (no request context)."""
    sid = session.get(security.SID, "")
    client = current_app.extensions["redis"]
    prefix = current_app.extensions["config"].KEY_PREFIX
    return lambda: security.check_session(sid, client, prefix) is not None


@bp.get("/api/overview/stream")
@security.staff_api
def overview_stream() -> Response:
    config = current_app.extensions["config"]
    hub = current_app.extensions["hub"]
    return _sse(
        streams.overview_frames(
            hub, svc(), _session_check(), config.DASHBOARD_TICK_SECONDS, config.SSE_RETRY_MS
        )
    )


@bp.get("/api/users/<user_id>/stream")
@security.staff_api
def user_stream(user_id: str) -> Response:
    user_id = page_user(user_id)
    config = current_app.extensions["config"]
    viewer = Subscriber(user_id, time.time() + config.STAFF_SESSION_SECONDS)
    cursor = parse_cursor(request.headers.get("Last-Event-ID"), "Last-Event-ID")
    session_ = StreamSession(current_app.extensions["hub"], viewer, cursor)
    initial = session_.open()
    response = _sse(
        streams.user_frames(
            session_,
            initial,
            svc(),
            _session_check(),
            config.DASHBOARD_TICK_SECONDS,
            config.SSE_RETRY_MS,
        )
    )
    response.call_on_close(session_.close)  # also if the stream never started
    return response
