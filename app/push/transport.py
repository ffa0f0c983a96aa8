"""The HTTP session pushes go out on: no redirects, no proxies from the environment, and
a connection refused when the address it reached is not public.

The peer address is checked on the connected socket, so whatever DNS answered between
the endpoint check and the connect (a rebinding), an inside address is never sent a
request. A redirect is not followed: a push service answers 201, and a 3xx from an
endpoint is an error like any other.
"""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from app.push.endpoints import EndpointRefused, allowed_address


def _checked(sock: Any) -> Any:
    peer = sock.getpeername()[0]
    if not allowed_address(peer):
        sock.close()
        raise EndpointRefused(f"connected to a non-public address ({peer})")
    return sock


class _PublicHTTPConnection(HTTPConnection):
    def _new_conn(self) -> Any:
        return _checked(super()._new_conn())


class _PublicHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> Any:
        return _checked(super()._new_conn())


class _PublicHTTPPool(HTTPConnectionPool):
    ConnectionCls = _PublicHTTPConnection


class _PublicHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _PublicHTTPSConnection


class PublicOnlyAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _PublicHTTPPool, "https": _PublicHTTPSPool}


class PushSession(requests.Session):
    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs["allow_redirects"] = False
        return super().request(*args, **kwargs)


def push_session(allow_local: bool, pool_size: int) -> PushSession:
    session = PushSession()
    session.trust_env = False  # no HTTPS_PROXY: the address checked is the one connected to
    adapter = (
        HTTPAdapter(pool_maxsize=pool_size) if allow_local else PublicOnlyAdapter(pool_maxsize=pool_size)
    )
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session
