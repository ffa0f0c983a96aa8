"""A local Redis Cluster (3 masters, 3 replicas) as child processes, for cluster tests.

Every node runs on a free port below 55000 on 127.0.0.1 (its cluster bus is port +
10000) and is killed by ``stop``. ``redis-cli --cluster create`` assigns the slots and
pairs each master with a replica; the waits poll ``CLUSTER INFO`` against a deadline.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import redis

from tools.devservers import (
    ManagedServer,
    ServerGroup,
    free_port_below,
    port_in_use,
    redis_server,
    redis_server_binary,
)

BUS_OFFSET = 10000  # a node's cluster bus listens on its port + 10000


def _node_ports(count: int) -> list[int]:
    """Distinct free ports whose bus ports are free too, all below 55000."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port_below(55000 - BUS_OFFSET)
        taken = {p + d for p in ports for d in (0, BUS_OFFSET, -BUS_OFFSET)}
        if port not in taken and not port_in_use(port + BUS_OFFSET):
            ports.append(port)
    return ports


class ClusterGroup(ServerGroup):
    def __init__(self, masters: int = 3, node_timeout_ms: int = 1000) -> None:
        ports = _node_ports(2 * masters)
        extra = (
            "--cluster-enabled", "yes",
            "--cluster-node-timeout", str(node_timeout_ms),
            "--cluster-require-full-coverage", "no",
        )  # fmt: skip
        self.masters = masters
        self.nodes: dict[int, ManagedServer] = {}
        for port in ports:
            node = redis_server(port, extra=extra)
            node.argv += ["--cluster-config-file", str(node.data_dir / "nodes.conf")]
            self.nodes[port] = node

    @property
    def url(self) -> str:
        """``REDIS_URL`` for this cluster: every node as a seed."""
        return ",".join(f"redis://127.0.0.1:{port}" for port in self.nodes)

    def start(self, timeout: float = 30) -> ClusterGroup:
        try:
            for node in self.nodes.values():
                node.start(timeout)
            cli = shutil.which("redis-cli") or redis_server_binary().replace("redis-server", "redis-cli")
            addresses = [f"127.0.0.1:{port}" for port in self.nodes]
            subprocess.run(
                [cli, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=timeout,
            )
            self.wait(self._ready, timeout, "cluster state ok")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes.values():
            node.kill()

    # -- what the nodes say ----------------------------------------------------------
    def ask(self, port: int, *command: Any) -> Any:
        with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as r:
            return r.execute_command(*command)

    def _ready(self) -> bool:
        live = [port for port, node in self.nodes.items() if node.alive()]
        if not all(self.ask(port, "CLUSTER", "INFO").startswith("cluster_state:ok") for port in live):
            return False
        roles = [self.ask(port, "ROLE") for port in live]
        replicas_in_sync = all(r[0] != "slave" or r[3] == "connected" for r in roles)
        return replicas_in_sync and sum(r[0] == "master" for r in roles) == self.masters

    def role(self, port: int) -> str:
        try:
            return str(self.ask(port, "ROLE")[0])
        except redis.RedisError:
            return "down"

    def master_ports(self) -> list[int]:
        return [port for port, node in self.nodes.items() if node.alive() and self.role(port) == "master"]

    def master_of(self, key: str) -> int:
        """The port of the master serving ``key``'s slot now."""
        return self.master_of_slot(self.ask(self.master_ports()[0], "CLUSTER", "KEYSLOT", key))

    def master_of_slot(self, slot: int, asking: int | None = None) -> int:
        """The port of the master serving ``slot``, as the node on ``asking`` sees it."""
        for start, end, (_host, port, *_), *_ in self.ask(
            asking or self.master_ports()[0], "CLUSTER", "SLOTS"
        ):
            if start <= slot <= end:
                return int(port)
        raise RuntimeError(f"no master serves slot {slot}")

    def users_per_master(self, prefix: str, per_master: int = 2) -> list[str]:
        """User ids whose keys (``<prefix>seq:{<user>}``) live on each master, ``per_master`` of each."""
        found: dict[int, list[str]] = {port: [] for port in self.master_ports()}
        i = 0
        while any(len(users) < per_master for users in found.values()):
            user = f"u{i}"
            port = self.master_of(f"{prefix}seq:{{{user}}}")
            if len(found[port]) < per_master:
                found[port].append(user)
            i += 1
        return [user for users in found.values() for user in users]

    def subscribers(self, port: int, name_prefix: str) -> list[dict[str, Any]]:
        """The connections on ``port`` whose client name starts with ``name_prefix``."""
        with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as r:
            return [c for c in r.client_list() if c["name"].startswith(name_prefix)]

    def shard_subscribers(self, port: int, channel: str) -> int:
        """How many connections on ``port`` subscribe the shard channel ``channel``."""
        return int(self.ask(port, "PUBSUB", "SHARDNUMSUB", channel)[1])

    # -- slot moves ------------------------------------------------------------------
    def move_slot(self, slot: int, target: int, timeout: float = 20) -> None:
        """Migrate ``slot`` with its keys to the master on ``target`` (as
        ``redis-cli --cluster reshard`` does) and wait until every live node agrees."""
        source = self.master_of_slot(slot)
        ids = {port: self.ask(port, "CLUSTER", "MYID") for port in self.master_ports()}
        self.ask(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
        self.ask(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
        while keys := self.ask(source, "CLUSTER", "GETKEYSINSLOT", slot, 100):
            self.ask(source, "MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        for port in [target, source, *(p for p in ids if p not in (source, target))]:
            self.ask(port, "CLUSTER", "SETSLOT", slot, "NODE", ids[target])
        live = [p for p, node in self.nodes.items() if node.alive()]
        self.wait(lambda: all(self.master_of_slot(slot, p) == target for p in live), timeout, "slot moved")

    # -- faults ----------------------------------------------------------------------
    def kill_master(self, port: int, timeout: float = 20) -> int:
        """Kill the master on ``port``; the port of its replica once promoted and the
        cluster serves every slot again."""
        mine = [
            p for p in self.nodes if p != port and self.ask(p, "ROLE")[:3] == ["slave", "127.0.0.1", port]
        ]
        self.nodes[port].kill()
        promoted = lambda: any(self.role(p) == "master" for p in mine) and self._ready_without()  # noqa: E731
        self.wait(promoted, timeout, f"a replica of {port} promoted")
        return next(p for p in mine if self.role(p) == "master")

    def _ready_without(self) -> bool:
        live = [p for p, node in self.nodes.items() if node.alive()]
        return all(self.ask(p, "CLUSTER", "INFO").startswith("cluster_state:ok") for p in live)
