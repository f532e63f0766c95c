"""`locks benchmark` on Redis, run as operators run it: a real process against a real server.

Speed is not asserted. What is checked: every figure the issue asks for is in the report (pairs
through the engine in-process and over HTTP, the floor, the peers on the same Redis, handoffs
across two replicas) and was measured; python-redis-lock is measured when installed and named as
missing otherwise; and the benchmark leaves the live lock space exactly as it found it.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from tests.redis_servers import Deployment
from tests.test_cli_benchmark import NUMBER, check_report, run_cli

PEER = re.compile(
    rf"^peer (bare SET NX PX \+ DEL|redis-py Lock|python-redis-lock): {NUMBER} pairs/s  p50 ", re.M
)
REPLICAS = re.compile(
    rf"^handoff across two replicas \([^)]*\): p50 {NUMBER} ms  p95 {NUMBER} ms  p99 {NUMBER} ms"
    rf"  \((\d+) handoffs\)",
    re.M,
)


def test_benchmark_redis_measures_the_peers_and_leaves_the_live_locks_alone(
    redis_standalone: Deployment, tmp_path: Path
) -> None:
    server = redis_standalone.servers[0]
    prefix = "bench-test:"
    with server.client() as client:
        client.hset(f"{prefix}{{locks}}:grants", "live/key", '{"live": true}')
        client.hset(f"{prefix}{{locks}}:tokens", "live/key", 41)
        before = sorted(client.scan_iter(match="*"))
    config = tmp_path / "sidecar.toml"
    config.write_text(
        f'[enhanced-locking]\nbackend = "redis"\ndata-dir = "{tmp_path / "data"}"\n'
        f'[enhanced-locking.redis]\nport = {server.port}\nkey-prefix = "{prefix}"\n'
    )
    done = run_cli("locks", "benchmark", "--duration", "0.3s", "--concurrency", "4", config=config)
    assert done.returncode == 0, done.stderr
    report = done.stdout
    check_report(report, "redis")
    assert "bare SET NX PX + DEL on the same Redis" in report
    assert "floor on the backend's transport: " in report
    peers = dict((name, float(rate)) for name, rate in PEER.findall(report))
    has_prl = importlib.util.find_spec("redis_lock") is not None
    expected = {"bare SET NX PX + DEL", "redis-py Lock"} | (
        {"python-redis-lock"} if has_prl else set()
    )
    assert set(peers) == expected
    assert all(rate > 0 for rate in peers.values())
    if has_prl:
        assert "handoff python-redis-lock (" in report
        assert re.search(
            r"^  in-process/python-redis-lock = [\d.]+ \(target >= 1\): ", report, re.M
        )
    else:
        assert "python-redis-lock is not installed" in report
    across = REPLICAS.search(report)
    assert across is not None and int(across[4]) > 0, report
    assert re.search(
        r"^  handoff across replicas p50 = [\d.]+ ms \(target <= 2 ms\): ", report, re.M
    )
    with server.client() as client:
        assert sorted(client.scan_iter(match="*")) == before
        assert client.hget(f"{prefix}{{locks}}:tokens", "live/key") == b"41"
