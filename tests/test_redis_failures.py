"""The Redis backend when Redis fails: unreachable, down at start-up, restarted from its
append-only file, or refusing our password. Each test runs its own real `redis-server` so that
it can stop, kill and restart it; sidecars are real `serve` subprocesses where start-up matters.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from plugins.backends.redis import RedisBackend
from sidecar.api.app import create_app
from sidecar.config import RedisSettings, Settings
from sidecar.errors import Code, LockError
from sidecar.plugin.manager import Plugins
from sidecar.runtime import ConfigSource, Runtime
from tests.processes import Sidecar, free_port, running_sidecar
from tests.redis_servers import PASSWORD, RedisServer, sidecar_env, standalone
from tests.sidecar_http import API, call, wait_answering, wait_status

AiohttpClient = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


def redis_settings(port: int, **changes: Any) -> Settings:
    defaults: dict[str, Any] = {"dial_timeout": 1.0, "retry_delay": 0.1, "max_retries": 3}
    table = dataclasses.replace(
        RedisSettings(), port=port, key_prefix="failures:", **{**defaults, **changes}
    )
    return dataclasses.replace(Settings(), backend="redis", redis=table)


async def test_unreachable_redis_answers_EL001_within_the_retry_budget_and_recovers_by_itself(
    aiohttp_client: AiohttpClient,
    plugins: Plugins,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        settings = redis_settings(server.port)
        client = await aiohttp_client(
            create_app(Runtime.build(settings, plugins, ConfigSource(None, {})))
        )
        resp = await client.post(f"{API}/acquire", json={"key": "k", "owner": "a"})
        assert resp.status == 200

        server.stop()
        started = time.monotonic()
        resp = await client.post(f"{API}/acquire", json={"key": "j", "owner": "a", "wait": 30})
        elapsed = time.monotonic() - started
        body = await resp.json()
        assert (resp.status, body["code"]) == (503, "EL001")
        assert "unreachable after 4 attempts" in body["error"]
        # dial-timeout + the three retry delays (0.1 + 0.2 + 0.4 s), with room for a slow VM.
        assert elapsed < 1.0 + 0.7 + 1.0
        assert "connection retry 1/3" in caplog.text and "connection retry 3/3" in caplog.text
        resp = await client.get(f"{API}/health")
        report = await resp.json()
        assert resp.status == 503 and report["status"] == "unhealthy"
        assert "redis at 127.0.0.1:" in report["reasons"][0] and "EL001" in report["reasons"][0]

        server.start()  # same port; nothing restarted on our side
        deadline = time.monotonic() + 10
        while True:
            resp = await client.post(f"{API}/acquire", json={"key": "j", "owner": "a"})
            if resp.status == 200 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert resp.status == 200
        assert (await (await client.get(f"{API}/health")).json())["status"] == "healthy"
    finally:
        server.stop()


def test_sidecar_started_while_redis_is_down_serves_EL001_then_comes_up_with_redis(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis", port=free_port())  # not running yet
    env = {
        "ATLANTIS_ENHANCED_LOCKING_BACKEND": "redis",
        "ATLANTIS_ENHANCED_LOCKING_REDIS_PORT": str(server.port),
        "ATLANTIS_ENHANCED_LOCKING_REDIS_KEY_PREFIX": "startup:",
        "ATLANTIS_ENHANCED_LOCKING_REDIS_DIAL_TIMEOUT": "1s",
    }
    sidecar = Sidecar(["--data-dir", str(tmp_path / "data")], tmp_path / "sidecar.log", env)
    try:
        wait_answering(sidecar)
        report = wait_status(sidecar, "unhealthy")
        assert "unreachable" in report["backend"]["error"]
        status, body = call(sidecar.url, "POST", "/acquire", {"key": "k", "owner": "a"})
        assert (status, body["code"]) == (503, "EL001")
        output = sidecar.output()
        assert "connection retry" in output and "[EL001]" in output

        server.start()
        wait_status(sidecar, "healthy")
        status, body = call(sidecar.url, "POST", "/acquire", {"key": "k", "owner": "a"})
        assert status == 200 and body["locks"][0]["token"] == 1
    finally:
        sidecar.stop()
        server.stop()


def test_wrong_password_stops_start_up_with_a_clear_authentication_error(tmp_path: Path) -> None:
    deployment = standalone(tmp_path / "redis", password=PASSWORD)
    wrong = "not-the-password-9f3e"
    try:
        env = sidecar_env(deployment, "auth:", REDIS_PASSWORD=wrong)
        sidecar = Sidecar(["--data-dir", str(tmp_path / "data")], tmp_path / "sidecar.log", env)
        try:
            code = sidecar.proc.wait(30)
        finally:
            sidecar.stop()
        output = sidecar.output()
        assert code == 1
        assert "redis authentication failed at 127.0.0.1:" in output
        assert "check redis.username and redis.password" in output
        assert wrong not in output and PASSWORD not in output

        env = sidecar_env(deployment, "auth:", REDIS_PASSWORD=PASSWORD)
        with running_sidecar(["--data-dir", str(tmp_path / "ok")], tmp_path / "ok.log", env) as ok:
            status, _ = call(ok.url, "POST", "/acquire", {"key": "k", "owner": "a"})
            assert status == 200
            assert PASSWORD not in ok.output()
    finally:
        deployment.stop()


async def test_missing_password_is_reported_as_an_authentication_failure(tmp_path: Path) -> None:
    deployment = standalone(tmp_path / "redis", password=PASSWORD)
    try:
        backend = RedisBackend(redis_settings(deployment.servers[0].port).redis)
        with pytest.raises(LockError) as refused:
            await backend.start()
        await backend.close()
        assert refused.value.code is Code.BACKEND_UNAVAILABLE
        assert "redis authentication failed" in str(refused.value)
        assert "without a password" in str(refused.value)
    finally:
        deployment.stop()


def test_redis_restarted_from_its_append_only_file_keeps_grants_queue_and_tokens(
    tmp_path: Path,
) -> None:
    server = RedisServer(
        tmp_path / "redis", settings={"appendonly": "yes", "appendfsync": "always"}
    ).start()
    env = {
        "ATLANTIS_ENHANCED_LOCKING_BACKEND": "redis",
        "ATLANTIS_ENHANCED_LOCKING_REDIS_PORT": str(server.port),
        "ATLANTIS_ENHANCED_LOCKING_REDIS_KEY_PREFIX": "aof:",
        "ATLANTIS_ENHANCED_LOCKING_REDIS_DIAL_TIMEOUT": "1s",
    }
    try:
        with running_sidecar(
            ["--data-dir", str(tmp_path / "data")], tmp_path / "sidecar.log", env
        ) as sidecar:
            for owner in ("o1", "o2", "o3"):
                status, body = call(sidecar.url, "POST", "/acquire", {"key": "k", "owner": owner})
                assert status == 200
                if owner != "o3":
                    call(sidecar.url, "POST", "/release", {"key": "k", "owner": owner})
            assert body["locks"][0]["token"] == 3
            status, queued = call(
                sidecar.url,
                "POST",
                "/acquire",
                {
                    "key": "k",
                    "owner": "waiter",
                    "wait": 0,
                    "stay_queued": True,
                    "queue_timeout": "1h",
                },
            )
            assert status == 409 and queued["queued"] is True

            server.kill9()  # no shutdown save: only what appendfsync always wrote survives
            status, body = call(sidecar.url, "POST", "/acquire", {"key": "j", "owner": "x"})
            assert (status, body["code"]) == (503, "EL001")
            server.start()

            wait_status(sidecar, "healthy")
            _, lock = call(sidecar.url, "GET", "/lock?key=k")
            assert lock["lock"]["owner"]["id"] == "o3" and lock["lock"]["token"] == 3
            assert [w["owner"]["id"] for w in lock["waiting"]] == ["waiter"]
            status, released = call(sidecar.url, "POST", "/release", {"key": "k", "owner": "o3"})
            assert status == 200
            assert released["handed_off"][0]["locks"][0]["token"] == 4  # never back to 1
            _, state = call(sidecar.url, "GET", f"/requests/{queued['request_id']}")
            assert state["state"] == "granted" and state["outcome"]["tokens"] == {"k": 4}
    finally:
        server.stop()


async def test_a_redis_that_stops_answering_is_cut_off_at_the_attempt_bound(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis").start()
    settings = redis_settings(
        server.port, dial_timeout=0.2, read_timeout=0.3, write_timeout=0.2, max_retries=0
    )
    backend = RedisBackend(settings.redis)
    await backend.start()
    try:
        with server.client() as admin:
            admin.execute_command("CLIENT", "PAUSE", 3000, "ALL")  # accepts, never answers
        started = time.monotonic()
        with pytest.raises(LockError) as hung:
            await backend.ping()
        elapsed = time.monotonic() - started
        assert (
            "no answer within 0.7s" in str(hung.value)
            and hung.value.code is Code.BACKEND_UNAVAILABLE
        )
        assert 0.6 < elapsed < 0.7 + 1.0  # the bound, plus the watchdog's tick and a slow VM
        with server.client() as admin:
            admin.execute_command("CLIENT", "UNPAUSE")
        await backend.ping()  # and it works again at once
    finally:
        await backend.close()
        server.stop()
