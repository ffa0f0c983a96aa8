"""The ``stream`` blueprint: a user's live notifications over SSE (``/stream``) and WebSocket (``/ws``).

Thin routes: authenticate, validate the cursor (and the WebSocket handshake and Origin),
take a stream slot, open the session; every error is JSON, before anything is streamed.
The request owns the session until the response hands it to its stream greenlet
(``app/delivery/connection.py``); a request that fails before that closes it here.
"""

from __future__ import annotations

import time

from flask import Blueprint, Response, current_app, g, request

from app.access.ratelimit import stream_slot
from app.access.tokens import Subscriber, bearer_token, verify_token
from app.delivery import commands, sse, websocket
from app.delivery.connection import require_socket
from app.delivery.hub import Hub
from app.delivery.session import StreamSession, parse_cursor
from app.errors import ApiError

bp = Blueprint("stream", __name__)


def _hub() -> Hub:
    return current_app.extensions["hub"]


def _authenticate() -> Subscriber:
    subscriber = verify_token(bearer_token() or request.args.get("token"))
    if subscriber is None:
        raise ApiError(401, "unauthorized", "missing, invalid or expired subscriber token")
    return subscriber


def _cursor() -> int | None:
    if request.headers.get("Last-Event-ID", "").strip():
        return parse_cursor(request.headers["Last-Event-ID"], "Last-Event-ID")
    return parse_cursor(request.args.get("last_event_id"), "last_event_id")


def _session(subscriber: Subscriber, cursor: int | None, transport: str) -> StreamSession:
    """A session holding a slot (429 if none is left), owned by this request for now."""
    slot = stream_slot(subscriber.user_id)
    session = StreamSession(_hub(), subscriber, cursor, transport, slot, traced=True)
    g.stream_session = session
    g.stream_user = subscriber.user_id
    return session


@bp.teardown_request
def _close_unclaimed_session(_exc: BaseException | None) -> None:
    """A session no stream took over (the request failed on the way) gives everything back."""
    session = g.pop("stream_session", None)
    if session is not None:
        session.close()


@bp.get("/stream")
def sse_stream() -> Response:
    subscriber = _authenticate()
    cursor = _cursor()
    require_socket(request.environ)
    session = _session(subscriber, cursor, "sse")
    initial = session.open()
    config = current_app.extensions["config"]
    return sse.response(session, initial, config.HEARTBEAT_SECONDS, config.SSE_RETRY_MS)


def _check_origin() -> None:
    """Browsers send Origin: only the configured ones (never the client's own Host)."""
    origin = request.headers.get("Origin")
    if origin is not None and origin not in current_app.extensions["config"].trusted_origins():
        raise ApiError(403, "forbidden_origin", "Origin: not allowed for WebSocket", field="Origin")


def websocket_stream() -> Response:
    accept = websocket.check_handshake(request)
    _check_origin()
    subscriber = _authenticate()
    cursor = _cursor()
    require_socket(request.environ)
    session = _session(subscriber, cursor, "ws")
    config = current_app.extensions["config"]
    on_message = commands.Commands(subscriber.user_id, session.hub.service, session.connection)
    return websocket.response(session, accept, on_message, config, time.monotonic())


# werkzeug routes upgrade requests only to rules marked ``websocket``; the plain rule lets
# a request that is not an upgrade get the handshake's JSON error naming the header.
bp.add_url_rule("/ws", "websocket", websocket_stream, methods=["GET"], websocket=True)
bp.add_url_rule("/ws", "websocket_handshake_error", websocket_stream, methods=["GET"])
