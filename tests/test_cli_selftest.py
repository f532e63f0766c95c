"""`atlantis-sidecar locks test --basic` against a real `serve` process, as an operator runs it.

The sidecar runs as its own process on a free loopback port with the SQLite backend, and the CLI
runs as another, so the test covers argument parsing, the HTTP calls, the exit code and the
output an operator reads. Every wait (start-up, each CLI run, shutdown) is bounded. A separate
in-process test breaks a step on purpose to prove the run cleans up what it took.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sidecar.api.app import Handler, create_app
from sidecar.api.locks import PREFIX
from sidecar.cli.selftest import STEPS, TOKEN_ENV, run_basic
from sidecar.config import Settings
from sidecar.plugin.manager import Plugins
from sidecar.runtime import ConfigSource, Runtime

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
CLI_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0

AiohttpServer = Callable[[web.Application], Awaitable[TestServer]]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def hermetic_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any ATLANTIS_* setting that could change the run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLANTIS_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


@contextlib.contextmanager
def sidecar(tmp: Path, **env: str) -> Iterator[str]:
    """A real `serve` process; yields its URL once /health answers, and stops it afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve", "--listen", f"127.0.0.1:{port}",
             "--data-dir", str(tmp / "data"), "--backend", "sqlite"],
            cwd=tmp, env=hermetic_env(**env), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"serve exited with {proc.returncode}:\n{log_path.read_text()}")
            with contextlib.suppress(OSError):
                status, _ = get_json(f"{url}{PREFIX}/health")
                if status == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"serve did not answer /health within {START_TIMEOUT:g}s:\n"
                            f"{log_path.read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)


def locks_test(url: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "locks", "test", "--basic", "--url", url],
        cwd=REPO, env=hermetic_env(**env), stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=CLI_TIMEOUT, check=False,
    )


def step_lines(output: str) -> dict[str, str]:
    """step name -> its PASS/FAIL/SKIP line."""
    lines = {}
    for line in output.splitlines():
        m = re.match(r"(PASS|FAIL|SKIP) (\w+)\b", line)
        if m:
            lines[m.group(2)] = line
    return lines


def assert_nothing_left(url: str) -> None:
    """The run must leave no lock and no waiting request behind."""
    status, body = get_json(f"{url}{PREFIX}/locks?prefix=selftest:")
    assert status == 200 and body["locks"] == [], body
    status, body = get_json(f"{url}{PREFIX}/queue/status")
    assert status == 200 and body["depth"] == 0, body


@pytest.fixture(scope="module")
def sidecar_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with sidecar(tmp_path_factory.mktemp("sidecar")) as url:
        yield url


def test_every_step_passes_against_a_real_sidecar(sidecar_url: str) -> None:
    run = locks_test(sidecar_url)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    lines = step_lines(run.stdout)
    assert list(lines) == list(STEPS), out
    for step in STEPS:
        assert lines[step].startswith(f"PASS {step}"), out
    assert "FAIL" not in out
    assert re.search(r"PASS handoff: .*\d+\.\d ms", lines["handoff"]), lines["handoff"]
    assert_nothing_left(sidecar_url)


def test_runs_twice_on_the_same_sidecar(sidecar_url: str) -> None:
    """Random keys and owners: a second run never meets the first one's state."""
    first, second = locks_test(sidecar_url), locks_test(sidecar_url)
    assert (first.returncode, second.returncode) == (0, 0), first.stdout + second.stdout
    assert_nothing_left(sidecar_url)


def test_unreachable_sidecar_fails_with_EL001() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # bound and closed again: nothing listens
    run = locks_test(url)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    health = step_lines(run.stdout)["health"]
    assert health.startswith("FAIL health:") and url in health and "EL001" in health, out
    assert "PASS" not in out
    assert "Traceback" not in out


def test_api_token_is_sent_from_the_environment(tmp_path: Path) -> None:
    with sidecar(tmp_path, ATLANTIS_ENHANCED_LOCKING_API_TOKEN="s3cret") as url:
        refused = locks_test(url)
        assert refused.returncode == 1, refused.stdout
        acquire = step_lines(refused.stdout)["acquire"]
        assert "401 EL007" in acquire and TOKEN_ENV in acquire, refused.stdout
        assert "cleanup" not in refused.stdout  # the refused acquire took nothing

        run = locks_test(url, **{TOKEN_ENV: "s3cret"})
        assert run.returncode == 0, run.stdout + run.stderr
        assert_nothing_left(url)


async def test_a_failed_step_releases_what_the_run_took(
    aiohttp_server: AiohttpServer, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Refuse owner A's release: handoff fails, and cleanup must free A's lock and B's wait."""
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    runtime = Runtime.build(
        Settings(backend="memory"), Plugins.load(env={}, entry_points=False),
        ConfigSource(None, {}),
    )
    app = create_app(runtime)

    @web.middleware
    async def refuse_release(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == PREFIX + "/release":
            return web.json_response({"error": "refused by the test", "code": "EL001"},
                                     status=503)
        return await handler(request)

    app.middlewares.append(refuse_release)
    server = await aiohttp_server(app)
    url = str(server.make_url("")).rstrip("/")

    assert await run_basic(url) == 1
    out = capsys.readouterr().out
    lines = step_lines(out)
    assert [lines[s].split()[0] for s in STEPS] == [
        "PASS", "PASS", "PASS", "PASS", "FAIL", "SKIP"
    ], out
    assert "503 EL001: refused by the test" in lines["handoff"]
    assert "cleanup: released 1 lock(s) and cancelled 1 waiting request(s)" in out, out
    page = await runtime.backend.list_grants(
        owner_id=None, prefix="selftest:", after_key=None, limit=10
    )
    assert list(page.grants) == []
    assert (await runtime.backend.queue_summary()).depth == 0
