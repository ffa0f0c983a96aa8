"""Server-Sent Events framing: the stream is a chunked ``text/event-stream`` body.

Each write is one HTTP/1.1 chunk (a client reads each burst as it arrives, not per
buffer); a comment line keeps proxies and the client's timer from closing an idle
stream; an EventSource is told how a stream ends by a last event: ``event: expired`` for
a token that ran out (the client gets a new token before reconnecting), ``event:
disconnected`` when support staff closed it; otherwise only by the end of the chunked
body, which makes it reconnect with its ``Last-Event-ID``.
"""

from __future__ import annotations

from flask import Response

from app.delivery import engine
from app.delivery.connection import Handoff
from app.delivery.events import SSE_HEARTBEAT, Event
from app.delivery.session import StreamSession

EXPIRED = b'event: expired\ndata: {"reason":"token expired"}\n\n'
DISCONNECTED = b'event: disconnected\ndata: {"reason":"disconnected by support staff"}\n\n'
END_OF_BODY = b"0\r\n\r\n"
STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: pass each event on at once
    "Connection": "close",
}
HEADERS = {**STREAM_HEADERS, "Transfer-Encoding": "chunked"}  # we write the chunks ourselves


def preamble(retry_ms: int) -> bytes:
    """The first bytes of every event stream: the reconnect delay, and a comment that
    makes a proxy or a browser see the stream open before the first event."""
    return b"retry: %d\n: connected\n\n" % retry_ms


def chunk(parts: list[bytes]) -> bytes:
    """HTTP/1.1 chunked framing of one write."""
    data = b"".join(parts)
    return b"%x\r\n%s\r\n" % (len(data), data)


class SseFraming:
    __slots__ = ("heartbeat",)

    linger = 0.0
    render = staticmethod(Event.sse)
    frame = staticmethod(chunk)

    def __init__(self, heartbeat: float) -> None:
        self.heartbeat = heartbeat

    def received(self, data: bytes, out: list[bytes]) -> None:
        """An SSE client has nothing to say on its stream (receipts are POSTs)."""

    def keepalive(self, now: float, last_write: float, out: list[bytes]) -> float:
        due = last_write + self.heartbeat
        if now >= due:
            out.append(SSE_HEARTBEAT)
        return due

    def finish(self, end: engine.End | None) -> bytes:
        if end is not None and end.code == engine.EXPIRED:
            return chunk([EXPIRED]) + END_OF_BODY
        if end is not None and end.code == engine.DISCONNECTED:
            return chunk([DISCONNECTED]) + END_OF_BODY
        return END_OF_BODY


def hello(connection: str | None) -> bytes:
    """``event: connected`` naming the stream: an SSE client names it in its receipts
    (``POST /api/me/ack``), so the trace can say which connection received what."""
    return b'event: connected\ndata: {"connection":"%s"}\n\n' % (connection or "").encode()


def response(session: StreamSession, initial: list[Event], heartbeat: float, retry_ms: int) -> Response:
    """The 200 head now; the stream, with the replay first, once detached."""
    first = [preamble(retry_ms), hello(session.connection), *[e.sse() for e in initial]]
    args = (session, SseFraming(heartbeat), first)
    return Handoff(engine.run, "200 OK", args, mimetype="text/event-stream", headers=HEADERS)
