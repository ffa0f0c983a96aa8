"""The event value object: one message for one user's stream, serialized once.

An ``Event`` is built once per Redis message in the hub and shared by every local
client: its SSE frame bytes and WebSocket frame are computed on first use and cached,
so fan-out to N clients costs N queue appends, not N serializations.
"""

from __future__ import annotations

import orjson
from wsproto.frame_protocol import FrameProtocol

# Server frames are never masked and no extension is negotiated, so one frame of a text
# message is the same bytes for every client: built once per event, by wsproto.
_SERVER_FRAMES = FrameProtocol(client=False, extensions=[])

NOTIFICATION = "notification"
STATE = "state"  # an inbox state change (seen, read, unread, archive, unarchive, delete)
UPDATE = "update"  # a notification changed in place (PATCH /api/notifications/<id>)
RESET = "reset"
PROBE = "probe"
DISCONNECT = "disconnect"  # a command to the worker that holds one connection: close it

_WIRE_KINDS = {b"n": NOTIFICATION, b"s": STATE, b"u": UPDATE, b"p": PROBE, b"x": DISCONNECT}
CURSORED = (NOTIFICATION, STATE, UPDATE)  # kinds whose seq is a place in the user's stream
_KIND_CODES = {v: k.decode() for k, v in _WIRE_KINDS.items()}

SSE_HEARTBEAT = b": ping\n\n"


class Event:
    __slots__ = ("kind", "user_id", "seq", "payload", "_sse", "_ws", "_ws_frame", "_nid")

    def __init__(self, kind: str, user_id: str, seq: int | None, payload: bytes) -> None:
        self.kind = kind
        self.user_id = user_id
        self.seq = seq
        self.payload = payload  # one-line JSON object
        self._sse: bytes | None = None
        self._ws: str | None = None
        self._ws_frame: bytes | None = None
        self._nid: str | None = None

    def notification_id(self) -> str:
        """A notification event's id, read from its JSON once (the delivery trace's key)."""
        if self._nid is None:
            at = self.payload.find(b'"id":"') + 6
            self._nid = self.payload[at : at + 24].decode() if at >= 6 else ""
        return self._nid

    @classmethod
    def from_wire(cls, raw: bytes) -> Event:
        """Parse ``kind\\tuser\\tseq\\tjson`` as published by the Lua script."""
        code, user, seq, payload = raw.split(b"\t", 3)
        kind = _WIRE_KINDS.get(code)
        if kind is None or not payload.startswith(b"{"):
            raise ValueError(f"unknown event kind {code!r}")
        return cls(kind, user.decode(), int(seq) if seq else None, payload)

    @classmethod
    def replayed(cls, user_id: str, seq: int, entry: bytes) -> Event:
        """An entry of the user's replay list: a notification's JSON, or a kind code and JSON."""
        if entry.startswith(b"{"):
            return cls(NOTIFICATION, user_id, seq, entry)
        kind = _WIRE_KINDS.get(entry[:1])
        if kind not in CURSORED:
            raise ValueError(f"unknown replay entry {entry[:20]!r}")
        return cls(kind, user_id, seq, entry[1:])

    def to_wire(self) -> bytes:
        seq = b"" if self.seq is None else str(self.seq).encode()
        return b"\t".join((_KIND_CODES[self.kind].encode(), self.user_id.encode(), seq, self.payload))

    @classmethod
    def reset(cls, user_id: str, cursor: int | None, reason: str) -> Event:
        return cls(RESET, user_id, cursor, orjson.dumps({"reason": reason, "cursor": cursor}))

    def sse(self) -> bytes:
        """The SSE frame. Every payload line gets its own ``data:`` field (no injection)."""
        if self._sse is None:
            head = b"" if self.seq is None else b"id: %d\n" % self.seq
            data = self.payload
            if b"\n" in data or b"\r" in data:
                lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
                body = b"".join(b"data: " + line + b"\n" for line in lines)
            else:
                body = b"data: " + data + b"\n"
            self._sse = head + b"event: " + self.kind.encode() + b"\n" + body + b"\n"
        return self._sse

    def ws_text(self) -> str:
        """The WebSocket frame: ``{"type": kind, ...}``, built without re-parsing the JSON."""
        if self._ws is None:
            data = self.payload.decode()
            if self.kind == NOTIFICATION:
                self._ws = f'{{"type":"notification","id":{self.seq},"notification":{data}}}'
            else:
                rest = data[1:]
                sep = "," if rest != "}" else ""
                self._ws = f'{{"type":"{self.kind}"{sep}{rest}'
        return self._ws

    def ws_frame(self) -> bytes:
        """``ws_text`` as one WebSocket text frame (RFC 6455 framing by wsproto)."""
        if self._ws_frame is None:
            self._ws_frame = bytes(_SERVER_FRAMES.send_data(self.ws_text(), fin=True))
        return self._ws_frame
