"""`atlantis-sidecar locks deadlock-test` against a real sidecar, and EL004 over HTTP."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.processes import running_sidecar
from tests.test_sqlite_durability import call


@pytest.mark.parametrize(("users", "resources"), [(5, 3), (2, 2), (3, 6)])
def test_deadlock_test_command_builds_deadlocks_and_sees_them_resolved(
    tmp_path: Path, users: int, resources: int
) -> None:
    args = ["--backend", "sqlite", "--data-dir", str(tmp_path / "d")]
    with running_sidecar(args, tmp_path / "log") as sidecar:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "sidecar",
                "locks",
                "deadlock-test",
                f"--users={users}",
                f"--resources={resources}",
                "--url",
                sidecar.url,
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert re.search(r"PASS detected: cycle of \d+ users resolved in [\d.]+ ms", proc.stdout)
        assert "PASS resolved" in proc.stdout
        _, status = call(sidecar.url, "GET", "/deadlock/status")
        assert status["resolved"] == 1 and status["recent"][0]["outcome"] == "resolved"
        _, queue = call(sidecar.url, "GET", "/queue/status")
        _, locks = call(sidecar.url, "GET", "/locks")
        assert queue["depth"] == 0 and locks["locks"] == []


def test_deadlock_test_fails_clearly_when_no_sidecar_answers() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sidecar", "locks", "deadlock-test", "--url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1 and "EL001" in proc.stdout


def test_deadlock_test_fails_when_detection_is_off(tmp_path: Path) -> None:
    config = tmp_path / "off.toml"
    config.write_text("[enhanced-locking.deadlock-detection]\nenabled = false\n")
    args = ["--backend", "memory", "--config", str(config)]
    with running_sidecar(args, tmp_path / "log") as sidecar:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "sidecar",
                "locks",
                "deadlock-test",
                "--users=2",
                "--resources=2",
                "--url",
                sidecar.url,
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert proc.returncode == 1 and "no deadlock victim" in proc.stdout


def test_deadlock_victim_gets_409_EL004_over_http_with_the_cycle(tmp_path: Path) -> None:
    with running_sidecar(["--backend", "memory"], tmp_path / "log") as sidecar:
        call(sidecar.url, "POST", "/acquire", {"key": "x", "owner": "alice"})
        call(sidecar.url, "POST", "/acquire", {"key": "y", "owner": "bob"})
        answers: list[tuple[int, Any]] = []
        alice = threading.Thread(
            target=lambda: answers.append(
                call(sidecar.url, "POST", "/acquire", {"key": "y", "owner": "alice", "wait": "10s"})
            )
        )
        alice.start()
        deadline = time.monotonic() + 10
        while call(sidecar.url, "GET", "/queue/status")[1]["depth"] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        status, body = call(
            sidecar.url, "POST", "/acquire", {"key": "x", "owner": "bob", "wait": "10s"}
        )
        assert (status, body["code"]) == (409, "EL004")
        assert "bob waits for 'x' held by alice" in body["detail"]
        call(sidecar.url, "POST", "/release", {"key": "y", "owner": "bob"})
        alice.join(10)
        assert answers[0][0] == 200
        _, deadlocks = call(sidecar.url, "GET", "/deadlock/status")
        assert deadlocks["recent"][0]["victim"]["owner"] == "bob"
