"""Request bodies are read within a deadline, and a malformed one is the client's error.

Why: a client that declares ``Content-Length: 5000`` and sends 10 bytes would otherwise
hold its connection (and the greenlet reading it) for as long as it likes, on any route
that reads a body, with or without nginx in front. This WSGI middleware sits in front of
everything (the lean POST path included) and wraps ``wsgi.input``: all reads of one body
share ``BODY_READ_TIMEOUT_SECONDS``; past it the read raises a 408 ``ApiError``, which the
views and the lean path answer like any other error. A chunked body whose framing gunicorn
cannot parse (``zz\\r\\n`` as a chunk size), or one the client cuts short, is a 400, not a
500 with a traceback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import gevent
from flask import Flask
from gunicorn.http.errors import NoMoreData, ParseException

from app.errors import ApiError

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _Expired(Exception):
    """This body's deadline passed (raised by gevent.Timeout inside a read)."""


def init_app(app: Flask) -> None:
    """Wrap ``app.wsgi_app`` last, so the deadline covers every reader of the body."""
    app.wsgi_app = BodyDeadline(app.wsgi_app, app.extensions["config"].BODY_READ_TIMEOUT_SECONDS)  # type: ignore[method-assign]


class BodyDeadline:
    def __init__(self, wsgi_app: WSGIApp, timeout: float) -> None:
        self.wsgi_app = wsgi_app
        self.timeout = timeout

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        stream = environ.get("wsgi.input")
        if stream is not None:
            environ["wsgi.input"] = TimedInput(stream, self.timeout)
        return self.wsgi_app(environ, start_response)


class TimedInput:
    """``wsgi.input`` whose reads, together, end within ``timeout`` seconds of the first."""

    __slots__ = ("_stream", "_timeout", "_deadline")

    def __init__(self, stream: Any, timeout: float) -> None:
        self._stream = stream
        self._timeout = timeout
        self._deadline: float | None = None

    def read(self, size: int | None = None) -> bytes:
        return self._call(self._stream.read, size)

    def readline(self, size: int | None = None) -> bytes:
        return self._call(self._stream.readline, size)

    def readlines(self, hint: int | None = None) -> list[bytes]:
        return self._call(self._stream.readlines, hint)

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def __getattr__(self, name: str) -> Any:  # anything else the server's stream offers
        return getattr(self._stream, name)

    def _call(self, method: Callable[[Any], Any], arg: int | None) -> Any:
        now = time.monotonic()
        if self._deadline is None:
            self._deadline = now + self._timeout
        remaining = self._deadline - now
        try:
            if remaining <= 0:
                raise _Expired
            with gevent.Timeout(remaining, _Expired):
                return method(arg)
        except _Expired:
            raise ApiError(
                408, "request_timeout", f"request body not received within {self._timeout:g} s"
            ) from None
        except (ParseException, NoMoreData) as exc:
            raise ApiError(
                400, "bad_request", f"malformed or incomplete request body ({type(exc).__name__})"
            ) from None
