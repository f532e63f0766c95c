"""Shared fixtures: real backends (memory, a real SQLite file) behind a real LockManager."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import Settings
from sidecar.engine.manager import LockManager
from sidecar.metrics.stats import EngineStats
from sidecar.plugin.manager import Plugins
from sidecar.runtime import engine_settings, overflow_policy

# Each variant: a backend plugin name and the settings it runs with. "sqlite+group-commit" shares
# transactions between concurrent writes, and must keep every rule all the same.
BACKENDS: dict[str, dict[str, Any]] = {
    "memory": {"backend": "memory"},
    "sqlite": {"backend": "sqlite"},
    "sqlite+group-commit": {"backend": "sqlite", "batch_processing": True, "batch_size": 20},
}


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


@pytest.fixture(params=list(BACKENDS))
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def backend_settings(variant: str, data_dir: Path, **changes: Any) -> Settings:
    return settings_with(Settings(), data_dir=str(data_dir), **{**BACKENDS[variant], **changes})


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
