"""VAPID keys (RFC 8292): the P-256 pair that signs every push, as py-vapid handles them.

Keys travel as base64url without padding: the private key as its 32-byte scalar, the
public key as the 65-byte uncompressed point browsers take as ``applicationServerKey``.
Outside production, without ``PUSH_VAPID_PRIVATE_KEY``, the pair is derived from
``SECRET_KEY``: every worker and restart then signs with the same key, so a development
browser's subscription keeps working (production refuses to start without a real key).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid

from app.config import DEV_SECRET_KEY, Config

DEV_SUBJECT = "mailto:notify@localhost"
_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=")
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


class VapidKeyError(ValueError):
    """A configured key that cannot be used; the message names the setting."""


@dataclass(frozen=True)
class VapidKeys:
    signer: Vapid
    public_key: str  # base64url, what clients subscribe with
    subject: str


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    """Strict base64url (padding optional); ValueError for anything else."""
    if not text or any(c not in _B64URL for c in text):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError("not base64url") from exc


def public_key_of(private: ec.EllipticCurvePrivateKey) -> str:
    point = private.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return b64url(point)


def private_key_text(private: ec.EllipticCurvePrivateKey) -> str:
    return b64url(private.private_numbers().private_value.to_bytes(32, "big"))


def generate() -> tuple[str, str]:
    """A new pair: (private, public), both base64url."""
    private = ec.generate_private_key(ec.SECP256R1())
    return private_key_text(private), public_key_of(private)


def _derived(secret: str) -> ec.EllipticCurvePrivateKey:
    digest = hashlib.sha256(b"notify-vapid\0" + secret.encode()).digest()
    return ec.derive_private_key(int.from_bytes(digest, "big") % (_P256_ORDER - 1) + 1, ec.SECP256R1())


def load_keys(config: Config) -> VapidKeys:
    """The configured pair, checked: the public key (if given) must match the private one."""
    if config.PUSH_VAPID_PRIVATE_KEY:
        try:
            raw = b64url_decode(config.PUSH_VAPID_PRIVATE_KEY.strip())
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise VapidKeyError("PUSH_VAPID_PRIVATE_KEY must be a base64url 32-byte P-256 key (push keys)")
        try:
            private = ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
        except ValueError:
            raise VapidKeyError("PUSH_VAPID_PRIVATE_KEY is not a valid P-256 private key") from None
    else:
        private = _derived(config.SECRET_KEY or DEV_SECRET_KEY)
    public = public_key_of(private)
    if config.PUSH_VAPID_PUBLIC_KEY and config.PUSH_VAPID_PUBLIC_KEY.strip().rstrip("=") != public:
        raise VapidKeyError("PUSH_VAPID_PUBLIC_KEY does not belong to PUSH_VAPID_PRIVATE_KEY")
    return VapidKeys(Vapid(private), public, config.PUSH_VAPID_SUBJECT or DEV_SUBJECT)
