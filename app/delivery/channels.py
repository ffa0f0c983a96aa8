"""Which pub/sub channels a worker's subscriber connection holds, and the one writer of changes.

The hub (app/delivery/hub.py) says which channels it needs (``want``) and which it no
longer does (``release``: the channel is given up after ``UNSUBSCRIBE_LINGER_SECONDS``,
so a client that reconnects finds it still subscribed). A writer greenlet, the only one
that writes on the connection, sends everything asked for since its last round in one
SUBSCRIBE and one UNSUBSCRIBE, while the hub's listener keeps reading the connection and
hands back the confirmations it reads (``confirmation``). Redis confirms every channel of
every SUBSCRIBE and UNSUBSCRIBE in the order they were written, so a channel is confirmed
when every command written for it was, the last one a SUBSCRIBE: from then on every
message published on it reaches this worker (``wait_confirmed``).

After a reconnect the hub ``adopt``s the new connection: every channel still needed is
written again, and the hub waits until none is ``pending`` before it replays the gap.

On a Redis Cluster (``sharded``) the channels are shard channels: SSUBSCRIBE /
SUNSUBSCRIBE, one command per hash slot (Redis refuses one that names several slots), on
the connection to the master of those slots. A channel whose slot moves to another node
is taken off this connection (``forget``) and wanted on that node's; Redis itself ends a
shard subscription whose slot left its node (a ``sunsubscribe`` nobody asked for), which
``confirmation`` reports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis
from gevent.event import Event as Wakeup
from gevent.lock import Semaphore
from redis.crc import key_slot

from app.delivery.redis_reader import write_command

log = logging.getLogger(__name__)

CHANNELS_PER_COMMAND = 500  # one SUBSCRIBE names at most this many channels


class _Channel:
    """A channel's subscription on the current connection, as far as this worker knows."""

    __slots__ = ("owner", "sent", "outstanding", "confirmed")

    def __init__(self, owner: str | None) -> None:
        self.owner = owner  # the user whose channel it is; None: the feed channel
        self.sent = False  # the last command written for it was SUBSCRIBE
        self.outstanding = 0  # commands written for it whose confirmation has not come back
        self.confirmed = Wakeup()  # Redis confirmed it, and no UNSUBSCRIBE was written since


