"""The `atlantis-sidecar` commands of the troubleshooting guide, run as real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.processes import running_sidecar
from tests.test_sqlite_durability import call

BAD_CONFIG = """
[enhanced-locking]
lock-timeout = "-5s"
backend = "bolt"

[enhanced-locking.queue-config]
max-queue-size = "many"
overflow-policy = "drop_everything"

[enhanced-locking.deadlock-detection]
confidence-threshold = 1.5
"""


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_version_prints_the_version() -> None:
    from sidecar import __version__

    proc = cli("version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"atlantis-sidecar {__version__}"


def test_config_validate_lists_every_problem_with_its_path_and_EL003(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BAD_CONFIG)
    proc = cli("config", "validate", "enhanced-locking", "--config", str(path))
    assert proc.returncode == 1
    for key in [
        "lock-timeout",
        "backend",
        "queue-config.max-queue-size",
        "queue-config.overflow-policy",
        "deadlock-detection.confidence-threshold",
    ]:
        assert f"enhanced-locking.{key}" in proc.stderr, key
    assert proc.stderr.count("[EL003]") >= 5
    assert "reject_newest" in proc.stderr  # unknown names list the known ones


def test_config_validate_accepts_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "good.toml"
    path.write_text('[enhanced-locking]\nlock-timeout = "30s"\n')
    proc = cli("config", "validate", "--config", str(path))
    assert proc.returncode == 0 and "configuration valid" in proc.stdout


def test_config_show_hides_secrets(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[enhanced-locking]\nadmin-token = "t0p-s3cret"\n')
    proc = cli("config", "show", "--config", str(path))
    assert proc.returncode == 0
    assert "t0p-s3cret" not in proc.stdout and "admin-token" in proc.stdout


def test_plugins_lists_the_builtins_with_their_hooks() -> None:
    proc = cli("plugins", "--json")
    data = json.loads(proc.stdout)
    by_name = {p["name"]: p for p in data["plugins"]}
    assert "backend:sqlite" in by_name["plugins.backends.sqlite"]["provides"]
    assert by_name["plugins.overflow"]["hooks"] == ["atlantis_sidecar_register_overflow_policies"]


def test_health_and_locks_list_talk_to_a_running_sidecar(tmp_path: Path) -> None:
    with running_sidecar(["--backend", "memory"], tmp_path / "log") as sidecar:
        call(sidecar.url, "POST", "/acquire", {"key": "team/a", "owner": "ci-1"})
        health = cli("health", "--url", sidecar.url)
        assert health.returncode == 0 and '"healthy"' in health.stdout
        listed = cli("locks", "list", "--url", sidecar.url)
        assert listed.returncode == 0
        assert "team/a" in listed.stdout and "ci-1" in listed.stdout
    down = cli("health", "--url", sidecar.url)
    assert down.returncode == 1 and "EL001" in down.stdout


def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_config_set_rewrites_the_file_and_reloads_the_running_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.toml"
    path.write_text(
        '# tuned for the platform team\n[enhanced-locking]\nadmin-token = "adm"\n'
        "[enhanced-locking.queue-config]\nmax-queue-size = 100  # keep small\n"
    )
    args = ["--backend", "memory", "--config", str(path)]
    with running_sidecar(args, tmp_path / "log") as sidecar:
        proc = cli(
            "config",
            "set",
            "enhanced-locking.queue-config.max-queue-size=7",
            "--config",
            str(path),
            "--url",
            sidecar.url,
        )
        assert proc.returncode == 0, proc.stderr
        assert "live" in proc.stdout
        assert "# tuned for the platform team" in path.read_text()
        _, queue = call(sidecar.url, "GET", "/queue/status")
        assert queue["max_queue_size"] == 7

        proc = cli(
            "config",
            "set",
            "enhanced-locking.sqlite.synchronous=NORMAL",
            "--config",
            str(path),
            "--url",
            sidecar.url,
        )
        assert proc.returncode == 0 and "restart" in proc.stdout

        before = path.read_bytes()
        proc = cli(
            "config",
            "set",
            "enhanced-locking.queue-config.max-queue-size=-1",
            "--config",
            str(path),
            "--url",
            sidecar.url,
        )
        assert proc.returncode == 1 and "EL003" in proc.stderr
        assert path.read_bytes() == before


def test_sighup_reloads_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.toml"
    path.write_text("[enhanced-locking.queue-config]\nmax-queue-size = 100\n")
    with running_sidecar(["--backend", "memory", "--config", str(path)], tmp_path / "log") as s:
        path.write_text("[enhanced-locking.queue-config]\nmax-queue-size = 42\n")
        s.proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: call(s.url, "GET", "/queue/status")[1]["max_queue_size"] == 42)
        path.write_text("[enhanced-locking.queue-config]\nmax-queue-size = -3\n")
        s.proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: "config reload on SIGHUP refused" in s.output())
        assert call(s.url, "GET", "/queue/status")[1]["max_queue_size"] == 42


def test_sigterm_answers_waiting_callers_and_exits_cleanly(tmp_path: Path) -> None:
    with running_sidecar(["--backend", "memory"], tmp_path / "log") as sidecar:
        call(sidecar.url, "POST", "/acquire", {"key": "k", "owner": "holder"})
        answers: list[tuple[int, Any]] = []
        waiter = threading.Thread(
            target=lambda: answers.append(
                call(sidecar.url, "POST", "/acquire", {"key": "k", "owner": "w", "wait": "30s"})
            )
        )
        waiter.start()
        _wait_for(lambda: call(sidecar.url, "GET", "/queue/status")[1]["depth"] == 1)
        started = time.monotonic()
        sidecar.proc.send_signal(signal.SIGTERM)
        waiter.join(15)
        assert sidecar.proc.wait(15) == 0
        assert time.monotonic() - started < 10
    status, body = answers[0]
    assert status == 409 and body["code"] == "EL002"
    assert "shutting down" in body["detail"]


def test_admin_reload_refuses_an_invalid_file_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.toml"
    path.write_text('[enhanced-locking]\nadmin-token = "adm"\nlock-timeout = "10s"\n')
    with running_sidecar(["--backend", "memory", "--config", str(path)], tmp_path / "log") as s:
        path.write_text('[enhanced-locking]\nadmin-token = "adm"\nlock-timeout = "soon"\n')
        req = urllib.request.Request(
            s.url + "/api/enhanced-locks/config/reload",
            method="POST",
            data=b"",
            headers={"Authorization": "Bearer adm"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=10)
        body = json.loads(refused.value.read())
        assert refused.value.code == 400 and body["code"] == "EL003"
        assert any("lock-timeout" in p for p in body["problems"])
        _, health = call(s.url, "GET", "/health")
        assert health["status"] == "healthy"
