"""Lean WebSocket streams (see app/delivery/connection.py): RFC 6455 spoken directly on the detached socket.

No flask-sock thread, no wsproto state, no extension (permessage-deflate is never
negotiated). One greenlet per connection reads client frames and writes events: an io
watcher on the socket wakes it like an event does. The close codes are the flask-sock
path's: 1008 slow consumer or missing pong, 1001 going away, 4401 token expired, 1009
message too big, 1002 protocol error, 1007 invalid UTF-8.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import gevent
from flask import Response, request

from app.delivery.connection import Conn, _expiry_due, _Handoff, _pending
from app.delivery.events import Event
from app.delivery.waiting import WHEEL, Alarm, Parked
from app.errors import ApiError

log = logging.getLogger(__name__)

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
WS_SLOW, WS_GOING_AWAY, WS_EXPIRED, WS_PROTOCOL, WS_BAD_DATA, WS_TOO_BIG = 1008, 1001, 4401, 1002, 1007, 1009

FrameHandler = Callable[[str | bytes, str, Any], str | None]


def websocket_response(session: Any, on_frame: FrameHandler, config: Any) -> Response:
    """Validate the upgrade, open the session (errors are JSON, before the upgrade)."""
    key = request.headers.get("Sec-WebSocket-Key", "")
    if (
        request.headers.get("Upgrade", "").lower() != "websocket"
        or request.headers.get("Sec-WebSocket-Version") != "13"
        or len(key) != 24
    ):
        session.close()
        raise ApiError(400, "bad_request", "expected a WebSocket upgrade (RFC 6455, version 13)")
    frames = [_text_frame(e) for e in session.open()]
    accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Accept": accept}
    args = (session, frames, on_frame, config)
    return _Handoff(_run_ws, "101 Switching Protocols", args, status=101, headers=headers)


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    return head + payload


def _text_frame(event: Event) -> bytes:
    return _frame(OP_TEXT, event.ws_text().encode())


def _close_frame(code: int, message: str) -> bytes:
    return _frame(OP_CLOSE, code.to_bytes(2, "big") + message.encode()[:120])


def _unmask(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    if not n:
        return data
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class _Closing(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Reader:
    """Incremental RFC 6455 parser for client frames; returns replies to send."""

    __slots__ = ("buf", "parts", "size", "max_size", "pong")

    def __init__(self, max_size: int) -> None:
        self.buf = b""
        self.parts: list[bytes] | None = None
        self.size = 0
        self.max_size = max_size
        self.pong = True

    def feed(self, data: bytes, handle: Callable[[str | bytes], str | None], out: list[bytes]) -> None:
        buf = self.buf + data
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            opcode, length, pos = b0 & 0x0F, b1 & 0x7F, 2
            if b0 & 0x70 or not b1 & 0x80:
                raise _Closing(WS_PROTOCOL, "reserved bits set or frame not masked")
            if length == 126:
                if len(buf) < 4:
                    break
                length, pos = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    break
                length, pos = int.from_bytes(buf[2:10], "big"), 10
            if opcode >= 0x8 and (length > 125 or not b0 & 0x80):
                raise _Closing(WS_PROTOCOL, "bad control frame")
            if opcode < 0x8 and self.max_size and self.size + length > self.max_size:
                raise _Closing(WS_TOO_BIG, "Message is too big")
            if len(buf) < pos + 4 + length:
                break
            payload = _unmask(buf[pos + 4 : pos + 4 + length], buf[pos : pos + 4])
            buf = buf[pos + 4 + length :]
            self._frame(opcode, bool(b0 & 0x80), payload, handle, out)
        self.buf = buf

    def _frame(self, opcode: int, fin: bool, payload: bytes, handle: Any, out: list[bytes]) -> None:
        if opcode == OP_PING:
            out.append(_frame(OP_PONG, payload))
        elif opcode == OP_PONG:
            self.pong = True
        elif opcode == OP_CLOSE:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1000
            raise _Closing(code if 1000 <= code < 5000 else 1000, "")
        elif opcode in (OP_TEXT, OP_BINARY, OP_CONT):
            if (opcode == OP_CONT) != (self.parts is not None):
                raise _Closing(WS_PROTOCOL, "unexpected continuation frame")
            if opcode != OP_CONT:
                self.parts = [bytes([opcode])]
            assert self.parts is not None
            self.parts.append(payload)
            self.size += len(payload)
            if fin:
                kind, data = self.parts[0][0], b"".join(self.parts[1:])
                self.parts, self.size = None, 0
                if kind == OP_TEXT:
                    try:
                        message: str | bytes = data.decode()
                    except UnicodeDecodeError:
                        raise _Closing(WS_BAD_DATA, "invalid UTF-8") from None
                else:
                    message = data
                reply = handle(message)
                if reply is not None:
                    out.append(_frame(OP_TEXT, reply.encode()))
        else:
            raise _Closing(WS_PROTOCOL, "unknown opcode")


def _answer(on_frame: FrameHandler, session: Any, message: str | bytes) -> str | None:
    return on_frame(message, session.subscriber.user_id, session.hub.service)


def _run_ws(
    conn: Conn, head: bytes, session: Any, out: list[bytes], on_frame: FrameHandler, config: Any
) -> None:
    reader = _Reader(config.WS_MAX_MESSAGE_BYTES)
    ping_every = config.WS_PING_SECONDS or 0.0
    next_ping = time.monotonic() + ping_every if ping_every else float("inf")
    expiry = _expiry_due(session)  # the token's, fixed for the stream's life
    watcher = gevent.get_hub().loop.io(conn.fd, 1)
    alarm = Alarm(session.sub)
    parked = Parked(conn, session, _text_frame, b"".join)
    closing: tuple[int, str] | None = None
    peer_closed = False

    out.insert(0, head)
    del head
    try:
        while True:
            parked.send_pending()
            if out:
                conn.send(b"".join(out))
                out = []
            data = conn.recv()
            if data == b"":
                peer_closed = True
                return
            if data:
                reader.feed(data, partial(_answer, on_frame, session), out)
                continue
            now = time.monotonic()
            if now >= next_ping:
                if not reader.pong:
                    closing = (WS_SLOW, "Ping/Pong timeout")
                    return
                reader.pong = False
                out.append(_frame(OP_PING, b""))
                next_ping = now + ping_every
                continue
            WHEEL.arm(alarm, min(next_ping, expiry))
            event = parked.wait(watcher)  # a client frame wakes us like an event
            if event is not None:
                _pending(session, event, _text_frame, out)
            elif parked.pending:
                continue
            elif session.closed_reason is not None:
                reason = session.closed_reason
                if reason != "closed":
                    closing = (WS_SLOW if reason == "slow consumer" else WS_GOING_AWAY, reason)
                return
            elif session.expired():
                closing = (WS_EXPIRED, "token expired")
                return
    except _Closing as exc:
        closing = (exc.code, exc.message)
    except OSError:
        peer_closed = True
    except Exception:
        log.exception("lean WebSocket stream failed")
        closing = (1011, "internal error")
    finally:
        session.close()
        watcher.close()
        if closing is not None and not peer_closed:
            try:
                conn.send(b"".join([parked.pending, *out, _close_frame(*closing)]))
            except OSError:
                peer_closed = True
        conn.close(linger=0.0 if peer_closed else 2.0)
