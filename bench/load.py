"""One load-generator process (asyncio), driven by JSON-line commands on stdin.

Streams use lean protocol clients (``leansse.py``, ``leanws.py``) and the paced and
throughput POSTs a lean HTTP client (``rawhttp.py``), so the generator's CPU stays small
next to the server's on a shared machine; the few batch POSTs use aiohttp.

``bench/run.py`` starts several of these so no process holds more than ~10,000 sockets
(the open-file limit is 20,000 per process) and so the load runs on its own CPU budget,
apart from the server. Every command gets exactly one JSON line back on stdout.

Notifications carry ``data = {"p": phase, "k": marker, "t": monotonic_ns at send}`` (to
the Node.js peer, whose POST body is only ``{userId, message}``: that JSON as ``message``);
CLOCK_MONOTONIC is system-wide on Linux, so receipt time minus ``t`` is the delivery
latency even though sender and receiver are different processes.

A receipt is timed when this process's event loop gets to it, so every latency figure is
only as good as the loop's promptness: ``LagProbe`` sleeps 10 ms in a loop and records how
late it wakes; ``lag`` reports its p50/p99/max since the last ``lag`` with ``reset``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import sys
import time
from collections import deque
from typing import Any

import aiohttp
import leansio
import leansse
import leanws
import orjson
import rawhttp
from itsdangerous import URLSafeSerializer

TOKEN_SALT = "subscriber-token"  # app/access/tokens.py
CONNECT_HOLD = 30.0
NODE_BATCH_CLIENTS = 16  # the Node.js peer's "batch": concurrent single POSTs
POST_PATHS = {"ours": "/api/notifications", "peer": "/publish", "node": "/notifications"}


def post_request(target: str, url: str, key: str, user: str, message: str, data: Any = None) -> bytes:
    """One single-user POST as ``target`` takes it: ours, Flask-SSE's ``/publish`` (which
    reads ``data``) or the Node.js peer's ``{userId, message}`` (the markers in ``message``)."""
    if target == "node":
        body: dict[str, Any] = {"userId": user, "message": orjson.dumps(data).decode() if data else message}
    else:
        body = {"user_id": user, "message": message, **({"data": data} if data is not None else {})}
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    return rawhttp.request_bytes(url, POST_PATHS[target], orjson.dumps(body), headers)


