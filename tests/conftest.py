"""Shared fixtures: real backends (memory, a real SQLite file, real Redis servers) behind a real
LockManager."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import Settings
from sidecar.engine.manager import LockManager
from sidecar.metrics.stats import EngineStats
from sidecar.plugin.manager import Plugins
from sidecar.runtime import engine_settings, overflow_policy
from tests import redis_servers
from tests.redis_servers import Deployment

# Each variant: a backend plugin name and the settings it runs with. "sqlite+group-commit" shares
# transactions between concurrent writes, and must keep every rule all the same.
BACKENDS: dict[str, dict[str, Any]] = {
    "memory": {"backend": "memory"},
    "sqlite": {"backend": "sqlite"},
    "sqlite+group-commit": {"backend": "sqlite", "batch_processing": True, "batch_size": 20},
    "redis": {"backend": "redis"},
    "redis-cluster": {"backend": "redis"},
    "redis-sentinel": {"backend": "redis"},
}
# The Redis variants and the session fixture that starts the servers each one talks to.
REDIS_DEPLOYMENTS = {
    "redis": "redis_standalone",
    "redis-cluster": "redis_cluster",
    "redis-sentinel": "redis_sentinel",
}
_running: dict[str, Deployment] = {}


class Clock:
    """Time the tests move by hand, so aging, leases and deadlines are exact."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def settings_with(base: Settings, **changes: Any) -> Settings:
    """Replace nested settings with dotted-underscore names: queue_config__max_queue_size=3."""
    for name, value in changes.items():
        if "__" in name:
            table, leaf = name.split("__", 1)
            base = dataclasses.replace(
                base, **{table: dataclasses.replace(getattr(base, table), **{leaf: value})}
            )
        else:
            base = dataclasses.replace(base, **{name: value})
    return base


@pytest.fixture(scope="session")
def plugins() -> Plugins:
    return Plugins.load(env={}, entry_points=False)


@pytest.fixture(scope="session")
def redis_standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from redis_servers.stopping(redis_servers.standalone(tmp_path_factory.mktemp("redis")))


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from redis_servers.stopping(redis_servers.cluster(tmp_path_factory.mktemp("cluster")))


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from redis_servers.stopping(redis_servers.sentinel(tmp_path_factory.mktemp("sentinel")))


@pytest.fixture(params=list(BACKENDS))
def backend_name(request: pytest.FixtureRequest) -> str:
    return use_backend(request, str(request.param))


def use_backend(request: pytest.FixtureRequest, name: str) -> str:
    """Make the variant `name` usable by `backend_settings`: start the servers it needs."""
    if name in REDIS_DEPLOYMENTS:
        _running[name] = request.getfixturevalue(REDIS_DEPLOYMENTS[name])
    return name


def backend_settings(variant: str, data_dir: Path, **changes: Any) -> Settings:
    settings = settings_with(
        Settings(), data_dir=str(data_dir), **{**BACKENDS[variant], **changes}
    )
    if variant in REDIS_DEPLOYMENTS:
        # Each test (each data dir) gets its own key prefix on the shared servers.
        prefix = "test:" + hashlib.sha1(str(data_dir).encode()).hexdigest()[:12] + ":"
        settings = redis_servers.aimed_at(_running[variant], settings, key_prefix=prefix)
    return settings


MakeEngine = Callable[..., Awaitable[LockManager]]


@pytest.fixture
async def make_engine(
    backend_name: str, plugins: Plugins, tmp_path: Path
) -> AsyncIterator[MakeEngine]:
    engines: list[LockManager] = []

    async def make(clock: Clock | None = None, **changes: Any) -> LockManager:
        settings = backend_settings(backend_name, tmp_path / "data", **changes)
        backend = plugins.backends.get(settings.backend).from_settings(settings)
        await backend.start()
        engine = LockManager(
            backend,
            engine_settings(settings),
            overflow=overflow_policy(plugins, settings),
            stats=EngineStats(),
            clock=clock or Clock(),
        )
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.stop()
        await engine.backend.close()
