"""Deadlock detection speed (a benchmark: it prints figures, it asserts nothing).

For wait-for graphs of 1 000, 10 000 and 100 000 waiting requests (each owner holds one key and
waits for a key of a later owner, so the graph is large and acyclic), it times:
- the immediate check of one new wait edge (the bounded walk read in one transaction),
- a full sweep (one snapshot, the graph, strongly connected components),
- a 2-cycle from the moment it closes to the victim's EL004, through the real LockManager.
The peer is PostgreSQL's `deadlock_timeout`: it waits 1 s before it even looks.

    .venv/bin/python benchmarks/deadlock_bench.py [--sizes 1000,10000] [--backends memory,redis]
        [--redis-port 6390]   (redis: a scratch redis-server on 127.0.0.1; each run's keys are
                               removed afterwards)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from sidecar.config import Settings
from sidecar.engine.detector import DeadlockDetector
from sidecar.engine.manager import LockManager
from sidecar.engine.model import Owner, Priority
from sidecar.engine.waitgraph import WaitGraph
from sidecar.errors import LockError
from sidecar.metrics.stats import EngineStats
from sidecar.plugin.manager import Plugins
from sidecar.runtime import detector_settings, engine_settings, overflow_policy

POSTGRES_DEADLOCK_TIMEOUT_MS = 1000.0
#: Sweeps timed per graph: enough for a median that one noisy moment does not decide.
SWEEPS = 9


async def build(
    backend_name: str, data_dir: Path, plugins: Plugins, redis_port: int = 6379
) -> LockManager:
    settings = Settings(backend=backend_name, data_dir=str(data_dir))
    settings = dataclasses.replace(
        settings,
        redis=dataclasses.replace(
            settings.redis, port=redis_port, key_prefix=f"deadlock-bench:{uuid.uuid4().hex}:"
        ),
        batch_processing=True,
        batch_size=500,
        queue_config=dataclasses.replace(settings.queue_config, max_queue_size=1_000_000),
        sqlite=dataclasses.replace(settings.sqlite, synchronous="NORMAL"),
    )
    backend = plugins.backends.get(backend_name).from_settings(settings)
    await backend.start()
    return LockManager(
        backend,
        engine_settings(settings),
        overflow=overflow_policy(plugins, settings),
        stats=EngineStats(),
    )


def prefix_of(engine: LockManager) -> str:
    return str(engine.backend.describe()["key_prefix"])


async def remove_keys(port: int, prefix: str) -> None:
    """Delete a Redis run's keys: left in the server, runs pile up and slow the next ones."""
    from redis.asyncio import Redis

    client = Redis(port=port)
    try:
        async for key in client.scan_iter(match=prefix + "*", count=1000):
            await client.unlink(key)
    finally:
        await client.aclose()


async def queue(engine: LockManager, key: str, owner: str) -> None:
    request, _ = engine.new_request(
        [key], Owner(owner), Priority.NORMAL, wait=0, stay_queued=True, queue_timeout=3600
    )
    await engine.acquire(request, 0, stay_queued=True)


async def populate(engine: LockManager, n: int, rng: random.Random) -> None:
    chunk = 500
    for start in range(0, n, chunk):
        await asyncio.gather(
            *(queue(engine, f"k{i}", f"o{i}") for i in range(start, min(n, start + chunk)))
        )
    for start in range(0, n - 1, chunk):
        await asyncio.gather(
            *(
                queue(engine, f"k{rng.randrange(i + 1, n)}", f"o{i}")
                for i in range(start, min(n - 1, start + chunk))
            )
        )


def ms(seconds: float) -> float:
    return seconds * 1000


async def measure(backend_name: str, n: int, plugins: Plugins, redis_port: int) -> None:
    rng = random.Random(n)
    with tempfile.TemporaryDirectory() as tmp:
        engine = await build(backend_name, Path(tmp), plugins, redis_port)
        detector = DeadlockDetector(engine, detector_settings(plugins, Settings()), engine.stats)
        try:
            started = time.perf_counter()
            await populate(engine, n, rng)
            setup = time.perf_counter() - started
            depth = (await engine.backend.queue_summary()).depth
            immediate = []
            for trial in range(20):
                owner = f"new{trial}"
                await queue(engine, f"k{rng.randrange(n)}", owner)
                t0 = time.perf_counter()
                edges = await engine.backend.wait_edges_from(owner, max_owners=1000)
                WaitGraph(edges).cycle_through(owner)
                immediate.append(time.perf_counter() - t0)
            sweeps = []
            for _ in range(SWEEPS):
                t0 = time.perf_counter()
                found = await detector.sweep()
                sweeps.append(time.perf_counter() - t0)
                assert found == [], "the benchmark graph is acyclic"
            engine.on_wait = detector.on_wait
            resolutions = []
            for trial in range(20):
                a, b = f"cyc-a{trial}", f"cyc-b{trial}"
                await queue(engine, f"x{trial}", a)
                await queue(engine, f"y{trial}", b)
                await queue(engine, f"y{trial}", a)
                request, _ = engine.new_request([f"x{trial}"], Owner(b), wait=5)
                t0 = time.perf_counter()
                try:
                    await engine.acquire(request, 5)
                except LockError:
                    resolutions.append(time.perf_counter() - t0)
            print(
                f"{backend_name:7} waiting={depth:>7}  setup {setup:6.1f}s  "
                f"new-edge check p50 {ms(statistics.median(immediate)):7.2f} ms "
                f"max {ms(max(immediate)):7.2f} ms  "
                f"full sweep p50 {ms(statistics.median(sweeps)):8.1f} ms "
                f"min {ms(min(sweeps)):8.1f} ms  "
                f"2-cycle to EL004 p50 {ms(statistics.median(resolutions)):6.2f} ms "
                f"(PostgreSQL waits {POSTGRES_DEADLOCK_TIMEOUT_MS:.0f} ms first: "
                f"{POSTGRES_DEADLOCK_TIMEOUT_MS / ms(statistics.median(resolutions)):.0f}x)"
            )
        finally:
            await engine.backend.close()
            if backend_name == "redis":
                await remove_keys(redis_port, prefix_of(engine))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--backends", default="memory,sqlite")
    parser.add_argument("--redis-port", type=int, default=6379, help="a scratch redis-server")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # one "deadlock detected" line per resolved cycle otherwise
    plugins = Plugins.load(env={}, entry_points=False)
    for backend_name in args.backends.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            await measure(backend_name, n, plugins, args.redis_port)


if __name__ == "__main__":
    asyncio.run(main())
