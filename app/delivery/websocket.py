"""WebSocket framing (RFC 6455) by wsproto, on the detached socket.

The handshake is checked here against RFC 6455 §4.2.1 and refused with a JSON error
before the upgrade; after it, wsproto parses every client frame (masking, fragments,
control frames, UTF-8, close codes per §7.4) and builds every frame we send. No extension
is negotiated: permessage-deflate would keep a zlib context of ~300 KB per connection.
Close codes: 1008 slow consumer or missing pong, 1001 going away, 4401 token expired,
4000 disconnected by support staff,
1009 message too big, 1002 protocol error, 1007 invalid UTF-8; a client's close is echoed.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

from flask import Request, Response
from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, FrameProtocol, Opcode, ParseFailed, RsvBits
from wsproto.utilities import generate_accept_token

from app.delivery import engine
from app.delivery.connection import Handoff
from app.delivery.events import Event
from app.delivery.session import StreamSession
from app.errors import ApiError

OnMessage = Callable[[str | bytes], str | None]  # a client message -> the reply, if any
_SERVER_FRAMES = FrameProtocol(client=False, extensions=[])  # server frames hold no state
PING = bytes(_SERVER_FRAMES.ping())


def _bad_handshake(message: str, field: str) -> ApiError:
    return ApiError(400, "bad_handshake", f"{field}: {message} (RFC 6455, version 13)", field=field)


def check_handshake(request: Request) -> str:
    """The ``Sec-WebSocket-Accept`` value for a valid upgrade request, or a 400/426."""
    headers = request.headers
    if request.method != "GET":
        raise _bad_handshake("a WebSocket upgrade is a GET", "method")
    if "websocket" not in (t.strip().lower() for t in headers.get("Upgrade", "").split(",")):
        raise _bad_handshake("must be websocket", "Upgrade")
    if "upgrade" not in (t.strip().lower() for t in headers.get("Connection", "").split(",")):
        raise _bad_handshake("must include Upgrade", "Connection")
    if headers.get("Sec-WebSocket-Version") != "13":
        raise ApiError(
            426,
            "bad_handshake",
            "Sec-WebSocket-Version: must be 13",
            field="Sec-WebSocket-Version",
            headers={"Sec-WebSocket-Version": "13"},
        )
    key = headers.get("Sec-WebSocket-Key", "")
    try:
        nonce = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        nonce = b""
    if len(nonce) != 16:
        raise _bad_handshake("must be the base64 of 16 bytes", "Sec-WebSocket-Key")
    return generate_accept_token(key.encode("ascii")).decode("ascii")


class MessageLimit(Extension):
    """``WS_MAX_MESSAGE_BYTES`` through wsproto's extension hook: checked on each frame's
    header, so a frame that claims too much is refused before its payload arrives (1009).
    Local only: never offered to or negotiated with the client."""

    __slots__ = ("limit", "size")
    name = "notify-message-limit"

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool:
        return False

    def frame_inbound_header(self, proto: Any, opcode: Opcode, rsv: RsvBits, payload_length: int) -> Any:
        if opcode.iscontrol():
            return RsvBits(False, False, False)
        self.size = payload_length + (self.size if opcode is Opcode.CONTINUATION else 0)
        if self.size > self.limit:
            return CloseReason.MESSAGE_TOO_BIG
        return RsvBits(False, False, False)


class WebSocketFraming:
    """The WebSocket side of a stream: wsproto's frame layer, made on the first client bytes
    (an idle client that never sends holds none of it: ~0.85 KB, bench/README.md)."""

    __slots__ = ("proto", "max_size", "on_message", "parts", "ping_every", "next_ping", "pong", "closing")

    linger = 2.0  # let the client read our close frame and answer it
    render = staticmethod(Event.ws_frame)
    frame = staticmethod(b"".join)

    def __init__(self, on_message: OnMessage, max_size: int, ping_every: float, now: float) -> None:
        self.proto: FrameProtocol | None = None
        self.max_size = max_size
        self.on_message = on_message
        self.parts: list[Any] = []
        self.ping_every = ping_every
        self.next_ping = now + ping_every if ping_every else float("inf")
        self.pong = True
        self.closing = False  # the client sent its close: ours is the answer

    def _proto(self) -> FrameProtocol:
        if self.proto is None:
            self.proto = FrameProtocol(
                client=False, extensions=[MessageLimit(self.max_size)] if self.max_size else []
            )
        return self.proto

    def received(self, data: bytes, out: list[bytes]) -> None:
        proto = self._proto()
        proto.receive_bytes(data)
        try:
            for frame in proto.received_frames():
                opcode = frame.opcode
                if opcode is Opcode.PING:
                    out.append(bytes(proto.pong(frame.payload)))
                elif opcode is Opcode.PONG:
                    self.pong = True
                elif opcode is Opcode.CLOSE:
                    code, reason = frame.payload
                    self.closing = True
                    raise engine.End(code, reason)
                else:
                    self._message_part(frame.payload, frame.message_finished, out)
        except ParseFailed as exc:  # a frame RFC 6455 forbids: 1002, 1007 or 1009
            raise engine.End(exc.code, str(exc)) from None

    def _message_part(self, data: str | bytes, finished: bool, out: list[bytes]) -> None:
        self.parts.append(data)
        if finished:
            parts, self.parts = self.parts, []
            message = "".join(parts) if isinstance(data, str) else b"".join(parts)
            reply = self.on_message(message)
            if reply is not None:
                out.append(bytes(self._proto().send_data(reply)))

    def keepalive(self, now: float, last_write: float, out: list[bytes]) -> float:
        if now >= self.next_ping:
            if not self.pong:
                raise engine.End(engine.SLOW, "Ping/Pong timeout")
            self.pong = False
            out.append(PING)
            self.next_ping = now + self.ping_every
        return self.next_ping

    def finish(self, end: engine.End | None) -> bytes:
        """Our close frame: the echo of the client's, or our own code."""
        end = end or engine.End(engine.NORMAL)
        code = None if end.code == CloseReason.NO_STATUS_RCVD else end.code  # an empty close, echoed
        return bytes(_SERVER_FRAMES.close(code, end.message[:120] if code else None))


def response(session: StreamSession, accept: str, on_message: OnMessage, config: Any, now: float) -> Response:
    """The 101 head now; the stream, with the replay first, once detached."""
    first = [event.ws_frame() for event in session.open()]
    framing = WebSocketFraming(on_message, config.WS_MAX_MESSAGE_BYTES, config.WS_PING_SECONDS or 0.0, now)
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Accept": accept}
    args = (session, framing, first)
    return Handoff(engine.run, "101 Switching Protocols", args, status=101, headers=headers)
