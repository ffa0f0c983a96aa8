"""The hub's own reader of subscriber messages: frames split anywhere, both RESP versions, a real Redis."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from app.delivery.redis_reader import RawPushReader, parse_messages


def bulk(b: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(b), b)


def frame(*items: bytes, push: bool = False) -> bytes:
    return (b">" if push else b"*") + b"%d\r\n" % len(items) + b"".join(items)


MESSAGES = [b"n\tu1\t1\t{}", b'n\tu2\t2\t{"x":"a\\r\\nb"}', b"", b"\r\n$3\r\n*9"]


@pytest.mark.parametrize("push", [False, True])
def test_every_split_point_gives_the_same_messages_in_order(push: bool) -> None:
    confirm = frame(bulk(b"subscribe"), bulk(b"events"), b":1\r\n", push=push)
    messages = b"".join(frame(bulk(b"message"), bulk(b"events"), bulk(m), push=push) for m in MESSAGES)
    stream = confirm + messages
    for cut in range(len(stream) + 1):
        buf = bytearray(stream[:cut])
        got, used = parse_messages(buf)
        del buf[:used]
        buf += stream[cut:]
        rest, used = parse_messages(buf)
        assert got + rest == MESSAGES and used == len(buf), cut


def test_anything_but_a_push_is_a_connection_error() -> None:
    with pytest.raises(redis.ConnectionError):
        parse_messages(bytearray(b"-ERR wrong\r\n"))
    with pytest.raises(redis.ConnectionError):
        parse_messages(bytearray(b"*1\r\n%1\r\n"))


def test_takes_over_a_real_subscription_including_what_redis_py_buffered(redis_srv: Any) -> None:
    client = redis.Redis.from_url(redis_srv.url)
    pubsub = client.pubsub()
    pubsub.subscribe("chan")
    for i in range(3):  # sent before the confirmation is read: redis-py may buffer them
        client.publish("chan", f"m{i}")
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    reader = RawPushReader.take_over(pubsub)
    assert reader is not None
    got: list[bytes] = []
    while len(got) < 3:
        got += reader.read(5.0)
    client.publish("chan", "later")
    while len(got) < 4:
        got += reader.read(5.0)
    assert got == [b"m0", b"m1", b"m2", b"later"]
    assert reader.read(0.05) == []
    pubsub.close()
    client.close()
