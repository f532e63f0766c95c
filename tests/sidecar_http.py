"""Small HTTP helpers for tests that talk to `serve` subprocesses."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from typing import Any

from tests.processes import Sidecar

API = "/api/enhanced-locks"


def call(
    base: str, method: str, path: str, body: Any = None, timeout: float = 30
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        base + API + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_answering(sidecar: Sidecar, timeout: float = 20.0) -> None:
    """Until the sidecar answers HTTP at all (health may well say 503 unhealthy)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sidecar.proc.poll() is not None:
            raise RuntimeError(
                f"sidecar exited with {sidecar.proc.returncode}:\n{sidecar.output()}"
            )
        with contextlib.suppress(OSError, ValueError):
            call(sidecar.url, "GET", "/health", timeout=2)
            return
        time.sleep(0.05)
    raise TimeoutError(f"sidecar not answering within {timeout}s:\n{sidecar.output()}")


def wait_status(sidecar: Sidecar, status: str, timeout: float = 20.0) -> dict[str, Any]:
    """Until health reports `status`; returns that report."""
    deadline = time.monotonic() + timeout
    report: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            _, report = call(sidecar.url, "GET", "/health", timeout=5)
            if report.get("status") == status:
                return report
        time.sleep(0.1)
    raise TimeoutError(f"health never said {status!r} (last: {report}):\n{sidecar.output()}")
