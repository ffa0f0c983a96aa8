"""Detached streams: after the handshake a stream is its socket and one small greenlet.

Why: under gunicorn's gevent worker a request greenlet keeps its environ, HTTP parser,
Flask request/response objects and a deep C stack alive for as long as its stream lasts,
and flask-sock adds a reader greenlet and wsproto state per WebSocket: about 20 KB per
SSE client and 54 KB per WebSocket, measured (bench/README.md). Once a stream is
authenticated, subscribed and its replay read, none of that is needed. The view's
response object duplicates the socket, hands it with the ``StreamSession`` to a fresh
greenlet (``app/delivery/engine.py``), and tells gunicorn the request was handled
(raising ``StopIteration``); gunicorn then drops its request state and its copy of the
socket. Until that hand-off the request owns the session (``g.stream_session``, closed
by the blueprint's teardown); after it, the stream greenlet does.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import gevent
from flask import Response, g
from gevent import monkey
from gevent.socket import wait_read, wait_write

from app.errors import ApiError

log = logging.getLogger(__name__)

_RealSocket = monkey.get_original("socket", "socket")
WRITE_TIMEOUT = 30.0  # a client that reads nothing for this long is gone


def require_socket(environ: dict[str, Any]) -> None:
    """Streams need a server that hands over its socket: gunicorn (``wsgi.py``)."""
    if "gunicorn.socket" not in environ:
        raise ApiError(
            501,
            "unsupported_server",
            "streams are served under gunicorn (gunicorn -c gunicorn.conf.py wsgi:app)",
        )


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


class Handoff(Response):
    """Flask ran its hooks on this response; calling it starts the detached stream instead.

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
        conn = Conn(environ)  # e.g. out of file descriptors: a 500, the teardown closes the session
        g.pop("stream_session", None)  # from here the stream greenlet owns the session
        # The greenlet holds its arguments for as long as it runs: the head goes in a list
        # the stream empties once it is sent.
        gevent.spawn_raw(run, conn, [head], *args)
        raise StopIteration  # gunicorn: handled, close your copy of the socket


def _head(status: str, response: Response) -> bytes:
    skip = ("content-length", "content-type") if status.startswith("101") else ("content-length",)
    lines = [f"HTTP/1.1 {status}"]
    lines += [f"{k}: {v}" for k, v in response.headers.items() if k.lower() not in skip]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
