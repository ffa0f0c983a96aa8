"""Where Redis connections come from: the one place that knows ``REDIS_MODE``.

``standalone``: the server at ``REDIS_URL``. ``sentinel``: redis-py's Sentinel client
asks the Sentinels (``REDIS_SENTINELS``) for the primary of ``REDIS_SENTINEL_MASTER``
each time it opens a connection, so after a failover every new connection reaches the
new primary. A connection still open to the old one finds out on its next command:

- the old primary, demoted to a replica, answers a write ``READONLY``; redis-py's
  ``SentinelManagedConnection`` then drops the connection and raises ``ConnectionError``,
  which the command client retries once (its ``Retry(NoBackoff(), 1)``, and the publish
  script's own retry), on a connection to the primary the Sentinels name now;
- an old primary fenced off by ``min-replicas-to-write`` (its replicas left it for the
  new primary) answers ``NOREPLICAS``: handled the same way here;
- the Sentinels demote the old primary with ``CLIENT KILL TYPE normal`` and ``pubsub``,
  so its subscribers see the connection end and reconnect (the hub then replays).

``cluster``: redis-py's ``RedisCluster`` on the seed nodes named in ``REDIS_URL``
(comma-separated). It learns the slot map from them, sends each command to the master of
its key's slot, and on ``MOVED`` (a slot moved, a master replaced by its replica) or
``ASK`` (a slot being migrated) refreshes the map and sends the command again. Each node
gets its own capped pool of command connections. Pub/sub is sharded there (SPUBLISH /
SSUBSCRIBE: a message goes to the subscribers of its channel's slot on the master serving
it, never over the cluster bus to every node), so the hub opens one subscriber connection
to each master (``subscriber(node=...)``) and learns which master serves a slot from the
command client's slot map (``app/delivery/hub.py``).

Both kinds of client come from here: the worker's capped command pool
(``app/extensions.py``) and the hub's subscriber connection (``app/delivery/hub.py``).
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

from app.config import Config


class PrimaryConnection(SentinelManagedConnection):
    """A connection to whatever the Sentinels name the primary now.

    redis-py 8.1 asks the Sentinels only in ``connect()``; a command sent on a dropped
    connection (the retry after READONLY, a health-check PING) reconnects through
    ``connect_check_health`` to the address it used last, the demoted primary, and fails
    again (redis/redis-py#3874). Here every reconnect goes through ``connect()``. A
    ``NOREPLICAS`` refusal is taken for "not the primary any more" as READONLY is.
    """

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._sock:
            self.connect()
        super().send_packed_command(command, check_health)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except redis.ResponseError as exc:
            if not str(exc).startswith("NOREPLICAS"):
                raise
            self.disconnect()
            raise redis.ConnectionError(f"the primary refuses writes: {exc}") from None


class SentinelBlockingPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """redis-py's Sentinel pool on the blocking free list: capped, callers wait their turn."""


class RedisConnector:
    """Builds the command client and the subscriber clients for the configured mode."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.mode = config.REDIS_MODE
        self.sentinel: Sentinel | None = None
        if self.mode == "sentinel":
            self.sentinel = Sentinel(
                config.sentinel_addresses(),
                sentinel_kwargs={
                    "password": config.REDIS_SENTINEL_PASSWORD or None,
                    "socket_timeout": min(config.REDIS_SOCKET_TIMEOUT, 2.0),
                    "socket_connect_timeout": min(config.REDIS_SOCKET_TIMEOUT, 1.0),
                    # one Sentinel that does not answer: ask the next one, no backoff
                    "retry": Retry(NoBackoff(), 0),
                },
            )

    def command_client(self, **options: Any) -> Any:
        """A client on a blocking pool (``max_connections``, ``queue_class``, ... in ``options``);
        on a cluster one such pool per node."""
        if self.mode == "cluster":
            options.pop("health_check_interval", None)  # not a cluster client option
            # redis-py builds each node's pool from connection_pool_class only when the
            # client is given a URL: the first seed's
            return RedisCluster(
                url=self.config.REDIS_URL.split(",")[0].strip(),
                startup_nodes=self.seeds(),
                connection_pool_class=redis.BlockingConnectionPool,
                password=self.config.REDIS_PASSWORD or None,
                **options,
            )
        if self.sentinel is None:
            return redis.Redis(
                connection_pool=redis.BlockingConnectionPool.from_url(self.config.REDIS_URL, **options)
            )
        return self._primary(SentinelBlockingPool, options)

    def seeds(self) -> list[ClusterNode]:
        return [ClusterNode(host, port) for host, port in self.config.cluster_seeds()]

    def subscriber(self, node: tuple[str, int] | None = None, **options: Any) -> redis.Redis:
        """A client of its own for one subscriber connection, made on its first use; on a
        cluster, to the master ``node``."""
        if self.mode == "cluster":
            assert node is not None, "a cluster subscriber is opened to one master"
            host, port = node
            return redis.Redis(host=host, port=port, password=self.config.REDIS_PASSWORD or None, **options)
        if self.sentinel is None:
            return redis.Redis.from_url(self.config.REDIS_URL, **options)
        return self._primary(SentinelConnectionPool, options)

    def _primary(self, pool_class: type[SentinelConnectionPool], options: dict[str, Any]) -> redis.Redis:
        assert self.sentinel is not None
        return self.sentinel.master_for(
            self.config.REDIS_SENTINEL_MASTER,
            connection_pool_class=pool_class,
            connection_class=PrimaryConnection,
            password=self.config.REDIS_PASSWORD or None,
            **options,
        )

    def describe(self, client: Any) -> dict[str, Any]:
        """The mode; in sentinel mode the primary ``client`` last connected to, in cluster
        mode the masters its slot map names."""
        info: dict[str, Any] = {"redis_mode": self.mode}
        if self.mode == "cluster":
            info["redis_masters"] = sorted(node.name for node in client.get_primaries())
            return info
        address = getattr(client.connection_pool, "master_address", None)
        if address:
            info["redis_primary"] = f"{address[0]}:{address[1]}"
        return info
