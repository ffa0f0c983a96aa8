"""Test helpers: the per-test stack, live gunicorn instances, SSE and WebSocket clients."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import gevent
import orjson
import pytest
import requests
import websocket
from bson import ObjectId
from gevent.event import Event as Wakeup

from app.store.models import MARKERS, notifications_collection, outbox_marker
from app.store.serialization import new_document
from tools.devservers import find_free_port

ROOT = Path(__file__).resolve().parent.parent
REAL_USERS = {"user_id": {"$lt": "~"}}  # every notification, no outbox marker (app/store/models.py)


def require_tool(present: bool, what: str) -> None:
    """Skip a test whose outside tool is missing on a developer's machine; fail under CI.

    ``python3 dev.py test`` installs these tools (as root), so in CI a missing one is a
    broken setup, never a reason to pass quietly.
    """
    if present:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing (python3 dev.py test installs it as root)")
    pytest.skip(f"{what} is missing: run `python3 dev.py test` as root to install it")


@dataclass
class ExternalServer:
    """A server we were given (TEST_REDIS_URL / TEST_MONGO_URI): never killed by tests."""

    url: str


@dataclass
class Stack:
    redis_url: str
    mongo_uri: str
    prefix: str
    api_key: str
    secret: str

    def config_values(self) -> dict[str, Any]:
        return {
            "APP_ENV": "testing",
            "MONGO_URI": self.mongo_uri,
            "REDIS_URL": self.redis_url,
            "KEY_PREFIX": self.prefix,
            "API_KEYS": (self.api_key,),
            "SECRET_KEY": self.secret,
            "MONGO_TIMEOUT_MS": 2000,
            "REDIS_SOCKET_TIMEOUT": 2.0,
        }

    def env(self) -> dict[str, str]:
        values = self.config_values()
        values["API_KEYS"] = ",".join(values["API_KEYS"])
        return {k: str(v) for k, v in values.items()}


class LiveServer:
    """``gunicorn -c gunicorn.conf.py wsgi:app`` as a child process.

    ``host``: the address it listens on; ``prefix``: what runs it (``ip netns exec NS``
    for an instance in a network namespace of its own, tools/netns.py)."""

    def __init__(
        self,
        stack: Stack,
        log_path: Path,
        workers: int,
        env: dict[str, Any],
        host: str = "127.0.0.1",
        prefix: tuple[str, ...] = (),
    ) -> None:
        self.stack = stack
        self.log_path = log_path
        self.workers = workers
        self.extra_env = {k: str(v) for k, v in env.items()}
        self.host = host
        self.prefix = prefix
        self.port = find_free_port()
        self.url = f"http://{host}:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> LiveServer:
        # Its metrics in this test's folder: gunicorn's own temporary one is removed only by
        # a master that exits, and teardown kills.
        metrics = self.log_path.parent / f"metrics-{self.port}"
        env = {**os.environ, **self.stack.env(), "PROMETHEUS_MULTIPROC_DIR": str(metrics), **self.extra_env}
        env.update(PORT=str(self.port), HOST=self.host, WEB_CONCURRENCY=str(self.workers))
        env.setdefault("PUBLIC_URL", self.url)  # browsers on this origin may open streams
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop() or kill()
        self.process = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{self.log()}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            gevent.sleep(0.02)
        raise RuntimeError(f"gunicorn did not answer in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def worker_pids(self) -> list[int]:
        assert self.process is not None
        out = subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True, check=False
        ).stdout
        return [int(p) for p in out.split()]

    def kill(self) -> None:
        """SIGKILL the whole instance (master and workers), like a crashed machine."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        if getattr(self, "_log", None):
            self._log.close()

    def stop(self, sig: int = signal.SIGQUIT) -> None:
        """Signal the whole instance and wait for it to exit.

        SIGQUIT by default: gunicorn's quick shutdown, which does not wait out idle
        keep-alive connections as SIGTERM's graceful one does (0.4 s against 3.3 s). It is
        sent again every half second: a worker the master is still starting (after a test
        killed one) ignores signals until it has installed its handlers, and the master
        would wait ``graceful_timeout`` for it. Tests of the shutdown itself pass SIGTERM
        (as a deploy does) or SIGINT (as Ctrl-C does), sent once.
        """
        if self.process is not None and self.process.poll() is None:
            deadline = time.monotonic() + 15
            os.killpg(self.process.pid, sig)
            while True:
                try:
                    self.process.wait(0.5 if sig == signal.SIGQUIT else 15)
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() > deadline:
                        os.killpg(self.process.pid, signal.SIGKILL)
                        self.process.wait(5)
                        break
                    if sig == signal.SIGQUIT:
                        os.killpg(self.process.pid, sig)
        if getattr(self, "_log", None):
            self._log.close()

    # -- API helpers -------------------------------------------------------------------
    def post(self, path: str, body: Any, **headers: str) -> requests.Response:
        return requests.post(
            self.url + path,
            data=orjson.dumps(body),
            headers={
                "Authorization": f"Bearer {self.stack.api_key}",
                "Content-Type": "application/json",
                **headers,
            },
            timeout=10,
        )

    def call(self, method: str, path: str, body: Any = None) -> requests.Response:
        """``path`` with the service's API key, a JSON ``body`` if given."""
        headers = {"Authorization": f"Bearer {self.stack.api_key}"}
        return requests.request(method, self.url + path, json=body, headers=headers, timeout=10)

    def online(self, user_id: str) -> bool:
        """Whether presence has an open stream of ``user_id`` on any instance."""
        return self.call("GET", f"/api/users/{user_id}/presence").json()["online"]

    def notify(self, user_id: str, message: str) -> dict[str, Any]:
        resp = self.post("/api/notifications", {"user_id": user_id, "message": message})
        assert resp.status_code == 201, resp.text
        return resp.json()

    def token(self, user_id: str, ttl: int = 600) -> str:
        resp = self.post("/api/tokens", {"user_id": user_id, "ttl_seconds": ttl})
        assert resp.status_code == 201, resp.text
        return resp.json()["token"]


