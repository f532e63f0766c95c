"""The Redis backend over TLS, against a real `redis-server` that only speaks TLS, with a CA and
certificate made for the test: verified with `tls-ca-file`, refused with the wrong CA (clearly,
as EL001), and accepted unverified only with `tls-insecure-skip-verify`."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plugins.backends.redis import RedisBackend
from plugins.overflow import RejectNewest
from sidecar.config import RedisSettings
from sidecar.engine.manager import EngineSettings, Granted, LockManager
from sidecar.engine.model import Owner
from sidecar.engine.ordering import Ordering
from sidecar.errors import Code, LockError
from sidecar.metrics.stats import EngineStats
from tests.redis_servers import Deployment, TlsFiles, tls_files, tls_standalone
from tests.test_backend_contract import take


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, TlsFiles]]:
    directory = tmp_path_factory.mktemp("tls")
    files = tls_files(directory / "certs")
    deployment = tls_standalone(directory / "redis", files)
    try:
        yield deployment, files
    finally:
        deployment.stop()


def settings(deployment: Deployment, **changes: Any) -> RedisSettings:
    return dataclasses.replace(
        RedisSettings(),
        host="127.0.0.1",
        port=deployment.redis_settings["port"],
        tls=True,
        key_prefix="tls-test:",
        dial_timeout=1.0,
        max_retries=1,
        **changes,
    )


def replica(backend: RedisBackend) -> LockManager:
    return LockManager(
        backend, EngineSettings(ordering=Ordering()), overflow=RejectNewest(), stats=EngineStats()
    )


async def test_tls_with_our_ca_carries_locks_and_handoffs_between_replicas(
    tls: tuple[Deployment, TlsFiles],
) -> None:
    deployment, files = tls
    backends = [RedisBackend(settings(deployment, tls_ca_file=str(files.ca))) for _ in range(2)]
    for backend in backends:
        await backend.start()
    try:
        first, second = (replica(b) for b in backends)
        await take(first, "k", "alice")
        request, wait = second.new_request(["k"], Owner("bob"), wait=10)
        waiter = asyncio.create_task(second.acquire(request, wait))
        await asyncio.sleep(0.2)
        await first.release("alice", ["k"])
        result = await asyncio.wait_for(waiter, 5)  # the grant came over TLS pub/sub
        assert isinstance(result, Granted) and result.grants[0].owner.id == "bob"
        assert backends[1].describe()["pubsub"] == "subscribed"
    finally:
        for backend in backends:
            await backend.close()


async def test_tls_with_the_wrong_ca_is_refused_with_EL001_naming_the_certificate(
    tls: tuple[Deployment, TlsFiles], tmp_path: Path
) -> None:
    deployment, _ = tls
    stranger = tls_files(tmp_path / "other", name="some-other-ca")
    backend = RedisBackend(settings(deployment, tls_ca_file=str(stranger.ca)))
    await backend.start()  # unreachable is not fatal at start-up; every call says why
    try:
        with pytest.raises(LockError) as refused:
            await backend.ping()
        assert refused.value.code is Code.BACKEND_UNAVAILABLE
        assert "certificate verify failed" in str(refused.value).lower()
    finally:
        await backend.close()


async def test_tls_without_verification_only_when_asked(
    tls: tuple[Deployment, TlsFiles],
) -> None:
    deployment, _ = tls
    backend = RedisBackend(settings(deployment, tls_insecure_skip_verify=True))
    await backend.start()
    try:
        await backend.ping()
        assert backend.describe()["pubsub"] == "subscribed"
    finally:
        await backend.close()
