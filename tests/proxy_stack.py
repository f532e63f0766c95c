"""A fake Atlantis and a real sidecar in front of it, both real servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from sidecar.api.app import create_app
from sidecar.config import Settings
from sidecar.plugin.manager import Plugins
from sidecar.runtime import ConfigSource, Runtime
from tests.conftest import settings_with
from tests.fake_atlantis import FakeAtlantis
from tests.processes import free_port

API = "/api/enhanced-locks"


@dataclass
class Stack:
    fake: FakeAtlantis
    runtime: Runtime
    server: TestServer
    http: aiohttp.ClientSession  # a plain client; never decompresses, never follows redirects

    @property
    def port(self) -> int:
        port = self.server.port
        assert port is not None
        return port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reload(self, **changes: Any) -> None:
        """What `config set` / SIGHUP do: apply new settings to the running sidecar."""
        self.runtime.apply(settings_with(self.runtime.settings, **changes), by="test")

    async def acquire(self, key: str, owner: Any, **body: Any) -> tuple[int, dict[str, Any]]:
        async with self.http.post(
            f"{self.url}{API}/acquire", json={"key": key, "owner": owner, "wait": 0, **body}
        ) as resp:
            return resp.status, await resp.json()

    async def metrics(self) -> dict[str, Any]:
        async with self.http.get(f"{self.url}{API}/metrics") as resp:
            data: dict[str, Any] = await resp.json()
            return data


@contextlib.asynccontextmanager
async def proxy_stack(
    tmp_path: Path,
    *,
    fake: FakeAtlantis | None = None,
    upstream: str | None = None,
    **changes: Any,
) -> AsyncIterator[Stack]:
    """Start the fake (unless `upstream` names something else) and a sidecar in front of it."""
    fake = fake or FakeAtlantis()
    await fake.start()
    try:
        settings = settings_with(
            Settings(),
            backend="memory",
            data_dir=str(tmp_path / "data"),
            upstream=upstream or fake.url,
            **changes,
        )
        runtime = Runtime.build(
            settings, Plugins.load(env={}, entry_points=False), ConfigSource(None, {})
        )
        server = TestServer(create_app(runtime), host="127.0.0.1", port=free_port())
        await server.start_server()
        try:
            async with aiohttp.ClientSession(auto_decompress=False) as http:
                yield Stack(fake, runtime, server, http)
        finally:
            await server.close()
    finally:
        await fake.stop()