class Channels:
    def __init__(
        self,
        needed: Callable[[str | None], bool],
        linger: float,
        on_failure: Callable[[], None],
        sharded: bool = False,
    ) -> None:
        self._needed = needed  # does a stream (a user's, or a watcher for None) still need it?
        self._linger = linger
        self._on_failure = on_failure  # a write failed: drop the connection (the hub restores)
        self._channels: dict[str, _Channel] = {}
        self._idle: dict[str, float] = {}  # released channel -> when (oldest first)
        self._dirty: set[str] = set()  # channels whose subscription may have to change
        self._wakeup = Wakeup()
        self._lock = Semaphore()
        self._pubsub: Any = None  # the connection the writer writes on, once adopted
        self._sharded = sharded
        self._commands = ("SSUBSCRIBE", "SUNSUBSCRIBE") if sharded else ("SUBSCRIBE", "UNSUBSCRIBE")

    # -- what the hub asks for --------------------------------------------------------
    def want(self, name: str, owner: str | None) -> None:
        self._idle.pop(name, None)
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = _Channel(owner)
        if not channel.sent:
            self._dirty.add(name)
            self._wakeup.set()

    def release(self, name: str) -> None:
        """No stream needs ``name`` any more: unsubscribe it once the linger has passed."""
        if self._linger <= 0:
            self._dirty.add(name)
        else:
            self._idle.pop(name, None)  # to the end: the oldest released channel stays first
            self._idle[name] = time.monotonic()
        self._wakeup.set()

    def wait_confirmed(self, name: str, timeout: float) -> bool:
        channel = self._channels.get(name)
        return channel is not None and channel.confirmed.wait(timeout) is True

    def subscribed(self) -> int:
        """Channels subscribed, or being subscribed, on the connection."""
        return sum(1 for channel in self._channels.values() if channel.sent)

    def names(self, slot: int | None = None) -> list[str]:
        """The channels this connection holds or is asked for (those of one hash slot)."""
        return [n for n in self._channels if slot is None or key_slot(n.encode()) == slot]

    def owners(self) -> set[str]:
        """The users whose channels are on this connection."""
        return {c.owner for c in self._channels.values() if c.owner is not None}

    def forget(self, name: str) -> tuple[str | None, bool] | None:
        """Take ``name`` off this connection, writing nothing (its slot is served elsewhere
        now): its owner and whether it was only lingering, or None if it was not here."""
        with self._lock:
            channel = self._channels.pop(name, None)
            lingering = self._idle.pop(name, None) is not None
            self._dirty.discard(name)
        if channel is None:
            return None
        channel.confirmed.clear()
        return channel.owner, lingering

    def pending(self) -> bool:
        """A SUBSCRIBE written whose confirmation has not come back yet."""
        return any(c.sent and not c.confirmed.is_set() for c in self._channels.values())

    # -- the connection ---------------------------------------------------------------
    def adopt(self, pubsub: Any) -> None:
        """A new connection holds none of the channels: write every one still needed."""
        with self._lock:
            for name, channel in list(self._channels.items()):
                channel.sent, channel.outstanding = False, 0
                channel.confirmed.clear()
                if self._wanted(name, channel):
                    self._dirty.add(name)
                else:
                    del self._channels[name]
            self._pubsub = pubsub
        self.flush()

    def drop(self) -> None:
        """The connection is gone: nothing more is written until the next ``adopt``."""
        self._pubsub = None

    def confirmation(self, name: str, unsubscribed: bool) -> bool:
        """Redis confirmed a (S)SUBSCRIBE or (S)UNSUBSCRIBE of ``name`` (read by the
        listener). True: Redis ended a confirmed subscription on its own (its slot left
        the node): the channel must be subscribed where its slot is now."""
        channel = self._channels.get(name)
        if channel is None:  # the probe's, or of a connection gone
            return False
        if not channel.outstanding:
            return unsubscribed and channel.sent and channel.confirmed.is_set()
        channel.outstanding -= 1
        if channel.outstanding:
            return False
        if channel.sent:
            channel.confirmed.set()
        elif not self._wanted(name, channel):
            del self._channels[name]
        return False

    # -- the writer -------------------------------------------------------------------
    def run(self) -> None:
        """The writer greenlet (the hub runs it beside its listener)."""
        while True:
            timeout = None
            if self._idle:
                oldest = next(iter(self._idle.values()))
                timeout = max(oldest + self._linger - time.monotonic(), 0.0) + 0.01
            self._wakeup.wait(timeout)
            self._wakeup.clear()
            now = time.monotonic()
            while self._idle:
                name, since = next(iter(self._idle.items()))
                if now - since < self._linger:
                    break
                del self._idle[name]
                self._dirty.add(name)
            try:
                self.flush()
            except (redis.RedisError, OSError) as exc:  # the hub reconnects and restores
                log.warning("subscription change failed: %s", exc)
                self._on_failure()

    def flush(self) -> None:
        """Write the changes of the dirty channels, if a connection is adopted."""
        with self._lock:
            pubsub = self._pubsub
            if pubsub is None or not self._dirty:
                return
            dirty, self._dirty = self._dirty, set()
            on, off = [], []
            for name in dirty:
                channel = self._channels.get(name)
                if channel is None:
                    continue
                wanted = self._wanted(name, channel)
                if wanted and not channel.sent:
                    on.append(name)
                elif not wanted and channel.sent:
                    off.append(name)
                elif not wanted and not channel.outstanding:
                    del self._channels[name]  # asked for and given up before it was written
            subscribe, unsubscribe = self._commands
            for command, names in ((subscribe, on), (unsubscribe, off)):
                for chunk in self._chunks(names):
                    for name in chunk:  # before the write: its confirmation may come at once
                        channel = self._channels[name]
                        channel.sent = command == subscribe
                        channel.outstanding += 1
                        if not channel.sent:
                            channel.confirmed.clear()
                    write_command(pubsub, command, *chunk)

    def _chunks(self, names: list[str]) -> list[list[str]]:
        """At most ``CHANNELS_PER_COMMAND`` per command; sharded, one slot per command."""
        groups: list[list[str]] = [names]
        if self._sharded:
            by_slot: dict[int, list[str]] = {}
            for name in names:
                by_slot.setdefault(key_slot(name.encode()), []).append(name)
            groups = list(by_slot.values())
        size = CHANNELS_PER_COMMAND
        return [group[i : i + size] for group in groups for i in range(0, len(group), size)]

    def _wanted(self, name: str, channel: _Channel) -> bool:
        return name in self._idle or self._needed(channel.owner)
