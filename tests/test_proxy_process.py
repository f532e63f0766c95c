"""The proxy in a real `atlantis-sidecar serve` process: memory stays bounded while 50 MiB pass
through it, and a shutdown lets proxied requests in flight finish."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.fake_atlantis import FakeAtlantis, blob_bytes
from tests.processes import Sidecar, running_sidecar

MIB = 1024 * 1024
SIZE = 50 * MIB


def status_kib(pid: int, field: str) -> int:
    """A `VmRSS`/`VmHWM` line of /proc/<pid>/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def reset_peak(pid: int) -> None:
    """Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0+), so the peak read
    afterwards is the peak of what follows, not of start-up."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def upload_chunks() -> Iterator[bytes]:
    return iter(blob_bytes(SIZE))


async def stream(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


@pytest.fixture
async def fake() -> AsyncIterator[FakeAtlantis]:
    atlantis = FakeAtlantis(webhook_secret="hook-secret")
    await atlantis.start()
    yield atlantis
    await atlantis.stop()


def serve_args(fake: FakeAtlantis, tmp_path: Path) -> list[str]:
    return ["--upstream", fake.url, "--backend", "memory", "--data-dir", str(tmp_path / "data")]


@pytest.mark.timeout(180)
async def test_50_mib_each_way_streams_through_with_sidecar_rss_growing_under_20_mib(
    fake: FakeAtlantis, tmp_path: Path
) -> None:
    mac = hmac.new(b"hook-secret", digestmod=hashlib.sha256)
    for chunk in upload_chunks():
        mac.update(chunk)
    signature = "sha256=" + mac.hexdigest()
    expected_sha = hashlib.sha256(b"".join(blob_bytes(SIZE))).hexdigest()

    with running_sidecar(serve_args(fake, tmp_path), tmp_path / "sidecar.log") as sidecar:
        pid = sidecar.proc.pid
        async with aiohttp.ClientSession(auto_decompress=False) as http:
            # Warm up every code path first, so the baseline includes them.
            async with http.get(f"{sidecar.url}/_test/blob?bytes={MIB}") as resp:
                await resp.read()
            async with http.post(f"{sidecar.url}/_test/echo/warm", data=b"x" * MIB) as resp:
                await resp.read()
            baseline = status_kib(pid, "VmRSS")
            reset_peak(pid)

            # Upload: a 50 MiB signed webhook, sent with its length, hashed by the fake as it
            # streams in. The signature verifies only if every byte arrived unchanged.
            async with http.post(
                f"{sidecar.url}/events",
                data=stream(upload_chunks()),
                headers={"X-Hub-Signature-256": signature, "Content-Length": str(SIZE)},
            ) as resp:
                assert resp.status == 200, await resp.text()
            # Download: 50 MiB from Atlantis, read slowly by a caller that hashes as it goes.
            digest = hashlib.sha256()
            received = 0
            async with http.get(f"{sidecar.url}/_test/blob?bytes={SIZE}") as resp:
                async for chunk in resp.content.iter_chunked(256 * 1024):
                    digest.update(chunk)
                    received += len(chunk)
                    await asyncio.sleep(0)  # a consumer slower than the producer
            peak = status_kib(pid, "VmHWM")
    assert fake.events[-1] == {"valid": True, "size": SIZE, "sha256": expected_sha}
    assert (received, digest.hexdigest()) == (SIZE, expected_sha)
    growth_mib = (peak - baseline) / 1024
    assert growth_mib < 20, f"sidecar RSS grew {growth_mib:.1f} MiB while 100 MiB went through"


async def test_shutdown_lets_proxied_requests_in_flight_finish(
    fake: FakeAtlantis, tmp_path: Path
) -> None:
    sidecar = Sidecar(serve_args(fake, tmp_path), tmp_path / "sidecar.log")
    try:
        sidecar.wait_healthy()
        async with aiohttp.ClientSession() as http:
            slow = asyncio.create_task(
                http.get(f"{sidecar.url}/_test/slow?seconds=1.5").__aenter__()
            )
            await asyncio.sleep(0.4)  # the request is inside the sidecar, waiting on Atlantis
            sidecar.proc.send_signal(signal.SIGTERM)
            resp = await slow
            assert (resp.status, await resp.text()) == (200, "slow\n")
            resp.release()
            with pytest.raises(aiohttp.ClientConnectionError):
                await http.get(f"{sidecar.url}/healthz")
        assert await asyncio.to_thread(sidecar.proc.wait, 15) == 0
    finally:
        sidecar.stop()


async def test_shutdown_closes_proxied_websockets_with_going_away(
    fake: FakeAtlantis, tmp_path: Path
) -> None:
    sidecar = Sidecar(serve_args(fake, tmp_path), tmp_path / "sidecar.log")
    try:
        sidecar.wait_healthy()
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"{sidecar.url}/jobs/job-1/ws", autoclose=False) as ws,
        ):
            assert (await ws.receive_str()) == "job job-1 log stream"
            stopped_at = asyncio.get_running_loop().time()
            sidecar.proc.send_signal(signal.SIGTERM)
            closing = await asyncio.wait_for(ws.receive(), 5)
            assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 1001)
            await ws.close()
        assert await asyncio.to_thread(sidecar.proc.wait, 15) == 0
        # An open log stream did not hold the shutdown up for its 10 s limit.
        assert asyncio.get_running_loop().time() - stopped_at < 5
    finally:
        sidecar.stop()


async def test_a_caller_hanging_up_mid_delete_leaves_atlantis_and_engine_in_step(
    fake: FakeAtlantis, tmp_path: Path
) -> None:
    lock = fake.add_lock("acme/infra", "modules/vpc", "default", "vpc", pull=7)
    fake.delays["/locks"] = 0.8  # Atlantis takes a while to discard the plan
    env = {"ATLANTIS_ENHANCED_LOCKING_MIGRATION_TRAFFIC_PERCENTAGE": "100"}
    with running_sidecar(serve_args(fake, tmp_path), tmp_path / "sidecar.log", env) as sidecar:
        api = f"{sidecar.url}/api/enhanced-locks"
        owner = {"repo": "acme/infra", "pull": 7, "user": "bob"}
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{api}/acquire", json={"key": "atlantis:" + lock.id, "owner": owner}
            ) as resp:
                assert resp.status == 200
            _, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
            target = "/locks?id=" + lock.id.replace("/", "%2F")
            writer.write(f"DELETE {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await writer.drain()
            await asyncio.sleep(0.3)  # the DELETE is at Atlantis now
            writer.close()  # the caller hangs up
            await asyncio.sleep(1.5)
            async with http.get(f"{api}/lock", params={"key": "atlantis:" + lock.id}) as resp:
                held = (await resp.json())["held"]
    assert lock.id not in fake.locks  # Atlantis deleted it...
    assert held is False  # ...and so did the engine: the change ran to its end
