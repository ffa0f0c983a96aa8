"""The ``stream`` blueprint: a user's live notifications over SSE (``/stream``) and WebSocket (``/ws``).

Both transports share ``StreamSession``: register with the hub first, then replay what the
client missed after its cursor, then live events, dropping anything at or below the last
cursor sent, so the hand-over from replay to live neither loses nor repeats an event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import gevent
import gevent.lock
import orjson
from flask import Blueprint, Response, current_app, g, request
from simple_websocket import ConnectionClosed

from app.access.ratelimit import StreamSlot, stream_slot
from app.access.tokens import Subscriber, bearer_token, verify_token
from app.delivery import connection as lean
from app.delivery import websocket as lean_ws
from app.delivery.events import NOTIFICATION, RESET, SSE_HEARTBEAT, Event
from app.delivery.hub import Hub, Subscription
from app.delivery.replay import ReplayUnavailable, current_cursor, events_after
from app.errors import ApiError
from app.extensions import sock
from app.ops import metrics

log = logging.getLogger(__name__)

bp = Blueprint("stream", __name__)

WS_SLOW = 1008
WS_EXPIRED = 4401
WS_GOING_AWAY = 1001


class StreamSession:
    """One client's view of its user's events: resume, then live, in cursor order."""

    def __init__(self, hub: Hub, subscriber: Subscriber, cursor: str | None, transport: str = "sse") -> None:
        self.hub = hub
        self.transport = transport
        self.tracker: metrics.StreamTracker | None = None
        self.subscriber = subscriber
        self.raw_cursor = cursor
        self.last_seq: int | None = None
        self.sub: Subscription | None = None
        self.slot: StreamSlot | None = None  # this stream's place under MAX_STREAMS_PER_USER

    def open(self) -> list[Event]:
        """Subscribe, then read the replay: events in flight meanwhile are deduplicated."""
        user_id = self.subscriber.user_id
        config = self.hub.config
        self.sub = self.hub.subscribe(user_id)
        self.tracker = metrics.StreamTracker(self.transport, user_id)
        # Live means "published after this stream opened": make sure this worker's
        # subscriber is listening before saying so (it may still be connecting).
        self.hub.connected.wait(config.REDIS_SOCKET_TIMEOUT)
        if self.raw_cursor is None:
            return []
        cursor = _parse_cursor(self.raw_cursor)
        try:
            events = (
                events_after(self.hub.service, user_id, cursor, config.REPLAY_LIMIT, strict=True)
                if cursor is not None
                else None
            )
        except ReplayUnavailable:
            self.close()
            raise ApiError(503, "unavailable", "cannot replay missed notifications now, retry") from None
        if events is None:
            current = current_cursor(self.hub.service, user_id)
            self.last_seq = current
            metrics.RESETS.inc()
            return [Event.reset(user_id, current, "unknown or expired cursor: reload history")]
        self.last_seq = events[-1].seq if events else cursor
        self.tracker.replayed(len(events))
        return events

    def next(self, timeout: float | None) -> Event | None:
        """The next event to send, or None when ``timeout`` passed with nothing to send.

        ``timeout=None`` waits for the next wake-up of the subscription (app/delivery/waiting.py wakes
        it for heartbeats, without a timer per wait).
        """
        assert self.sub is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            event = self.sub.get(None if deadline is None else max(deadline - time.monotonic(), 0))
            if event is None:
                return None
            if self._accept(event):
                return event

    def take(self) -> Event | None:
        """The next queued event to send, never waiting (the lean streams' flusher)."""
        sub = self.sub
        assert sub is not None
        while sub.queue:
            event = sub.get(0)  # something is queued: returns at once
            if event is not None and self._accept(event):
                return event
        return None

    def _accept(self, event: Event) -> bool:
        if event.kind == NOTIFICATION:
            if self.last_seq is not None and event.seq is not None and event.seq <= self.last_seq:
                return False  # already sent (replay/live hand-over, hub resync)
            self.last_seq = event.seq
            self.tracker.delivered()  # type: ignore[union-attr]
        elif event.kind == RESET:
            self.last_seq = None
        return True

    @property
    def closed_reason(self) -> str | None:
        return self.sub.reason if self.sub is not None and self.sub.closed else None

    def expired(self) -> bool:
        return time.time() >= self.subscriber.expires_at

    def wait_budget(self, heartbeat: float) -> float:
        return max(min(heartbeat, self.subscriber.expires_at - time.time()), 0.0)

    def close(self) -> None:
        if self.slot is not None:
            self.slot.release()
        if self.sub is not None:
            self.hub.unsubscribe(self.sub)
            if self.tracker is not None:
                self.tracker.closed(self.sub.reason)


def _parse_cursor(raw: str) -> int | None:
    raw = raw.strip()
    if not raw.isdigit() or len(raw) > 19:
        return None
    return int(raw)


def _hub() -> Hub:
    return current_app.extensions["hub"]


def _authenticate() -> Subscriber:
    subscriber = verify_token(bearer_token() or request.args.get("token"))
    if subscriber is None:
        raise ApiError(401, "unauthorized", "missing, invalid or expired subscriber token")
    return subscriber


def _cursor_arg() -> str | None:
    return request.headers.get("Last-Event-ID") or request.args.get("last_event_id")


@bp.get("/stream")
def sse() -> Response:
    subscriber = _authenticate()
    slot = stream_slot(subscriber.user_id)  # 429 before the stream starts
    session = StreamSession(_hub(), subscriber, _cursor_arg())
    session.slot = slot
    try:
        initial = session.open()
    except BaseException:
        session.slot = None
        if slot is not None:
            slot.release()
        raise
    config = current_app.extensions["config"]
    g.stream_user = subscriber.user_id
    if lean.available(request.environ, config):  # the socket and one greenlet (app/delivery/connection.py)
        return lean.sse_response(session, initial, config.HEARTBEAT_SECONDS, config.SSE_RETRY_MS)
    return Response(
        _sse_frames(session, initial, config.HEARTBEAT_SECONDS, config.SSE_RETRY_MS),
        mimetype="text/event-stream",
        headers={
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            "Connection": "close",
        },
    )


def _sse_frames(
    session: StreamSession, initial: list[Event], heartbeat: float, retry_ms: int
) -> Iterator[bytes]:
    try:
        yield b"retry: %d\n: connected\n\n" % retry_ms
        for event in initial:
            yield event.sse()
        while True:
            event = session.next(session.wait_budget(heartbeat))
            if event is not None:
                yield event.sse()
            elif session.closed_reason is not None:
                return
            elif session.expired():
                yield b'event: expired\ndata: {"reason":"token expired"}\n\n'
                return
            else:
                yield SSE_HEARTBEAT
    finally:
        session.close()


class WholeFrameSocket:
    """Makes every write of simple-websocket a whole, exclusive ``sendall``.

    simple-websocket writes frames with ``socket.send`` and ignores short writes, and its
    ping thread writes concurrently: with a slow reader both corrupt the stream.
    """

    __slots__ = ("_sock", "_lock")

    def __init__(self, sock) -> None:
        self._sock = sock
        self._lock = gevent.lock.Semaphore()

    def send(self, data: bytes) -> int:
        with self._lock:
            self._sock.sendall(data)
        return len(data)

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


@bp.before_request
def _check_websocket_handshake() -> None:
    """Refuse a bad WebSocket handshake with JSON before flask-sock upgrades it."""
    if request.endpoint != "stream.websocket":
        return
    allowed = current_app.extensions["config"].ALLOWED_ORIGINS
    origin = request.headers.get("Origin")
    if origin is not None and origin not in allowed and origin != request.host_url.rstrip("/"):
        raise ApiError(403, "forbidden", "WebSocket Origin not allowed")
    g.subscriber = _authenticate()
    g.stream_slot = stream_slot(g.subscriber.user_id)  # 429 before the upgrade


@bp.before_request
def _lean_websocket() -> Response | None:
    """Under gunicorn, /ws without flask-sock: the socket and one greenlet (app/delivery/websocket.py)."""
    config = current_app.extensions["config"]
    if request.endpoint != "stream.websocket" or not lean.available(request.environ, config):
        return None
    session = StreamSession(_hub(), g.subscriber, request.args.get("last_event_id"), transport="ws")
    session.slot = g.pop("stream_slot", None)
    return lean_ws.websocket_response(session, _handle_client_frame, config)


@bp.teardown_request
def _release_unused_slot(_exc: BaseException | None) -> None:
    """A WebSocket slot taken at the handshake but never handed to a session."""
    slot = g.pop("stream_slot", None)
    if slot is not None:
        slot.release()


@sock.route("/ws", bp=bp, endpoint="websocket")
def websocket(ws) -> None:
    ws.sock = WholeFrameSocket(ws.sock)
    subscriber: Subscriber = g.subscriber
    hub = _hub()
    config = current_app.extensions["config"]
    session = StreamSession(hub, subscriber, request.args.get("last_event_id"), transport="ws")
    session.slot = g.get("stream_slot")  # teardown releases it too, whatever happens here
    service = hub.service
    try:
        initial = session.open()
    except ApiError as exc:
        ws.close(reason=1011, message=exc.message)
        return
    reader = gevent.spawn(_ws_reader, ws, session, service)
    try:
        for event in initial:
            ws.send(event.ws_text())
        while ws.connected:
            event = session.next(session.wait_budget(config.HEARTBEAT_SECONDS))
            if event is not None:
                ws.send(event.ws_text())
            elif session.closed_reason is not None:
                slow = session.closed_reason == "slow consumer"
                ws.close(reason=WS_SLOW if slow else WS_GOING_AWAY, message=session.closed_reason)
                return
            elif session.expired():
                ws.close(reason=WS_EXPIRED, message="token expired")
                return
    except ConnectionClosed:
        pass
    finally:
        reader.kill(block=False)
        session.close()


def _ws_reader(ws, session: StreamSession, service) -> None:
    """Handle client frames: read receipts; anything else gets an error frame."""
    try:
        while True:
            data = ws.receive()
            if data is None:
                continue
            reply = _handle_client_frame(data, session.subscriber.user_id, service)
            if reply is not None:
                ws.send(reply)
    except ConnectionClosed:
        if session.sub is not None:
            session.sub.close("client closed")


def _handle_client_frame(data: str | bytes, user_id: str, service) -> str | None:
    def error(code: str, message: str) -> str:
        return orjson.dumps({"type": "error", "code": code, "message": message}).decode()

    if isinstance(data, bytes):
        return error("unsupported", "binary frames are not supported")
    try:
        frame = orjson.loads(data)
    except orjson.JSONDecodeError:
        return error("malformed_json", "frame is not valid JSON")
    if not isinstance(frame, dict) or frame.get("type") != "read":
        expected = 'expected {"type": "read", "ids": [...]} or {"type": "read", "all": true}'
        return error("unknown_type", expected)
    ids = frame.get("ids")
    if frame.get("all") is True and ids is None:
        ids = None
    elif not (isinstance(ids, list) and 1 <= len(ids) <= 1000 and all(isinstance(i, str) for i in ids)):
        return error("invalid_field", "ids: must be a list of 1-1000 notification ids")
    try:
        service.mark_read(user_id, ids)
    except ApiError as exc:
        return error(exc.code, exc.message)
    return None
