"""Running the publish script on a standalone Redis or, split by slot, on a Redis Cluster.

A standalone Redis (or a Sentinel-managed primary) takes a whole batch in one PUBLISH call
(``lua.LeanScript``). A cluster node only runs a script whose keys live in its own slots,
so there the batch is split: one PUBLISH call per slot of the users' hash tags, all calls
for one node pipelined (one round trip per node, however many users a bulk POST names),
then one GLOBAL call for the recent list, the stats and the feed channel. Pub/sub is
sharded there: each call SPUBLISHes on channels of its own slot (a user's channel carries
the user's hash tag, the feed channel ``{all}``), so a message goes to the subscribers on
the master serving that slot and crosses no cluster bus. A slot that
moved (``MOVED`` / ``ASK``) or a master replaced by its replica is followed by redis-py's
cluster client, which refreshes its slot map and sends the call again.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import redis
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisClusterException

from app.store import lua

log = logging.getLogger(__name__)

HEAD = 7  # prefix, recent limit, replay size, replay TTL, max age, max ahead, kind
Note = tuple[Any, Any, Any, str]  # user, proposed cursor, JSON, live '1' / '0'
Run = Callable[[list[Any], list[Note]], list[Any]]


def publish_runner(client: Any, cluster: bool) -> Run:
    """``run(head, notifications)``: the cursors published, in order (raises ``RedisError``)."""
    if not cluster:
        script = lua.LeanScript(client, lua.PUBLISH)

        def run(head: list[Any], notes: list[Note]) -> list[Any]:
            return script([*head, "PUBLISH", "1", *(v for note in notes for v in note)])[0]

        return run
    return SlotPublish(client)


class SlotPublish:
    def __init__(self, client: Any) -> None:
        self.client = client
        self.shas = {
            src: hashlib.sha1(src.encode(), usedforsecurity=False).hexdigest()
            for src in (lua.PUBLISH, lua.GLOBAL)
        }

    def __call__(self, head: list[Any], notes: list[Note]) -> list[Any]:
        prefix = head[0]
        by_slot: dict[int, list[int]] = defaultdict(list)
        for i, (user, *_rest) in enumerate(notes):
            by_slot[key_slot(f"{prefix}seq:{{{user}}}".encode())].append(i)
        calls = []
        for indexes in by_slot.values():
            key = f"{prefix}seq:{{{notes[indexes[0]][0]}}}"
            args = [*head, "SPUBLISH", "0", *(v for i in indexes for v in notes[i])]
            calls.append((lua.PUBLISH, key, args))
        seqs: list[Any] = [None] * len(notes)
        wires: list[Any] = [None] * len(notes)
        notifications = head[6] == "n"  # a state event has no global part (and no wires)
        for indexes, (slot_seqs, slot_wires) in zip(by_slot.values(), self._pipelined(calls), strict=True):
            for n, i in enumerate(indexes):
                seqs[i] = slot_seqs[n]
                wires[i] = slot_wires[n] if notifications else None
        if not notifications:
            return seqs
        try:  # the users' part is published: failing now would have the relay publish it twice
            self._pipelined([(lua.GLOBAL, f"{prefix}{{all}}:recent", [prefix, head[1], "SPUBLISH", *wires])])
        except (redis.RedisError, RedisClusterException) as exc:
            log.warning("recent list, stats and feed not updated for %d notifications: %s", len(wires), exc)
        return seqs

    def _pipelined(self, calls: list[tuple[str, str, list[Any]]]) -> list[Any]:
        """The scripts' results, in order: one pipeline, grouped by node by redis-py. A
        script a node does not know (restarted, promoted replica) is loaded and run again."""
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            pipe = self.client.pipeline()
            for i in todo:
                source, key, args = calls[i]
                pipe.execute_command("EVALSHA", self.shas[source], 1, key, *args)
            replies = pipe.execute(raise_on_error=False)
            missing = []
            for i, reply in zip(todo, replies, strict=True):
                if isinstance(reply, NoScriptError) and attempt == 0:
                    missing.append(i)
                elif isinstance(reply, Exception):
                    raise reply if isinstance(reply, redis.RedisError) else redis.RedisError(str(reply))
                else:
                    results[i] = reply
            if not missing:
                break
            for source in {calls[i][0] for i in missing}:
                self.client.script_load(source)  # on every primary
            todo = missing
        return results
