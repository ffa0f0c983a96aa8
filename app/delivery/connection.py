"""Lean streams: after the handshake a stream is its socket and one small greenlet, nothing else.

Why: under gunicorn's gevent worker a request greenlet keeps its environ, HTTP parser,
Flask request/response objects and a deep C stack alive for as long as its stream lasts,
and flask-sock adds a thread-like reader and wsproto state per WebSocket: about 20 KB per
SSE client and 50 KB per WebSocket, measured (bench/README.md). Once a stream is
authenticated, subscribed and its replay read, none of that is needed. The view's
response object duplicates the socket, hands it with the ``StreamSession`` to a fresh
greenlet, and tells gunicorn the request was handled (raising ``StopIteration``, as
flask-sock does); gunicorn then drops its request state and its copy of the socket.

Used only under gunicorn (``gunicorn.socket`` in the environ) and with ``LEAN_STREAMS``;
elsewhere the views keep their generator / flask-sock paths. Delivery semantics are the
session's (replay, dedupe, cursor order). This module: the hand-off and the SSE stream;
app/delivery/waiting.py: the timer wheel and the flusher that writes for waiting streams;
app/delivery/websocket.py: the WebSocket stream.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import gevent
from flask import Response
from gevent import monkey
from gevent.socket import wait_read, wait_write

from app.delivery.events import SSE_HEARTBEAT, Event
from app.delivery.waiting import WHEEL, Alarm, Parked

log = logging.getLogger(__name__)

_RealSocket = monkey.get_original("socket", "socket")
WRITE_TIMEOUT = 30.0  # a client that reads nothing for this long is gone


def available(environ: dict[str, Any], config: Any) -> bool:
    return bool(getattr(config, "LEAN_STREAMS", 1)) and "gunicorn.socket" in environ


class Conn:
    """A duplicated, non-blocking socket with a bounded cooperative ``send``."""

    __slots__ = ("sock", "fd")

    def __init__(self, environ: dict[str, Any]) -> None:
        fd = os.dup(environ["gunicorn.socket"].fileno())
        self.sock = _RealSocket(fileno=fd)
        self.sock.setblocking(False)
        if self.sock.family in (socket.AF_INET, socket.AF_INET6):
            # Each write is a whole burst already: Nagle would only hold an event back
            # waiting for the client's (possibly delayed) ACK of the previous one.
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.fd = fd

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                sent = 0
            view = view[sent:]
            if view:
                wait_write(self.fd, WRITE_TIMEOUT)

    def recv(self) -> bytes | None:
        """What the client sent so far; None if nothing is waiting, b"" at end of stream."""
        try:
            return self.sock.recv(65536)
        except BlockingIOError:
            return None

    def close(self, linger: float = 0.0) -> None:
        """Close; with ``linger``, first let the peer read what we sent (no reset)."""
        try:
            if linger:
                self.sock.shutdown(socket.SHUT_WR)
                deadline = time.monotonic() + linger
                while time.monotonic() < deadline:
                    data = self.recv()
                    if data == b"":
                        break
                    if data is None:
                        wait_read(self.fd, max(deadline - time.monotonic(), 0.01))
        except OSError:
            pass
        finally:
            self.sock.close()


class _Handoff(Response):
    """Flask ran its hooks on this response; calling it starts the lean stream instead.

    The stream greenlet gets the socket, the response head as bytes and ``args``: nothing
    of the request (not this response either) stays referenced while the stream lasts.
    """

    def __init__(
        self, run: Callable[..., None], status_line: str, args: tuple[Any, ...], **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._stream = (run, status_line, args)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:  # type: ignore[override]
        run, status_line, args = self._stream
        self._stream = None  # type: ignore[assignment]
        head = _head(status_line, self)
        try:
            conn = Conn(environ)
        except OSError:  # e.g. out of file descriptors: give the session back, answer 500
            args[0].close()
            raise
        gevent.spawn_raw(run, conn, head, *args)
        raise StopIteration  # gunicorn: handled, close your copy of the socket


def _head(status: str, response: Response) -> bytes:
    skip = ("content-length", "content-type") if status.startswith("101") else ("content-length",)
    lines = [f"HTTP/1.1 {status}"]
    lines += [f"{k}: {v}" for k, v in response.headers.items() if k.lower() not in skip]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# --- SSE ---------------------------------------------------------------------------------


def sse_response(session: Any, initial: list[Event], heartbeat: float, retry_ms: int) -> Response:
    first = [b"retry: %d\n: connected\n\n" % retry_ms, *[e.sse() for e in initial]]
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "close",
               "Transfer-Encoding": "chunked"}  # fmt: skip
    return _Handoff(
        _run_sse, "200 OK", (session, first, heartbeat), mimetype="text/event-stream", headers=headers
    )


def _pending(session: Any, first: Event, render: Callable[[Event], bytes], out: list[bytes]) -> None:
    """``first`` and whatever else is queued right now: one write for a burst."""
    out.append(render(first))
    sub = session.sub
    while sub.queue and len(out) < 256:
        event = session.next(0)
        if event is None:
            break
        out.append(render(event))


def _expiry_due(session: Any) -> float:
    return time.monotonic() + max(session.subscriber.expires_at - time.time(), 0.0)


def _chunk(parts: list[bytes]) -> bytes:
    """HTTP/1.1 chunked framing: clients read each write as it arrives, not per buffer."""
    data = b"".join(parts)
    return b"%x\r\n%s\r\n" % (len(data), data)


def _run_sse(conn: Conn, head: bytes, session: Any, out: list[bytes], heartbeat: float) -> None:
    alarm = Alarm(session.sub)
    watcher = gevent.get_hub().loop.io(conn.fd, 1)
    parked = Parked(conn, session, Event.sse, _chunk)
    try:
        conn.send(head)
        del head  # nothing of the handshake stays referenced while the stream lasts
        expiry = _expiry_due(session)  # the token's, fixed for the stream's life
        while True:
            parked.send_pending()
            if out:
                conn.send(_chunk(out))
                out = []
                parked.last_write = time.monotonic()
            WHEEL.arm(alarm, min(parked.last_write + heartbeat, expiry))
            # A client that hangs up makes the socket readable: notice now, not at the next
            # heartbeat (thousands of streams would otherwise all be released in one burst).
            event = parked.wait(watcher)
            if event is not None:
                _pending(session, event, Event.sse, out)
            elif parked.pending:
                continue
            elif session.closed_reason is not None:
                return
            elif session.expired():
                conn.send(_chunk([b'event: expired\ndata: {"reason":"token expired"}\n\n']))
                return
            elif conn.recv() == b"":
                return
            elif time.monotonic() >= parked.last_write + heartbeat:
                out.append(SSE_HEARTBEAT)
    except OSError:  # the client went away (or stopped reading for WRITE_TIMEOUT)
        conn.sock.close()  # nothing more to tell it
    except Exception:
        log.exception("lean SSE stream failed")
    finally:
        session.close()
        watcher.close()
        if conn.sock.fileno() != -1:
            with contextlib.suppress(OSError):
                conn.send(parked.pending + b"0\r\n\r\n")  # the chunked body's end: a clean end of stream
        conn.close()
