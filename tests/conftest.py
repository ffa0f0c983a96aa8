"""Test bootstrap: gevent first, then real servers started for the session.

Redis and the MongoDB-wire server are real processes on free ports (or the ones named by
``TEST_REDIS_URL`` / ``TEST_MONGO_URI``). Every test gets its own MongoDB database and
Redis key prefix, so tests never see each other's data, even on shared servers.
"""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from flask import Flask  # noqa: E402
from flask.testing import FlaskClient  # noqa: E402

from app import Config, create_app, stop_background  # noqa: E402
from app.store.indexes import create_indexes  # noqa: E402
from tests.support import ExternalServer, LiveServer, Stack  # noqa: E402
from tools.cluster_group import ClusterGroup  # noqa: E402
from tools.devservers import ManagedServer, mongo_server, redis_server  # noqa: E402

API_KEY = "test-api-key"
SECRET = "test-secret-key"
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


def _server(env: str, start: Callable[[], ManagedServer]) -> Iterator[Any]:
    url = os.environ.get(env)
    if url:
        yield ExternalServer(url)
        return
    server = start().start()
    try:
        yield server
    finally:
        server.kill()  # temporary data: a clean shutdown (2 s for SecantusDB) buys nothing


@pytest.fixture(scope="session")
def redis_srv() -> Iterator[Any]:
    yield from _server("TEST_REDIS_URL", redis_server)


@pytest.fixture(scope="session")
def mongo_srv() -> Iterator[Any]:
    yield from _server("TEST_MONGO_URI", mongo_server)


@pytest.fixture
def stack(redis_srv: Any, mongo_srv: Any) -> Stack:
    """Names for this test's isolated data: a MongoDB database and a Redis key prefix."""
    tag = uuid.uuid4().hex[:10]
    return Stack(
        redis_url=redis_srv.url,
        mongo_uri=mongo_srv.url.rstrip("/") + f"/t_{tag}",
        prefix=f"t{tag}:",
        api_key=API_KEY,
        secret=SECRET,
    )


@pytest.fixture
def make_app(stack: Stack) -> Iterator[Callable[..., Flask]]:
    apps: list[Flask] = []

    def factory(**overrides: Any) -> Flask:
        config = Config(**{**stack.config_values(), **overrides})
        app = create_app(config)
        with app.app_context():
            create_indexes()
        apps.append(app)
        return app

    yield factory
    for app in apps:
        stop_background(app)


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def live(stack: Stack, tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start gunicorn instances of the real app (``wsgi:app``) against this test's stack."""
    servers: list[LiveServer] = []

    def factory(
        workers: int = 1,
        on: Stack | None = None,
        host: str = "127.0.0.1",
        prefix: tuple[str, ...] = (),
        **env: Any,
    ) -> LiveServer:
        log = tmp_path / f"gunicorn-{len(servers)}.log"
        server = LiveServer(on or stack, log, workers, env, host, prefix)
        servers.append(server)
        return server.start()

    yield factory
    for server in servers:
        server.kill()  # the test is over: nothing of a shutdown is checked, so nothing is waited for


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[ClusterGroup]:
    """A local Redis Cluster (3 masters, 3 replicas), started by the first test that needs it."""
    with ClusterGroup() as started:
        yield started


@pytest.fixture(params=["standalone", "cluster"])
def redis_mode(request: pytest.FixtureRequest) -> dict[str, str]:
    """The settings that put a ``live`` server on the session's Redis, or on the cluster."""
    if request.param == "standalone":
        return {}
    return {"REDIS_MODE": "cluster", "REDIS_URL": request.getfixturevalue("redis_cluster").url}


@pytest.fixture
def own_redis() -> Iterator[ManagedServer]:
    """A Redis of this test's own, which it may kill and restart."""
    server = redis_server().start()
    yield server
    server.kill()  # its data dies with the test: no clean shutdown to wait for


@pytest.fixture
def own_mongo() -> Iterator[ManagedServer]:
    """A MongoDB-wire server of this test's own, which it may kill and restart."""
    server = mongo_server().start()
    yield server
    server.kill()  # its data dies with the test: SIGTERM would wait ~2 s for WiredTiger to close


@pytest.fixture
def stack_on(stack: Stack) -> Callable[..., Stack]:
    """This test's stack pointed at other servers (own_redis, own_mongo, a proxy)."""

    def build(redis_url: str | None = None, mongo_url: str | None = None) -> Stack:
        mongo_uri = (
            mongo_url.rstrip("/") + "/" + stack.mongo_uri.rsplit("/", 1)[1] if mongo_url else stack.mongo_uri
        )
        return replace(stack, redis_url=redis_url or stack.redis_url, mongo_uri=mongo_uri)

    return build


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
