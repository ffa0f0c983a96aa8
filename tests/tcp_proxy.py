"""A loopback TCP proxy for fault tests: it can silently freeze Redis subscriber connections.

A frozen connection stays open but the proxy drops everything the server sends on it:
exactly the "subscription silently stops delivering while the connection looks healthy"
failure (seen after Sentinel failovers), which only a loop-back probe can detect. A
``subscriber_delay`` holds back what subscribers send (their SUBSCRIBE commands) that long.
"""

from __future__ import annotations

import contextlib

import gevent
from gevent import socket
from gevent.server import StreamServer


class _Link:
    def __init__(self) -> None:
        self.subscriber = False
        self.frozen = False


class TcpProxy:
    def __init__(self, upstream_port: int, subscriber_delay: float = 0.0) -> None:
        self.upstream_port = upstream_port
        self.subscriber_delay = subscriber_delay
        self.links: list[_Link] = []
        self.server = StreamServer(("127.0.0.1", 0), self._handle)

    def start(self) -> TcpProxy:
        self.server.start()
        return self

    @property
    def port(self) -> int:
        return self.server.server_port

    def freeze_subscribers(self) -> int:
        """Silently drop all server-to-client data on current subscriber connections."""
        frozen = 0
        for link in self.links:
            if link.subscriber and not link.frozen:
                link.frozen = True
                frozen += 1
        return frozen

    def stop(self) -> None:
        self.server.stop(timeout=1)

    def _handle(self, client: socket.socket, _addr: object) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        link = _Link()
        self.links.append(link)

        def pump(src: socket.socket, dst: socket.socket, from_server: bool) -> None:
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    if not from_server and b"SUBSCRIBE" in data.upper():
                        link.subscriber = True
                    if from_server and link.frozen:
                        continue
                    if not from_server and link.subscriber and self.subscriber_delay:
                        gevent.sleep(self.subscriber_delay)
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    with contextlib.suppress(OSError):
                        s.close()

        gevent.joinall(
            [gevent.spawn(pump, client, upstream, False), gevent.spawn(pump, upstream, client, True)]
        )