class LagProbe:
    """How late this process's event loop wakes from a ``every`` sleep (µs samples).

    Where the lag's p99 is a fair share of a latency p99, that latency is the load
    generator's, not the server's (bench/README.md: "The load generator's loop lag")."""

    def __init__(self, every: float = 0.01) -> None:
        self.every = every
        self.samples: deque[int] = deque(maxlen=200_000)  # half an hour at 100 a second
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            asleep = time.monotonic()
            await asyncio.sleep(self.every)
            self.samples.append(int((time.monotonic() - asleep - self.every) * 1e6))

    def summary(self, reset: bool = False) -> dict[str, float | int | None]:
        s = sorted(self.samples)
        if reset:
            self.samples.clear()
        if not s:
            return {"p50_ms": None, "p99_ms": None, "max_ms": None, "samples": 0}

        def at(fraction: float) -> float:
            return round(max(s[min(int(len(s) * fraction), len(s) - 1)], 0) / 1000, 3)

        return {"p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0), "samples": len(s)}


class Conn:
    """One stream client: which user it follows and which markers it has received."""

    __slots__ = ("user", "seen", "task", "open", "closed", "close_code", "error", "acks", "client", "token",
                 "connection")  # fmt: skip

    def __init__(self, user: str) -> None:
        self.user = user
        self.acks: list[str] = []  # ids received since this client's last receipt
        self.client: Any = None
        self.token = ""
        self.connection = ""  # an SSE stream's id (its ``connected`` event)
        self.seen: dict[tuple[str, int], int] = {}
        self.task: asyncio.Task[None] | None = None
        self.open = False
        self.closed = False
        self.close_code: int | None = None
        self.error = ""


class Load:
    def __init__(self) -> None:
        self.conns: list[Conn] = []
        self.latency_us: dict[str, list[int]] = {}
        # (phase, marker) -> [receipts, sent_ns, first_ns, last_ns]
        self.markers: dict[tuple[str, int], list[int]] = {}
        self.mode = "ours-sse"
        self.ack = False  # clients acknowledge what arrived, as notify.js does (once a second)
        self.ack_task: asyncio.Task[None] | None = None
        self.ack_stats = {"frames": 0, "posts": 0, "ids": 0, "failed": 0}

    # -- receipt ----------------------------------------------------------------------
    def received(self, conn: Conn, payload: bytes) -> None:
        now = time.monotonic_ns()
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if self.mode == "ours-ws":
            if doc.get("type") != "notification":
                return
            doc = doc["notification"]
        elif self.mode == "node-ws":  # ["notify", message]: the message is the markers' JSON
            if not isinstance(doc, list) or len(doc) < 2 or doc[0] != "notify" or not isinstance(doc[1], str):
                return
            try:
                doc = orjson.loads(doc[1])
            except orjson.JSONDecodeError:
                return
        elif "connection" in doc:
            conn.connection = doc["connection"]
            return
        if self.ack and "id" in doc:
            conn.acks.append(doc["id"])
        data = doc if self.mode in ("peer-sse", "node-ws") else doc.get("data")
        if not isinstance(data, dict) or "k" not in data:
            return
        key = (data["p"], data["k"])
        conn.seen[key] = conn.seen.get(key, 0) + 1
        mark = self.markers.get(key)
        if mark is None:
            self.markers[key] = [1, data["t"], now, now]
        else:
            mark[0] += 1
            mark[3] = now
        self.latency_us.setdefault(data["p"], []).append((now - data["t"]) // 1000)

    # -- streams ----------------------------------------------------------------------
    async def sse(self, conn: Conn, url: str, sem: asyncio.Semaphore, hold: float, source: str) -> None:
        client = None
        try:
            async with sem:
                client = await leansse.SSEClient.connect(
                    url, lambda payload: self.received(conn, payload), source
                )
                conn.client = client
                await asyncio.wait({asyncio.ensure_future(client.head_seen.wait())}, timeout=hold)
            await client.head_seen.wait()
            if client.status != 200:
                conn.error = f"HTTP {client.status}" if client.status else "closed before a response"
                return
            conn.open = True
            await client.closed
        except (OSError, ValueError) as exc:
            conn.error = conn.error or _why(exc)
        finally:
            if client is not None:
                client.close()
            conn.closed = True

    async def ws(
        self, conn: Conn, url: str, sem: asyncio.Semaphore, cls: type[leanws.WSClient], source: str
    ) -> None:
        """A WebSocket (``cls``: ours, or Socket.IO's), open once ready to receive."""
        client = None
        try:
            async with sem:
                client = await cls.connect(url, lambda payload: self.received(conn, payload), source)
                conn.client = client
                await client.ready.wait()
            if client.status != 101:
                conn.error = f"HTTP {client.status}" if client.status else "closed before a response"
                return
            if client.closed.done():
                conn.error = "closed before it was ready"
                return
            conn.open = True
            await client.closed
            conn.close_code = client.close_code
        except (OSError, ValueError) as exc:
            conn.error = _why(exc)
        finally:
            if client is not None:
                client.close()
            conn.closed = True

    async def open(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Open ``per_user`` streams for each user; returns once all are open or failed.

        ``sources``: the loopback addresses to connect from, client i from ``sources[i % n]``
        (default: the kernel's choice, 127.0.0.1)."""
        self.mode = cmd["mode"]
        self.ack = bool(cmd.get("ack"))
        if self.ack and self.ack_task is None:
            self.ack_task = asyncio.create_task(self.ack_loop(cmd["url"]))
        signer = URLSafeSerializer(cmd.get("secret", "x"), salt=TOKEN_SALT)
        exp = int(time.time()) + 7200
        sem = asyncio.Semaphore(cmd.get("concurrency", 100))
        base, started = cmd["url"], time.monotonic()
        ws_base = base.replace("http", "ws", 1)
        sources = cmd.get("sources") or [""]
        new: list[Conn] = []
        for user in cmd["users"]:
            token = signer.dumps({"u": user, "exp": exp})
            for _ in range(cmd["per_user"]):
                conn = Conn(user)
                conn.token = token
                src = sources[len(new) % len(sources)]
                if self.mode == "peer-sse":
                    coro = self.sse(conn, f"{base}/stream?channel={user}", sem, 0.02, src)
                elif self.mode == "ours-sse":
                    coro = self.sse(conn, f"{base}/stream?token={token}", sem, CONNECT_HOLD, src)
                elif self.mode == "node-ws":
                    query = f"EIO=4&transport=websocket&userId={user}"
                    coro = self.ws(conn, f"{ws_base}/socket.io/?{query}", sem, leansio.SIOClient, src)
                else:
                    coro = self.ws(conn, f"{ws_base}/ws?token={token}", sem, leanws.WSClient, src)
                conn.task = asyncio.create_task(coro)
                new.append(conn)
        self.conns.extend(new)
        deadline = time.monotonic() + cmd.get("timeout", 120)
        while time.monotonic() < deadline:
            pending = sum(1 for c in new if not c.open and not c.closed)
            if pending == 0 or self.mode == "peer-sse":
                break
            await asyncio.sleep(0.05)
        if self.mode == "peer-sse":  # its headers come with the first event: wait for the requests
            await asyncio.sleep(min(2.0, 0.0005 * len(new)))
        return {
            "opened": sum(1 for c in new if c.open),
            "failed": sum(1 for c in new if c.closed and not c.open),
            "errors": sorted({c.error for c in new if c.error})[:5],
            "seconds": round(time.monotonic() - started, 3),
        }

    async def ack_loop(self, url: str, every: float = 1.0, posters: int = 8) -> None:
        """Once a second, each client acknowledges what arrived: a frame on its WebSocket,
        or one ``POST /api/me/ack`` per SSE stream (``posters`` keep-alive connections)."""
        pool = [rawhttp.Connection(url) for _ in range(posters)]
        while True:
            await asyncio.sleep(every)
            due = [c for c in self.conns if c.acks and c.open and not c.closed]
            posts = []
            for conn in due:
                ids, conn.acks = conn.acks[:1000], conn.acks[1000:]
                self.ack_stats["ids"] += len(ids)
                if self.mode == "ours-ws":
                    frame = orjson.dumps({"type": "ack", "ids": ids})
                    conn.client.transport.write(leanws.masked_frame(leanws.TEXT, frame))
                    self.ack_stats["frames"] += 1
                else:
                    body = orjson.dumps(
                        {"ids": ids, **({"connection": conn.connection} if conn.connection else {})}
                    )
                    headers = {"Authorization": f"Bearer {conn.token}", "Content-Type": "application/json"}
                    posts.append(rawhttp.request_bytes(url, "/api/me/ack", body, headers))

            async def send(http: rawhttp.Connection, requests: list[bytes]) -> None:
                for request in requests:
                    try:
                        status, _ = await http.send(request)
                        self.ack_stats["posts" if status == 200 else "failed"] += 1
                    except OSError:
                        self.ack_stats["failed"] += 1

            await asyncio.gather(*(send(http, posts[i::posters]) for i, http in enumerate(pool)))

    def count(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """How many live clients have received at least one marker of ``phase``."""
        phase = cmd["phase"]
        got = sum(1 for c in self.conns if any(k[0] == phase for k in c.seen))
        return {"clients": len(self.conns), "live": sum(1 for c in self.conns if not c.closed), "got": got}

    def report(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Latency samples and exactly-once counts for ``phase`` (marker k goes to user k % U)."""
        phase, n_posts, users = cmd["phase"], cmd.get("n_posts", 0), cmd.get("users", [])
        index = {u: i for i, u in enumerate(users)}
        lost = dup = stray = 0
        for conn in self.conns:
            mine = {k: n for (p, k), n in conn.seen.items() if p == phase}
            if users:
                i = index.get(conn.user)
                expected = range(i, n_posts, len(users)) if i is not None else range(0)
                lost += sum(1 for k in expected if k not in mine)
                dup += sum(mine[k] - 1 for k in expected if mine.get(k, 0) > 1)
                stray += sum(n for k, n in mine.items() if k not in expected)
            else:
                lost += sum(1 for k in cmd.get("markers", []) if k not in mine)
                dup += sum(n - 1 for n in mine.values() if n > 1)
        markers = {str(k): v for (p, k), v in self.markers.items() if p == phase}
        return {
            "latency_us": self.latency_us.get(phase, []),
            "lost": lost,
            "duplicates": dup,
            "stray": stray,
            "markers": markers,
            "clients": len(self.conns),
            "closed": sum(1 for c in self.conns if c.closed),
            "close_codes": sorted({c.close_code for c in self.conns if c.close_code is not None}),
            "acks": dict(self.ack_stats),
        }

    def reset(self) -> dict[str, Any]:
        self.latency_us.clear()
        self.markers.clear()
        for conn in self.conns:
            conn.seen.clear()
        return {}

    async def close(self) -> dict[str, Any]:
        for conn in self.conns:
            if conn.task is not None:
                conn.task.cancel()
        await asyncio.gather(*(c.task for c in self.conns if c.task), return_exceptions=True)
        self.conns.clear()
        return {}

    # -- posting ----------------------------------------------------------------------
    async def post_rate(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """POST ``count`` single-user notifications at ``rate``/s (open loop); marker k -> user k % U."""
        users, rate, count, phase = cmd["users"], cmd["rate"], cmd["count"], cmd["phase"]
        target, key = cmd.get("target", "ours"), cmd.get("key", "")
        times: list[float] = []
        errors: dict[str, int] = {}
        idle: list[tuple[float, rawhttp.Connection]] = []  # (idle since, keep-alive connection)
        slots = asyncio.Semaphore(64)  # at most 64 in use

        def take() -> rawhttp.Connection:
            """The most recently used connection, unless the server may have closed it:
            gunicorn's keep-alive timeout is 2 s, and a POST on a closed one would be lost."""
            while idle:
                since, conn = idle.pop()
                if time.monotonic() - since < 1.0 and not conn.server_closed():
                    return conn
                conn.close()
            return rawhttp.Connection(cmd["url"])

        async def one(k: int) -> None:
            data = {"p": phase, "k": k, "t": time.monotonic_ns()}
            request = post_request(target, cmd["url"], key, users[k % len(users)], "bench", data)
            t0 = time.monotonic()
            async with slots:
                conn = take()
                try:
                    status, _ = await conn.send(request)
                    idle.append((time.monotonic(), conn))
                    if status not in (200, 201):
                        errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
                except OSError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            times.append(time.monotonic() - t0)

        start, tasks = time.monotonic(), []
        deadline = start + count / rate + 60
        for k in range(count):
            delay = start + k / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(k)))
        await asyncio.wait(tasks, timeout=max(deadline - time.monotonic(), 1))
        for _, conn in idle:
            conn.close()
        return {"sent": count, "errors": errors, "post_ms": _pcts(times), "seconds": time.monotonic() - start}

    async def post_batch(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """One POST naming many users (ours: ``user_ids``; the peer publishes per channel);
        the Node.js peer has no bulk POST: one per user, over ``NODE_BATCH_CLIENTS`` connections."""
        target = cmd.get("target", "ours")
        ks = cmd.get("ks", [cmd.get("k")])
        if target == "node":
            return await self.post_each(cmd["url"], cmd["user_ids"], cmd["phase"], ks)
        headers = {"Authorization": f"Bearer {cmd.get('key', '')}", "Content-Type": "application/json"}
        url, results = cmd["url"] + POST_PATHS[target], []
        async with aiohttp.ClientSession() as session:
            starts = range(0, len(cmd["user_ids"]), 1000)
            for k, chunk_start in [(k, i) for k in ks for i in starts]:
                chunk = cmd["user_ids"][chunk_start : chunk_start + 1000]
                data = {"p": cmd["phase"], "k": k, "t": time.monotonic_ns()}
                body = {"user_ids": chunk, "message": "bench", "data": data}
                t0 = time.monotonic()
                async with session.post(url, data=orjson.dumps(body), headers=headers) as r:
                    await r.read()
                    results.append((r.status, time.monotonic() - t0))
        return {"statuses": sorted({s for s, _ in results}), "seconds": sum(t for _, t in results)}

    async def post_each(self, url: str, users: list[str], phase: str, ks: list[int]) -> dict[str, Any]:
        """A POST per user and marker to the Node.js peer, ``NODE_BATCH_CLIENTS`` at a time."""
        todo = [(k, user) for k in ks for user in users]
        statuses: set[int] = set()
        started = time.monotonic()

        async def worker(share: list[tuple[int, str]]) -> None:
            http = rawhttp.Connection(url)
            try:
                for k, user in share:
                    data = {"p": phase, "k": k, "t": time.monotonic_ns()}
                    try:
                        status, _ = await http.send(post_request("node", url, "", user, "bench", data))
                    except OSError:
                        status = 0
                    statuses.add(status)
            finally:
                http.close()

        await asyncio.gather(*(worker(todo[i::NODE_BATCH_CLIENTS]) for i in range(NODE_BATCH_CLIENTS)))
        return {"statuses": sorted(statuses), "seconds": time.monotonic() - started}

    async def throughput(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """``clients`` keep-alive clients POSTing single-user notifications for ``seconds``,
        client w to ``urls[w % len(urls)]`` (the Node.js peer: both instances in turn).

        Lean client (``bench/rawhttp.py``): pre-encoded requests, so the measure spends the
        machine's CPU on the server, not on building requests.
        """
        target, urls, key, times, errors = cmd.get("target", "ours"), cmd["urls"], cmd["key"], [], [0]
        requests = {url: [post_request(target, url, key, u, "throughput") for u in cmd["users"]]
                    for url in urls}  # fmt: skip
        stop = time.monotonic() + cmd["seconds"]
        conns = [rawhttp.Connection(urls[w % len(urls)]) for w in range(cmd["clients"])]

        async def worker(w: int) -> None:
            mine, i = requests[urls[w % len(urls)]], 0
            while time.monotonic() < stop:
                request = mine[(w + i) % len(mine)]
                i += 1
                t0 = time.monotonic()
                try:
                    status, _ = await conns[w].send(request)
                except OSError:
                    errors[0] += 1
                    continue
                if status != 201:
                    errors[0] += 1
                    continue
                times.append(time.monotonic() - t0)

        start = time.monotonic()
        try:
            workers = asyncio.gather(*(worker(w) for w in range(cmd["clients"])))
            await asyncio.wait_for(workers, cmd["seconds"] + 30)
        finally:
            elapsed = time.monotonic() - start
            for conn in conns:
                conn.close()
        return {
            "ok": len(times),
            "errors": errors[0],
            "per_second": len(times) / elapsed,
            "post_ms": _pcts(times),
        }


def _why(exc: BaseException) -> str:
    """An error's name and errno name (e.g. ``OSError EADDRNOTAVAIL``: a source address's ports ran out)."""
    code = getattr(exc, "errno", None)
    return f"{type(exc).__name__} {errno.errorcode.get(code, code)}" if code else type(exc).__name__


def _pcts(times: list[float]) -> dict[str, float]:
    if not times:
        return {}
    s = sorted(times)
    return {q: round(s[min(int(len(s) * f), len(s) - 1)] * 1000, 2) for q, f in (("p50", 0.5), ("p99", 0.99))}


async def main() -> None:
    load, probe = Load(), LagProbe()
    probe.start()  # runs as long as the process
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    handlers = {
        "open": load.open,
        "post_rate": load.post_rate,
        "post_batch": load.post_batch,
        "throughput": load.throughput,
        "close": lambda cmd: load.close(),
    }
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = orjson.loads(line)
        name = cmd["cmd"]
        try:
            if name == "exit":
                await load.close()
                reply: dict[str, Any] = {}
            elif name in handlers:
                reply = await handlers[name](cmd)
            elif name == "count":
                reply = load.count(cmd)
            elif name == "report":
                reply = load.report(cmd)
            elif name == "reset":
                reply = load.reset()
            elif name == "lag":
                reply = probe.summary(reset=bool(cmd.get("reset")))
            else:
                reply = {"error": f"unknown command {name}"}
        except Exception as exc:  # report, don't die: the orchestrator decides
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.buffer.write(orjson.dumps(reply) + b"\n")
        sys.stdout.buffer.flush()
        if name == "exit":
            break


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
