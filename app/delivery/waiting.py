"""How a detached stream waits: no timer and no wake-up of its own per event.

A waiting stream arms an ``Alarm`` in the worker's one timer ``WHEEL`` (heartbeat, ping,
token expiry) instead of waiting with a timeout, and while it has nothing to send it is
``Parked``: the hub's offers mark it and the worker's one ``FLUSHER`` greenlet writes the
new events for it. Both were measured to cost several times less than per-stream timers
and wake-ups (bench/README.md, "What each optimization bought"). Used by the stream loop
(app/delivery/engine.py) for both transports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event

from app.delivery.events import Event

if TYPE_CHECKING:
    from app.delivery.connection import Conn

log = logging.getLogger(__name__)

BURST = 256  # events rendered into one write

Render = Callable[[Event], bytes]  # one event's wire bytes
Frame = Callable[[list[bytes]], bytes]  # a burst's one write


class Alarm:
    """A stream's one pending wake-up in the wheel (``slot`` 0: none pending)."""

    __slots__ = ("sub", "slot")

    def __init__(self, sub: Any) -> None:
        self.sub = sub
        self.slot = 0


class Wheel:
    """Wakes streams when a heartbeat, ping or token expiry is due: one timer per worker.

    A gevent wait with a timeout costs a Timeout object and a libev timer per wait (about
    15% of a delivery's CPU, measured) and a live timer per idle connection. Streams wait
    without a timeout instead and arm an alarm here; each stream has at most one pending
    entry, so busy streams do not pile entries up. Resolution ``TICK`` seconds.
    """

    TICK = 0.25

    def __init__(self) -> None:
        self.slots: dict[int, list[Alarm]] = {}
        self.done = 0
        self.greenlet: Any = None

    def arm(self, alarm: Alarm, due: float) -> None:
        """Wake ``alarm.sub`` at monotonic time ``due`` (a little after it, never before)."""
        slot = int(due / self.TICK) + 1
        if alarm.slot == 0 or slot < alarm.slot:
            alarm.slot = slot
            self.slots.setdefault(max(slot, self.done + 1), []).append(alarm)
            if self.greenlet is None:
                self.done = int(time.monotonic() / self.TICK)
                self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            gevent.sleep(self.TICK)
            now = int(time.monotonic() / self.TICK)
            for slot in range(self.done + 1, now + 1):
                for alarm in self.slots.pop(slot, ()):
                    if alarm.slot and alarm.slot <= slot:
                        alarm.slot = 0
                        alarm.sub.wakeup.set()
            self.done = max(self.done, now)


WHEEL = Wheel()


class Parked:
    """A waiting stream's writer: lets the flusher send new events without waking it.

    Waking a stream greenlet, running its loop and parking it again cost several times the
    write itself (``bench/fanout_micro.py``). While a stream waits with nothing to send, its
    subscription points here; the hub's offers mark it and the worker's one flusher writes
    everything queued in one non-blocking send. What does not fit in the socket buffer is
    kept in ``pending`` and the stream is woken to send it (and everything after) itself.
    """

    __slots__ = ("conn", "session", "render", "frame", "last_write", "pending", "dirty")

    def __init__(self, conn: Conn, session: Any, render: Render, frame: Frame) -> None:
        self.conn = conn
        self.session = session
        self.render = render
        self.frame = frame
        self.last_write = time.monotonic()
        self.pending = b""
        self.dirty = False

    def mark(self) -> None:
        if not self.dirty:
            self.dirty = True
            FLUSHER.dirty.append(self)
            FLUSHER.wakeup.set()

    def flush(self) -> None:
        self.dirty = False
        session = self.session
        sub = session.sub
        if sub.parked is not self or sub.closed:  # the stream is awake: it sends for itself
            sub.wakeup.set()
            return
        out: list[bytes] = []
        while len(out) < BURST:
            event = session.take()
            if event is None:
                break
            out.append(self.render(event))
        if sub.queue or sub.behind is not None:  # a long burst, or a catch-up: the stream sends the rest
            self._wake()
        if not out:
            return
        data = self.frame(out)
        try:
            sent = self.conn.sock.send(data)
        except OSError:  # full (BlockingIOError) or gone: the stream finds out on its send
            sent = 0
        self.last_write = time.monotonic()
        if sent < len(data):
            self.pending = data[sent:]
            self._wake()

    def _wake(self) -> None:
        self.session.sub.parked = None
        self.session.sub.wakeup.set()

    def send_pending(self) -> None:
        """What the flusher could not write goes first, before anything newer."""
        if self.pending:
            self.conn.send(self.pending)
            self.pending = b""

    def wait(self, watcher: Any) -> Event | None:
        """The stream's next event; meanwhile the flusher may write for it (see the class).

        ``watcher`` (the socket becoming readable: a hang-up, a client frame) wakes it too."""
        sub = self.session.sub
        watcher.start(sub.wakeup.set)
        if not sub.queue:
            FLUSHER.park(self)
        try:
            return self.session.next(None)
        finally:
            sub.parked = None
            watcher.stop()


class Flusher:
    """One greenlet per worker writing for parked streams, once per batch of offers."""

    def __init__(self) -> None:
        self.dirty: list[Parked] = []
        self.wakeup = gevent.event.Event()
        self.greenlet: Any = None

    def park(self, parked: Parked) -> None:
        if self.greenlet is None:
            self.greenlet = gevent.spawn(self._run)
        parked.session.sub.parked = parked

    def _run(self) -> None:
        while True:
            self.wakeup.wait()
            self.wakeup.clear()
            dirty, self.dirty = self.dirty, []
            for parked in dirty:
                try:
                    parked.flush()
                except Exception:  # one stream's failure must not stop the others' writes
                    log.exception("stream flush failed")
                    parked._wake()


FLUSHER = Flusher()
