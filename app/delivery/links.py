"""One subscriber connection of the hub, its listener and its writer.

A worker has one such link to its Redis (standalone, or the primary Sentinel names) and,
on a Redis Cluster, one to each master: a user's channel is a shard channel, subscribed
on the link to the master serving its slot. Each link opens with a loop-back probe
channel of its own (on a cluster, one in a slot of its master), reads its frames off the
socket (``RawPushReader``) in one listener greenlet, and changes its subscriptions from
one writer greenlet (``Channels.run``).

After a reconnect the link writes every channel it holds again, waits until Redis
confirmed them all, and has the hub replay, per user of those channels, what was
published meanwhile; the hub holds those users' live messages until then, so each
client sees one ordered stream. A probe that does not come back within two intervals
tears the connection down. On a cluster, before reconnecting the hub refreshes the slot
map: a link whose node serves no slot any more (a master replaced by its replica) is
retired and its channels move to the links of the masters serving them now; a
``MOVED`` to an SSUBSCRIBE, or Redis ending a subscription whose slot left the node,
moves those channels the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from typing import TYPE_CHECKING, Any

import gevent
import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from app.delivery.channels import Channels
from app.delivery.events import PROBE, Event
from app.delivery.redis_reader import ERROR, MESSAGES, SUBSCRIBED, UNSUBSCRIBED, Frame, RawPushReader
from app.ops import metrics

if TYPE_CHECKING:
    from app.delivery.hub import Hub

log = logging.getLogger(__name__)

MAX_BACKOFF = 5.0
ERRORS = (redis.RedisError, RedisClusterException, OSError, ValueError, AttributeError)


class Link:
    def __init__(self, hub: Hub, node: tuple[str, int] | None) -> None:
        self.hub = hub
        self.node = node  # a cluster master; None: the one Redis of the other modes
        self.name = f"{node[0]}:{node[1]}" if node else "redis"
        config = hub.config
        self.channels = Channels(
            hub.needed, config.UNSUBSCRIBE_LINGER_SECONDS, self.force_reconnect, sharded=node is not None
        )
        self.probe_channel = ""
        self._probe_b = b""
        self.caught_up_us = 0  # the Redis time of the last probe received
        self.connected = False
        self.retired = False
        self._was_up = False  # restored once: a later connect replays the gap
        self._probe_sent_at: float | None = None
        self._reader: RawPushReader | None = None
        self._pubsub: Any = None
        self._client: redis.Redis | None = None
        self._listener: gevent.Greenlet | None = None
        self._writer: gevent.Greenlet | None = None

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        if self.retired or (self._listener is not None and not self._listener.dead):
            return
        if self._writer is not None:  # one writer only
            self._writer.kill(block=False)
        self._listener = gevent.spawn(self._run)
        self._writer = gevent.spawn(self.channels.run)

    def stop(self) -> None:
        self.retired = True
        gevent.killall([g for g in (self._listener, self._writer) if g is not None], block=False)
        self.close()

    def force_reconnect(self) -> None:
        """Drop the connection; the listener reconnects and restores."""
        self.close()

    def close(self) -> None:
        self.connected = False
        self.channels.drop()
        self._reader = None
        pubsub, self._pubsub = self._pubsub, None
        client, self._client = self._client, None
        for closable in (pubsub, client):
            if closable is not None:
                with contextlib.suppress(Exception):  # closing a broken connection
                    closable.close()

    def _run(self) -> None:
        hub, backoff, attempt = self.hub, 0.1, 0
        while not hub.stopping and not self.retired:
            try:
                if attempt and not hub.still_serving(self):
                    break  # retired: its channels moved to the masters serving them now
                attempt += 1
                self._connect()
                self._restore()
                self._send_probe()
                backoff = 0.1
                self._read_loop()
            except ERRORS as exc:
                if not hub.stopping and not self.retired:
                    metrics.redis_error("hub")
                    log.warning("hub %s: subscriber connection to %s lost: %s", hub.hub_id, self.name, exc)
            finally:
                self.close()
                hub.link_down(self)
            if hub.stopping or self.retired:
                break
            gevent.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, MAX_BACKOFF)
        if self._writer is not None:  # retired or stopping: nothing more to write
            self._writer.kill(block=False)

    def _connect(self) -> None:
        # No hidden retries: redis-py would otherwise reconnect and resubscribe on its
        # own, silently losing what was published meanwhile. The hub must see every
        # reconnect to replay the gap. The client is kept referenced: when it is
        # garbage-collected redis-py closes its pool, dropping the subscription.
        config = self.hub.config
        self._client = self.hub.connector.subscriber(
            node=self.node,
            client_name=f"notify-sub:{os.getpid()}:{self.hub.hub_id}",
            socket_connect_timeout=2.0,
            socket_timeout=config.REDIS_SOCKET_TIMEOUT,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 0),
        )
        self.probe_channel = self.hub.probe_channel_for(self)
        self._probe_b = self.probe_channel.encode()
        pubsub = self._client.pubsub()
        self._pubsub = pubsub
        if self.node is None:
            pubsub.subscribe(self.probe_channel)
        else:
            pubsub.ssubscribe(self.probe_channel)
        reply = pubsub.get_message(timeout=config.REDIS_SOCKET_TIMEOUT)
        if not reply or reply.get("type") not in ("subscribe", "ssubscribe"):
            raise redis.ConnectionError("no subscribe confirmation")
        self._probe_sent_at = None

    def _restore(self) -> None:
        """Subscribe every channel of this link on the new connection and wait until Redis
        confirmed them all; after a reconnect, replay the gap of their users meanwhile."""
        hub = self.hub
        self._reader = RawPushReader.take_over(self._pubsub)
        users = self.channels.owners() & set(hub.users) if self._was_up else set()
        hub.hold(users)
        restored = False
        try:
            self.channels.adopt(self._pubsub)
            deadline = time.monotonic() + hub.config.REDIS_SOCKET_TIMEOUT
            while self.channels.pending():
                if time.monotonic() > deadline:
                    raise redis.ConnectionError("subscriptions not confirmed in time")
                self._handle(self._read(0.2))
            self.connected = True
            if self._was_up:
                hub.reconnected(users, self.caught_up_us)
            restored = True
        finally:
            hub.release(users, deliver=restored)  # not restored: the next restore replays them
        self._was_up = True
        hub.connected.set()

    # -- reading ---------------------------------------------------------------------
    def _read(self, timeout: float) -> list[Frame]:
        if self._reader is not None:
            return self._reader.read(timeout)
        pubsub = self._pubsub
        if pubsub is None:
            raise redis.ConnectionError("subscriber connection closed")
        message = pubsub.get_message(timeout=timeout)
        if message is None:
            return []
        data = message["data"]
        return [(message["type"].encode(), message["channel"], data if isinstance(data, bytes) else b"")]

    def _read_loop(self) -> None:
        interval = self.hub.config.PROBE_INTERVAL_SECONDS
        next_probe = time.monotonic() + interval
        while not self.hub.stopping and not self.retired:
            if self._pubsub is None:
                raise redis.ConnectionError("subscriber connection closed")
            self._handle(self._read(min(1.0, interval)))
            now = time.monotonic()
            if now >= next_probe:
                next_probe = now + interval
                if self._probe_sent_at is not None and now - self._probe_sent_at > 2 * interval:
                    raise redis.ConnectionError("loop-back probe not received: subscription is silent")
                if self._probe_sent_at is None:
                    self._send_probe()

    def _handle(self, frames: list[Frame]) -> None:
        """Messages to the hub, confirmations to the channels, moved channels to their node."""
        received = 0
        moved: list[str] = []
        for kind, channel, data in frames:
            if kind in MESSAGES:
                if channel == self._probe_b:
                    self._probed(data)
                    continue
                received += 1
                self.hub.dispatch(channel, data)
            elif kind in SUBSCRIBED or kind in UNSUBSCRIBED:
                if channel == self._probe_b:  # its slot left the node: open with another
                    if kind in UNSUBSCRIBED:
                        raise redis.ConnectionError("the probe channel was unsubscribed by the server")
                    continue
                name = channel.decode()
                if self.channels.confirmation(name, kind in UNSUBSCRIBED):
                    moved.append(name)
            elif kind == ERROR:
                text = data.decode(errors="replace")
                if not text.startswith("MOVED ") or self.node is None:
                    raise redis.ConnectionError(f"subscriber connection: {text}")
                moved += self.channels.names(int(text.split()[1]))
        if received:
            self.hub.count_received(received)
        if moved:
            self.hub.move(self, moved)

    # -- the loop-back probe ---------------------------------------------------------
    def _send_probe(self) -> None:
        self.hub.send_probe(self.probe_channel, "PUBLISH" if self.node is None else "SPUBLISH")
        self._probe_sent_at = time.monotonic()

    def _probed(self, raw: bytes) -> None:
        try:
            event = Event.from_wire(raw)
        except (ValueError, UnicodeDecodeError):
            return
        if event.kind == PROBE and event.user_id == self.hub.hub_id:
            self._probe_sent_at = None
            self.caught_up_us = event.seq or self.caught_up_us
