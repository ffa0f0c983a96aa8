"""The one loop every detached stream runs: live events, keep-alives, expiry, the end.

SSE and WebSocket differ only in their ``Framing``: how an event and a burst become
bytes, what a client may send, how the stream is kept alive and how it ends. Everything
else (the hand-over from replay to live, the flusher that writes for a waiting stream,
the wheel that wakes it, releasing the session whatever happens) is here, once.

How a stream ends is said in RFC 6455 close codes, the vocabulary of the documented API
(README, "Close codes"); the SSE framing renders what an EventSource can be told.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

import gevent

from app.delivery.connection import Conn
from app.delivery.events import Event
from app.delivery.hub import DISCONNECTED as DISCONNECTED_REASON
from app.delivery.session import StreamSession
from app.delivery.waiting import BURST, WHEEL, Alarm, Parked

log = logging.getLogger(__name__)

NORMAL, GOING_AWAY, PROTOCOL, BAD_DATA, SLOW, TOO_BIG, INTERNAL = 1000, 1001, 1002, 1007, 1008, 1009, 1011
EXPIRED = 4401
DISCONNECTED = 4000  # support staff closed this connection (the dashboard's disconnect)


class End(Exception):
    """The stream ends with ``code`` (an RFC 6455 close code) and ``message``."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Framing(Protocol):
    """What a transport adds to the engine."""

    linger: float  # seconds to let the client read the last bytes before closing

    def render(self, event: Event) -> bytes: ...

    def frame(self, parts: list[bytes]) -> bytes: ...

    def received(self, data: bytes, out: list[bytes]) -> None:
        """Handle client bytes; replies go to ``out``. Raises ``End`` to close."""

    def keepalive(self, now: float, last_write: float, out: list[bytes]) -> float:
        """Append a heartbeat or ping when due; return when the next one is due."""

    def finish(self, end: End | None) -> bytes:
        """The stream's last bytes."""


def pending(session: StreamSession, first: Event, render: Callable[[Event], bytes], out: list[bytes]) -> None:
    """``first`` and whatever else is queued right now: one write for a burst."""
    out.append(render(first))
    while len(out) < BURST and (event := session.take()) is not None:
        out.append(render(event))


def _end_of(session: StreamSession) -> End | None:
    reason = session.closed_reason
    if reason is None:
        return None
    if reason == "closed":
        return End(NORMAL)
    if reason == DISCONNECTED_REASON:
        return End(DISCONNECTED, reason)
    return End(SLOW if reason == "slow consumer" else GOING_AWAY, reason)


def run(conn: Conn, head: list[bytes], session: StreamSession, framing: Framing, first: list[bytes]) -> None:
    """Serve one stream until it ends; the session is released whatever happens.

    ``head`` (the response head, one item) and ``first`` (the replay's frames) are emptied
    once sent: the caller's frame holds the lists for as long as the stream lasts."""
    sub = session.sub
    assert sub is not None
    alarm = Alarm(sub)
    watcher = gevent.get_hub().loop.io(conn.fd, 1)
    parked = Parked(conn, session, framing.render, framing.frame)
    expiry = time.monotonic() + max(session.subscriber.expires_at - time.time(), 0.0)
    out: list[bytes] = []
    end: End | None = None
    peer_gone = False
    try:
        opening = head.pop() + (framing.frame(first) if first else b"")
        first.clear()  # nothing of the handshake or the replay stays referenced
        conn.send(opening)
        del opening
        while True:
            parked.send_pending()
            if out:
                conn.send(framing.frame(out))
                out = []
                parked.last_write = time.monotonic()
            data = conn.recv()
            if data == b"":
                peer_gone = True
                return
            if data:
                framing.received(data, out)
                continue
            due = framing.keepalive(time.monotonic(), parked.last_write, out)
            if out:
                continue
            WHEEL.arm(alarm, min(due, expiry))
            # A client that hangs up makes the socket readable: notice now, not at the next
            # heartbeat (thousands of streams would otherwise all be released in one burst).
            event = parked.wait(watcher)
            if event is not None:
                pending(session, event, framing.render, out)
            elif parked.pending:
                continue
            elif session.closed_reason is not None:
                end = _end_of(session)
                return
            elif session.expired():
                end = End(EXPIRED, "token expired")
                return
    except End as exc:
        end = exc
    except OSError:  # the client went away (or stopped reading for WRITE_TIMEOUT)
        peer_gone = True
    except Exception:
        log.exception("%s stream failed", session.transport)
        end = End(INTERNAL, "internal error")
    finally:
        session.close()
        watcher.close()
        if not peer_gone:
            try:
                conn.send(parked.pending + (framing.frame(out) if out else b"") + framing.finish(end))
            except OSError:
                peer_gone = True
        conn.close(linger=0.0 if peer_gone else framing.linger)
