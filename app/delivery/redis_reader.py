"""Reading a subscriber connection's frames straight off its socket, and writing to it.

redis-py's ``PubSub.get_message`` costs tens of microseconds per message (readiness
check, generic reply parser, a dict per message). Once redis-py has connected,
authenticated and subscribed, the hub reads the socket itself: one ``recv`` for whatever
has arrived, then a tight parser for the only frames a subscribed connection gets
(``message`` / ``smessage`` pushes, ``subscribe`` / ``unsubscribe`` confirmations and
their sharded forms, a ``sunsubscribe`` Redis sends itself when a slot leaves its node),
RESP2 arrays or RESP3 pushes of bulk strings and integers, and error replies (``MOVED``
to an SSUBSCRIBE whose slot another node serves) as ``(ERROR, b"", message)``.

The hub changes its subscriptions on that same connection while the listener reads it:
``write_command`` sends a command packed by redis-py on the connection's socket (gevent
lets one greenlet write a socket while another waits to read it; the hub has one writer),
and its confirmation comes back through the reader like any other frame.
"""

from __future__ import annotations

import socket
from typing import Any

import redis

READ_SIZE = 256 * 1024
MESSAGE, SUBSCRIBE, UNSUBSCRIBE = b"message", b"subscribe", b"unsubscribe"
SMESSAGE, SSUBSCRIBE, SUNSUBSCRIBE = b"smessage", b"ssubscribe", b"sunsubscribe"
ERROR = b"-"
MESSAGES = (MESSAGE, SMESSAGE)
SUBSCRIBED = (SUBSCRIBE, SSUBSCRIBE)
UNSUBSCRIBED = (UNSUBSCRIBE, SUNSUBSCRIBE)
Frame = tuple[bytes, bytes, bytes]  # (kind, channel, payload or subscription count)
_AGGREGATE = (ord("*"), ord(">"))
_BULK, _INT, _SIMPLE, _ERROR = ord("$"), ord(":"), ord("+"), ord("-")


class RawPushReader:
    def __init__(self, sock: socket.socket, pending: bytes) -> None:
        self.sock = sock
        self.buffer = bytearray(pending)

    @classmethod
    def take_over(cls, pubsub: Any) -> RawPushReader | None:
        """The reader for ``pubsub``'s connection, or None where redis-py's internals differ
        (another parser, such as hiredis): the hub then keeps using ``get_message``."""
        conn = getattr(pubsub, "connection", None)
        sock = getattr(conn, "_sock", None)
        buffered = getattr(getattr(conn, "_parser", None), "_buffer", None)
        stream = getattr(buffered, "_buffer", None)
        if sock is None or stream is None or not hasattr(stream, "read"):
            return None
        return cls(sock, stream.read())  # what redis-py already read past the confirmation

    def read(self, timeout: float) -> list[Frame]:
        """The frames that arrive within ``timeout`` (maybe none)."""
        frames, used = parse_frames(self.buffer)
        if not used:  # nothing complete buffered: wait for more
            self.sock.settimeout(timeout)
            try:
                data = self.sock.recv(READ_SIZE)
            except TimeoutError:
                return []
            if not data:
                raise redis.ConnectionError("Connection closed by server.")
            self.buffer += data
            frames, used = parse_frames(self.buffer)
        del self.buffer[:used]
        return frames


def write_command(pubsub: Any, *args: str | bytes) -> None:
    """Send one command on ``pubsub``'s connection, never reconnecting (the hub must see a
    lost connection to resubscribe and replay); its reply is read as a frame."""
    conn = pubsub.connection
    sock = getattr(conn, "_sock", None) if conn is not None else None
    if sock is None:
        raise redis.ConnectionError("subscriber connection closed")
    sock.sendall(b"".join(conn.pack_command(*args)))


def parse_frames(buf: bytearray) -> tuple[list[Frame], int]:
    """The complete frames at the start of ``buf`` as (kind, channel, payload or
    subscription count; for an error reply ``ERROR``, empty, its text), and the bytes
    they took. Raises ``redis.ConnectionError`` on anything a subscriber cannot receive."""
    frames: list[Frame] = []
    pos, end = 0, len(buf)
    while pos < end:
        start = pos
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            break
        if buf[pos] == _ERROR:
            frames.append((ERROR, b"", bytes(buf[pos + 1 : eol])))
            pos = eol + 2
            continue
        if buf[pos] not in _AGGREGATE:
            raise redis.ConnectionError(f"unexpected reply on the subscriber connection: {bytes(buf[:40])!r}")
        count = int(buf[pos + 1 : eol])
        pos = eol + 2
        items: list[bytes] = []
        while len(items) < count:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            kind = buf[pos]
            if kind == _BULK:
                stop = eol + 2 + int(buf[pos + 1 : eol])
                if stop + 2 > end:
                    break
                items.append(bytes(buf[eol + 2 : stop]))
                pos = stop + 2
            elif kind in (_INT, _SIMPLE):
                items.append(bytes(buf[pos + 1 : eol]))
                pos = eol + 2
            else:
                raise redis.ConnectionError(f"unexpected frame on the subscriber connection: {kind!r}")
        if len(items) < count:  # incomplete: wait for the rest
            return frames, start
        if count == 3:
            frames.append((items[0], items[1], items[2]))
    return frames, pos