class StreamClient:
    """Collects events from a stream in a greenlet; tests wait on conditions, not sleeps."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.changed = Wakeup()
        self.closed = Wakeup()
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.greenlet: gevent.Greenlet | None = None

    def _add(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.changed.set()

    def notifications(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "notification"]

    def messages(self) -> list[str]:
        return [e["notification"]["message"] for e in self.notifications()]

    def last_id(self) -> str | None:
        ids = [e["id"] for e in self.events if e.get("id") is not None]
        return str(ids[-1]) if ids else None

    def wait_for(self, predicate, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"condition not met in {timeout}s; events: {self.events[-10:]}")
            self.changed.clear()
            if predicate():
                return
            self.changed.wait(min(remaining, 0.5))

    def wait_count(self, n: int, timeout: float = 10.0) -> None:
        self.wait_for(lambda: len(self.notifications()) >= n, timeout)


def sse_lines(response: requests.Response) -> Any:
    """The lines of an event stream as they arrive, without their ends.

    Not ``iter_lines``: with a delimiter it yields an extra empty line whenever a chunk
    ends on one, which splits an event in two (its ``id:`` from its ``data:``)."""
    pending = b""
    for chunk in response.iter_content(chunk_size=None):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r").decode()
    if pending:
        yield pending.decode()


class SSEClient(StreamClient):
    def __init__(
        self, url: str, token: str, last_event_id: str | None = None, via_query: bool = True
    ) -> None:
        super().__init__()
        params = {"token": token} if via_query else {}
        headers = {} if via_query else {"Authorization": f"Bearer {token}"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self.response = requests.get(url + "/stream", params=params, headers=headers, stream=True, timeout=30)
        self.status = self.response.status_code
        self.raw_frames: list[str] = []
        if self.status == 200:
            self.greenlet = gevent.spawn(self._read)
        else:
            self.closed.set()

    def _read(self) -> None:
        fields: dict[str, Any] = {}
        data: list[str] = []
        try:
            for line in sse_lines(self.response):
                if line == "":
                    if data or fields:
                        self._frame(fields, data)
                    fields, data = {}, []
                elif line.startswith(":"):
                    continue
                else:
                    name, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if name == "data":
                        data.append(value)
                    else:
                        fields[name] = value
        except (requests.RequestException, OSError, AttributeError):
            pass
        finally:
            self.closed.set()
            self.changed.set()

    def _frame(self, fields: dict[str, Any], data: list[str]) -> None:
        kind = fields.get("event", "message")
        self.raw_frames.append(kind)
        if kind == "retry" or (not data and "retry" in fields):
            return
        payload = orjson.loads("\n".join(data)) if data else None
        event: dict[str, Any] = {"type": kind, "id": fields.get("id"), "data": payload}
        if kind == "notification":
            event["notification"] = payload
        self._add(event)

    def close(self) -> None:
        if self.greenlet is not None:
            self.greenlet.kill()
        self.response.close()


class WSClient(StreamClient):
    def __init__(
        self, url: str, token: str, last_event_id: str | None = None, origin: str | None = None
    ) -> None:
        super().__init__()
        ws_url = url.replace("http://", "ws://") + f"/ws?token={token}"
        if last_event_id is not None:
            ws_url += f"&last_event_id={last_event_id}"
        options: dict[str, Any] = {"timeout": 30}
        if origin is not None:
            options["origin"] = origin
        else:
            options["suppress_origin"] = True
        self.ws = websocket.create_connection(ws_url, **options)
        self.greenlet = gevent.spawn(self._read)

    def _read(self) -> None:
        try:
            while True:
                opcode, data = self.ws.recv_data(control_frame=False)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    if len(data) >= 2:
                        self.close_code = int.from_bytes(data[:2], "big")
                        self.close_reason = data[2:].decode(errors="replace")
                    break
                frame = orjson.loads(data)
                if frame["type"] == "notification":
                    frame["id"] = str(frame["id"])
                self._add(frame)
        except (websocket.WebSocketException, OSError):
            pass
        finally:
            self.closed.set()
            self.changed.set()

    def send(self, frame: Any) -> None:
        self.ws.send(frame if isinstance(frame, str) else orjson.dumps(frame).decode())

    def close(self) -> None:
        with contextlib.suppress(websocket.WebSocketException, OSError):
            self.ws.close()
        if self.greenlet is not None:
            self.greenlet.kill(block=False)


def backdated(user: str, days_ago: float, message: str) -> dict[str, Any]:
    """A notification as if created ``days_ago``: its ObjectId carries the same time."""
    when = datetime.now(timezone.utc) - timedelta(days=days_ago)
    doc = new_document(user, message, "", "", {}, when)
    doc["_id"] = ObjectId(int(when.timestamp()).to_bytes(4, "big") + os.urandom(8))
    return doc


def store_unpublished(docs: list[dict[str, Any]], lease_seconds: float = 10.0) -> ObjectId:
    """Store ``docs`` as one batch the way the batcher does (marker first), unpublished;
    a negative ``lease_seconds`` makes the batch due for the relay at once. The marker's id."""
    lease_until_us = time.time_ns() // 1000 + int(lease_seconds * 1_000_000)
    marker = outbox_marker([d["_id"] for d in docs], lease_until_us)
    notifications_collection().insert_many([marker, *docs])
    return marker["_id"]


