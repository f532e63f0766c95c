"""WebSockets through the sidecar (Atlantis's `/jobs/{id}/ws` log streams): every frame type
crosses both ways, close codes included, and either side closing closes the other."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType

from tests.fake_atlantis import FakeAtlantis
from tests.processes import free_port
from tests.proxy_stack import proxy_stack


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_text_binary_ping_and_pong_cross_in_both_directions(tmp_path: Path) -> None:
    async with (
        proxy_stack(tmp_path) as s,
        s.http.ws_connect(f"{s.url}/jobs/job-7/ws", autoping=False, protocols=("logs.v1",)) as ws,
    ):
        assert ws.protocol == "logs.v1"  # Atlantis's choice of subprotocol reaches the caller
        assert (await ws.receive_str()) == "job job-7 log stream"
        await ws.send_str("terraform plan: 3 to add")
        assert (await ws.receive_str()) == "terraform plan: 3 to add"
        await ws.send_bytes(bytes(range(256)))
        assert (await ws.receive_bytes()) == bytes(range(256))
        # The caller's ping is answered by Atlantis itself, payload intact.
        await ws.ping(b"are you there")
        pong = await ws.receive()
        assert (pong.type, pong.data) == (WSMsgType.PONG, b"are you there")
        # Atlantis's ping reaches the caller, and the caller's pong reaches Atlantis.
        await ws.send_str("ping from-atlantis")
        ping = await ws.receive()
        assert (ping.type, ping.data) == (WSMsgType.PING, b"from-atlantis")
        await ws.pong(b"from-atlantis")
        await until(lambda: s.fake.ws_pongs == [b"from-atlantis"])


async def test_atlantis_closing_closes_the_caller_with_its_code_and_reason(tmp_path: Path) -> None:
    async with (
        proxy_stack(tmp_path) as s,
        s.http.ws_connect(f"{s.url}/jobs/job-8/ws", autoclose=False) as ws,
    ):
        await ws.receive_str()
        await ws.send_str("close 4003 job finished")
        closing = await ws.receive()
        assert (closing.type, closing.data, closing.extra) == (
            WSMsgType.CLOSE,
            4003,
            "job finished",
        )
        await ws.close()


async def test_caller_closing_closes_atlantis_with_its_code(tmp_path: Path) -> None:
    async with proxy_stack(tmp_path) as s:
        async with s.http.ws_connect(f"{s.url}/jobs/job-9/ws") as ws:
            await ws.receive_str()
            await ws.close(code=4001, message=b"tab closed")
        await until(lambda: s.fake.ws_closed_by_client == [4001])
        assert ws.close_code == 4001  # Atlantis answered the close with the same code


async def test_an_idle_log_stream_outlives_the_read_timeout(tmp_path: Path) -> None:
    async with (
        proxy_stack(tmp_path, proxy__read_timeout=0.3) as s,
        s.http.ws_connect(f"{s.url}/jobs/job-10/ws") as ws,
    ):
        await ws.receive_str()
        await asyncio.sleep(1.0)
        await ws.send_str("still here")
        assert (await ws.receive_str()) == "still here"


async def test_an_upgrade_atlantis_refuses_gets_atlantis_status(tmp_path: Path) -> None:
    fake = FakeAtlantis(basic_auth=("alice", "s3cr3t"))
    async with proxy_stack(tmp_path, fake=fake) as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await s.http.ws_connect(f"{s.url}/jobs/job-11/ws")
        assert refused.value.status == 401
        assert refused.value.headers is not None
        assert refused.value.headers["WWW-Authenticate"].startswith("Basic realm=")
        async with s.http.ws_connect(
            f"{s.url}/jobs/job-11/ws", headers={"Authorization": "Basic YWxpY2U6czNjcjN0"}
        ) as ws:
            assert (await ws.receive_str()) == "job job-11 log stream"


async def test_an_upgrade_to_an_unreachable_atlantis_gets_502(tmp_path: Path) -> None:
    async with proxy_stack(tmp_path, upstream=f"http://127.0.0.1:{free_port()}") as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await s.http.ws_connect(f"{s.url}/jobs/job-12/ws")
    assert refused.value.status == 502
