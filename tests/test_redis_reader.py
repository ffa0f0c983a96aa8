"""The hub's own reader of subscriber frames: split anywhere, both RESP versions, a real Redis."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from app.delivery.redis_reader import ERROR, RawPushReader, parse_frames, write_command


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
    expected = [(b"subscribe", b"events", b"1")] + [(b"message", b"events", m) for m in MESSAGES]
    for cut in range(len(stream) + 1):
        buf = bytearray(stream[:cut])
        got, used = parse_frames(buf)
        del buf[:used]
        buf += stream[cut:]
        rest, used = parse_frames(buf)
        assert got + rest == expected and used == len(buf), cut


def test_sharded_frames_and_error_replies_are_frames_too() -> None:
    stream = (
        frame(bulk(b"ssubscribe"), bulk(b"u:{a}"), b":1\r\n", push=True)
        + b"-MOVED 15495 127.0.0.1:7002\r\n"
        + frame(bulk(b"smessage"), bulk(b"u:{a}"), bulk(b"n\ta\t1\t{}"))
        + frame(bulk(b"sunsubscribe"), bulk(b"u:{a}"), b":0\r\n")
    )
    assert parse_frames(bytearray(stream)) == (
        [
            (b"ssubscribe", b"u:{a}", b"1"),
            (ERROR, b"", b"MOVED 15495 127.0.0.1:7002"),
            (b"smessage", b"u:{a}", b"n\ta\t1\t{}"),
            (b"sunsubscribe", b"u:{a}", b"0"),
        ],
        len(stream),
    )


def test_anything_but_a_push_or_an_error_is_a_connection_error() -> None:
    with pytest.raises(redis.ConnectionError):
        parse_frames(bytearray(b"$3\r\nabc\r\n"))
    with pytest.raises(redis.ConnectionError):
        parse_frames(bytearray(b"*1\r\n%1\r\n"))


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
        got += [payload for _kind, _channel, payload in reader.read(5.0)]
    client.publish("chan", "later")
    while len(got) < 4:
        got += [payload for _kind, _channel, payload in reader.read(5.0)]
    assert got == [b"m0", b"m1", b"m2", b"later"]
    assert reader.read(0.05) == []
    write_command(pubsub, "SUBSCRIBE", "other", "third")  # on the socket the reader reads
    frames: list[tuple[bytes, bytes, bytes]] = []
    while len(frames) < 2:
        frames += reader.read(5.0)
    assert frames == [(b"subscribe", b"other", b"2"), (b"subscribe", b"third", b"3")]
    client.publish("third", "routed")
    assert reader.read(5.0) == [(b"message", b"third", b"routed")]
    pubsub.close()
    client.close()
