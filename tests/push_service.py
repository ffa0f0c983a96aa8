"""A Web Push service inside the test: a gevent HTTP server on loopback that records what
the app sends, and a browser's side of a subscription (its P-256 key pair and auth secret)
to decrypt it (RFC 8291) and check its VAPID JWT (RFC 8292)."""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import http_ece
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from gevent.event import Event as Wakeup
from gevent.pywsgi import WSGIServer


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class PushService:
    """Answers each POST with the next of ``statuses`` (then 201)."""

    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    arrived: Wakeup = field(default_factory=Wakeup)

    def __post_init__(self) -> None:
        self.server = WSGIServer(("127.0.0.1", 0), self._app, log=None)
        self.server.start()
        self.origin = f"http://127.0.0.1:{self.server.server_port}"

    def _app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        for name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(name):
                headers[name.replace("_", "-").lower()] = environ[name]
        body = environ["wsgi.input"].read()
        self.received.append(Received(environ["PATH_INFO"], headers, body))
        self.arrived.set()
        status = self.statuses.pop(0) if self.statuses else 201
        start_response(f"{status} X", [("Content-Length", "0")])
        return [b""]

    def stop(self) -> None:
        self.server.stop()


class Browser:
    """The keys a browser makes for one push subscription."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)
        point = self.private.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self.subscription = {
            "endpoint": endpoint,
            "expirationTime": None,
            "keys": {"p256dh": b64url(point), "auth": b64url(self.auth)},
        }

    def decrypt(self, message: Received) -> dict[str, Any]:
        assert message.headers["content-encoding"] == "aes128gcm"
        plain = http_ece.decrypt(
            message.body, private_key=self.private, auth_secret=self.auth, version="aes128gcm"
        )
        return json.loads(plain)


def vapid_claims(message: Received, public_key: str) -> dict[str, Any]:
    """The JWT's claims, once its signature is checked with ``public_key`` (the app's)."""
    scheme, _, params = message.headers["authorization"].partition(" ")
    assert scheme == "vapid"
    parts = dict(p.split("=", 1) for p in params.split(","))
    assert parts["k"] == public_key
    head, claims, signature = parts["t"].split(".")
    assert json.loads(unb64url(head)) == {"typ": "JWT", "alg": "ES256"}
    raw = unb64url(signature)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(public_key))
    key.verify(der, f"{head}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))  # raises if forged
    decoded = json.loads(unb64url(claims))
    assert time.time() < decoded["exp"] <= time.time() + 24 * 3600
    return decoded
