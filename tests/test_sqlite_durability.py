"""The embedded default survives `kill -9`: grants, queue entries and fencing counters."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.processes import Sidecar, free_port, running_sidecar

API = "/api/enhanced-locks"


def call(base: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        base + API + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_grants_queue_and_tokens_survive_kill_9_and_restart(tmp_path: Path) -> None:
    args = ["--backend", "sqlite", "--data-dir", str(tmp_path / "data")]
    first = Sidecar(args, tmp_path / "first.log")
    try:
        first.wait_healthy()
        tokens = []
        for n in range(3):
            status, body = call(first.url, "POST", "/acquire", {"key": "k", "owner": f"o{n}"})
            assert status == 200, body
            tokens.append(body["locks"][0]["token"])
            if n < 2:
                call(first.url, "POST", "/release", {"key": "k", "owner": f"o{n}"})
        status, queued = call(
            first.url,
            "POST",
            "/acquire",
            {"key": "k", "owner": "waiter", "wait": 0, "stay_queued": True, "queue_timeout": "1h"},
        )
        assert status == 409 and queued["queued"] is True
    finally:
        first.kill9()
        first.stop()

    with running_sidecar(args, tmp_path / "second.log") as second:
        _, lock = call(second.url, "GET", "/lock?key=k")
        assert lock["lock"]["owner"]["id"] == "o2"
        assert [w["owner"]["id"] for w in lock["waiting"]] == ["waiter"]
        status, _ = call(second.url, "POST", "/release", {"key": "k", "owner": "o2"})
        assert status == 200
        _, state = call(second.url, "GET", f"/requests/{queued['request_id']}")
        assert state["state"] == "granted"
        handed = state["outcome"]["tokens"]["k"]
        assert tokens == [1, 2, 3] and handed == 4
        call(second.url, "POST", "/release", {"key": "k", "owner": "waiter"})
        _, again = call(second.url, "POST", "/acquire", {"key": "k", "owner": "late"})
        assert again["locks"][0]["token"] == 5


def test_unusable_data_dir_stops_start_up_with_EL007_and_the_path(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    data_dir = not_a_dir / "data"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sidecar",
            "serve",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--backend",
            "sqlite",
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert "EL007" in proc.stderr and str(data_dir) in proc.stderr


def test_data_dir_the_sidecar_may_not_write_stops_start_up_with_EL007(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    command = [
        sys.executable,
        "-m",
        "sidecar",
        "serve",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--backend",
        "sqlite",
        "--data-dir",
        str(locked / "data"),
    ]
    if os.geteuid() == 0:
        # Root ignores file modes: run the sidecar as an unprivileged user instead.
        tmp_path.chmod(0o755)
        command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1, proc.stderr
    assert "EL007" in proc.stderr and str(locked / "data") in proc.stderr


def test_a_caller_that_hangs_up_while_waiting_is_not_granted_the_lock(tmp_path: Path) -> None:
    with running_sidecar(
        ["--backend", "sqlite", "--data-dir", str(tmp_path / "d")], tmp_path / "log"
    ) as sidecar:
        call(sidecar.url, "POST", "/acquire", {"key": "k", "owner": "holder"})
        body = json.dumps({"key": "k", "owner": "impatient", "wait": "30s"}).encode()
        with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as conn:
            conn.sendall(
                b"POST /api/enhanced-locks/acquire HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
            deadline = time.monotonic() + 10
            while call(sidecar.url, "GET", "/queue/status")[1]["depth"] != 1:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        deadline = time.monotonic() + 10
        while call(sidecar.url, "GET", "/queue/status")[1]["depth"] != 0:
            assert time.monotonic() < deadline, "the abandoned request is still queued"
            time.sleep(0.05)
        call(sidecar.url, "POST", "/release", {"key": "k", "owner": "holder"})
        _, lock = call(sidecar.url, "GET", "/lock?key=k")
        assert lock["held"] is False