def docs_for(user: str, n: int) -> list[dict[str, Any]]:
    now = datetime.now(timezone.utc)
    return [new_document(user, f"m{i}", "", "", {}, now) for i in range(n)]


def marked(coll: Any, user: str) -> list[dict[str, Any]]:
    """The outbox markers of batches holding any of ``user``'s notifications."""
    ids = [d["_id"] for d in coll.find({"user_id": user}, {"_id": 1})]
    return list(coll.find({**MARKERS, "ids": {"$in": ids}}))


def winning_stages(plan: dict[str, Any]) -> list[str]:
    """The stages of a query plan (``explain()``'s ``winningPlan``), outermost first."""
    stages = []
    while plan:
        stages.append(plan["stage"])
        plan = plan.get("inputStage") or {}
    return stages


def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    with gevent.Timeout(timeout):
        while not predicate():
            gevent.sleep(0.01)


@contextlib.contextmanager
def frozen(server: Any) -> Any:
    """``server`` (a ManagedServer) stopped with SIGSTOP, as a hung machine; SIGCONT on exit.

    Its sockets stay open and the kernel keeps accepting and buffering: clients see no
    error, only no answer."""
    assert server.process is not None and server.process.poll() is None
    os.killpg(server.process.pid, signal.SIGSTOP)
    try:
        yield server
    finally:
        os.killpg(server.process.pid, signal.SIGCONT)
