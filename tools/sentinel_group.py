"""A Redis primary, its replica and three Sentinels as child processes, for failover tests.

Everything runs on free ports below 55000 on 127.0.0.1 and is killed by ``stop``. The
waits poll the servers themselves (``SENTINEL ...``, ``ROLE``) against a deadline:
Sentinel learns its peers and the replica within a few seconds, and a failover takes
about as long as ``down_after_ms`` plus an election.
"""

from __future__ import annotations

from typing import Any

import redis

from tools.devservers import ManagedServer, ServerGroup, free_port_below, redis_server, sentinel_server


def _distinct_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port_below()
        if port not in ports:
            ports.append(port)
    return ports


class SentinelGroup(ServerGroup):
    def __init__(
        self,
        name: str = "notify",
        sentinels: int = 3,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
    ) -> None:
        self.name = name
        primary, replica, *watchers = _distinct_ports(2 + sentinels)
        self.nodes = {
            primary: redis_server(primary),
            replica: redis_server(replica, replica_of=primary),
        }
        self.sentinels = [
            sentinel_server(primary, name, port, 2, down_after_ms, failover_timeout_ms) for port in watchers
        ]

    @property
    def addresses(self) -> str:
        """``REDIS_SENTINELS`` for this group."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def start(self, timeout: float = 30) -> SentinelGroup:
        """Start the nodes and the Sentinels; return once every Sentinel knows its peers
        and sees the replica in sync (a failover needs both)."""
        try:
            for server in [*self.nodes.values(), *self.sentinels]:
                server.start(timeout)
            self.wait(self._ready, timeout, "Sentinels ready")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in [*self.sentinels, *self.nodes.values()]:
            server.kill()

    # -- what the servers say --------------------------------------------------------
    def _ask(self, server: ManagedServer, *command: Any) -> Any:
        with redis.Redis(host=server.host, port=server.port, socket_timeout=1, decode_responses=True) as r:
            return r.execute_command(*command)

    def primary_port(self) -> int:
        """The primary's port, as the first Sentinel that answers names it."""
        for sentinel in self.sentinels:
            if sentinel.alive():
                try:
                    _, port = self._ask(sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
                    return int(port)
                except redis.RedisError:
                    continue
        raise RuntimeError("no Sentinel answers")

    def primary(self) -> ManagedServer:
        return self.nodes[self.primary_port()]

    def role(self, port: int) -> str:
        try:
            return str(self._ask(self.nodes[port], "ROLE")[0])
        except redis.RedisError:
            return "down"

    def _ready(self) -> bool:
        for sentinel in self.sentinels:
            peers = self._ask(sentinel, "SENTINEL", "SENTINELS", self.name)
            replicas = self._ask(sentinel, "SENTINEL", "REPLICAS", self.name)
            if len(peers) < len(self.sentinels) - 1:
                return False
            in_sync = [r for r in replicas if r["flags"] == "slave" and r.get("master-link-status") == "ok"]
            if not in_sync:
                return False
        return True

    # -- faults ----------------------------------------------------------------------
    def failover(self, timeout: float = 20) -> int:
        """``SENTINEL FAILOVER``; the new primary's port once every Sentinel names it."""
        old = self.primary_port()
        self._ask(self.sentinels[0], "SENTINEL", "FAILOVER", self.name)
        return self.wait_new_primary(old, timeout)

    def wait_new_primary(self, old: int, timeout: float = 20) -> int:
        """Wait until every live Sentinel names a primary other than ``old`` and it is one."""

        def moved() -> bool:
            named = {
                int(self._ask(s, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)[1])
                for s in self.sentinels
                if s.alive()
            }
            return len(named) == 1 and old not in named and self.role(next(iter(named))) == "master"

        self.wait(moved, timeout, f"a primary other than {old}")
        return self.primary_port()
