"""The subscribed connection's frame reader: whole frames only, both RESP versions, and anything
unexpected is a broken connection (the subscriber then reconnects) rather than a guess.

The handoff tests in test_redis_backend.py run it against real servers; these feed it bytes
exactly as Redis splits them, and as it never would.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis import exceptions as rex

from plugins.backends.redis.connection import Connection
from plugins.backends.redis.pushes import MAX_PENDING, Frames, Subscription
from sidecar.config import RedisSettings
from tests.redis_servers import RedisServer

RESP2_MESSAGE = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n"
RESP3_MESSAGE = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n"


def frames_of(*chunks: bytes) -> list[list[bytes | int]]:
    frames, out = Frames(), []
    for chunk in chunks:
        frames.feed(chunk)
        while (frame := frames.take()) is not None:
            out.append(frame)
    return out


@pytest.mark.parametrize("message", [RESP2_MESSAGE, RESP3_MESSAGE])
def test_a_message_is_read_in_either_resp_version(message: bytes) -> None:
    assert frames_of(message) == [[b"message", b"ch", b"hello"]]


def test_a_frame_split_at_every_byte_comes_out_once_and_whole() -> None:
    data = RESP3_MESSAGE + b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n" + RESP2_MESSAGE
    assert frames_of(*(data[i : i + 1] for i in range(len(data)))) == [
        [b"message", b"ch", b"hello"],
        [b"subscribe", b"ch", 1],
        [b"message", b"ch", b"hello"],
    ]


def test_payloads_with_crlf_and_binary_bytes_are_kept_exactly() -> None:
    payload = b'{"a":"\r\n"}\x00\xff'
    frame = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$%d\r\n%b\r\n" % (len(payload), payload)
    assert frames_of(frame[:20], frame[20:]) == [[b"message", b"ch", payload]]


def test_an_error_line_raises_the_servers_message() -> None:
    with pytest.raises(rex.ResponseError, match="NOPERM this user has no permissions"):
        frames_of(b"-NOPERM this user has no permissions\r\n")


@pytest.mark.parametrize(
    "data",
    [b"+OK\r\n", b"*1\r\n+OK\r\n", b"*1\r\n%1\r\n"],
    ids=["simple string", "simple string element", "map element"],
)
def test_a_reply_a_subscribed_connection_never_gets_is_a_broken_connection(data: bytes) -> None:
    with pytest.raises(rex.ConnectionError, match="unexpected"):
        frames_of(data)


def test_more_than_the_bound_without_a_whole_frame_is_a_broken_connection() -> None:
    frames = Frames()
    frames.feed(b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$99999999\r\n")
    with pytest.raises(rex.ConnectionError, match="without a whole message"):
        frames.feed(b"x" * MAX_PENDING)


async def test_a_malformed_length_ends_the_subscription_as_a_broken_connection() -> None:
    stream = asyncio.StreamReader()
    stream.feed_data(b"*x\r\n")
    with pytest.raises(rex.ConnectionError, match="malformed"):
        await Subscription(stream, "ch").confirmed()


async def test_a_closed_connection_ends_the_messages() -> None:
    stream = asyncio.StreamReader()
    stream.feed_data(RESP2_MESSAGE)
    stream.feed_eof()
    got: list[bytes] = []

    async def read_all() -> None:
        async for message in Subscription(stream, "ch").messages():
            got.append(message)

    with pytest.raises(rex.ConnectionError, match="closed"):
        await read_all()
    assert got == [b"hello"]


async def test_messages_published_on_a_real_server_arrive_whole_and_in_order(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis").start()
    conn = Connection(RedisSettings(port=server.port), "pushes-test")
    try:
        async with conn.subscription("ch") as subscription:
            with server.client() as client:
                for n in range(200):  # many in one read, some split across reads
                    client.publish("ch", f"m{n}" + "x" * (n * 97))
                client.publish("other", "not ours")
                client.publish("ch", "last")
            got = []
            async for message in subscription.messages():
                got.append(message.decode())
                if message == b"last":
                    break
        assert got == [f"m{n}" + "x" * (n * 97) for n in range(200)] + ["last"]
    finally:
        await conn.close()
        server.stop()

