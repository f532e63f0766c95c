"""The connection's own RESP path, on a real server: a PING sent ahead of a command (so that
Redis writes the command's answer after what it publishes) never costs a caller its answer,
and a server that refuses the PING is simply no longer sent one.

How much earlier a grant message arrives that way is measured by `locks benchmark`, not here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis import exceptions as rex

from plugins.backends.redis.connection import Connection
from plugins.backends.redis.resp import Prefix
from sidecar.config import RedisSettings
from tests.redis_servers import RedisServer

PUBLISH = Prefix.of("PUBLISH")
INCR = Prefix.of("INCR")


@pytest.fixture
def server(tmp_path: Path) -> RedisServer:
    return RedisServer(tmp_path / "redis").start()


@pytest.fixture
async def conn(server: RedisServer) -> AsyncIterator[Connection]:
    made = Connection(RedisSettings(port=server.port, pool_size=1), "connection-test")
    yield made
    await made.close()
    server.stop()


async def test_the_answer_after_the_ping_is_the_commands_own(conn: Connection) -> None:
    async with conn.subscription("ch") as subscription:
        assert await conn.command(PUBLISH, "ch", "hello", answer_last=True) == 1
        async for message in subscription.messages():
            assert message == b"hello"
            break
    # One connection (pool-size 1): a PONG left unread would be the next caller's answer.
    for n in range(1, 4):
        assert await conn.command(INCR, "n", answer_last=n % 2 == 0) == n


async def test_an_error_answer_after_the_ping_is_raised_and_leaves_nothing_behind(
    conn: Connection,
) -> None:
    await conn.command(Prefix.of("SET"), "text", "not a number")
    with pytest.raises(rex.ResponseError, match="not an integer"):
        await conn.command(INCR, "text", answer_last=True)
    assert await conn.command(INCR, "n") == 1


async def test_a_user_the_acl_denies_ping_still_gets_its_answers(server: RedisServer) -> None:
    with server.client() as client:
        client.acl_setuser(
            "no-ping", enabled=True, passwords=["+secret"], keys=["*"], channels=["*"],
            commands=["+@all", "-ping"],
        )  # fmt: skip
    conn = Connection(
        RedisSettings(port=server.port, username="no-ping", password="secret", pool_size=1),
        "connection-test",
    )
    try:
        assert await conn.command(INCR, "n", answer_last=True) == 1
        assert await conn.command(INCR, "n", answer_last=True) == 2  # sent without a PING now
        assert await conn.command(INCR, "n") == 3
        with server.client() as client:
            denied = [e for e in client.acl_log() if e.get("object") == "ping"]
        assert [e["count"] for e in denied] == [1]  # refused once, then never sent again
    finally:
        await conn.close()
        server.stop()
