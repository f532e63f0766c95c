"""`atlantis-sidecar locks benchmark`: how fast the configured backend is, and how fast it could be.

The issue asks for acquire+release pairs per second and latency percentiles both in-process and
over HTTP, the handoff latency under contention, and the same pair on the backend's *floor* (the
bare storage operation with nothing of ours around it), so that an operator can tell engine
overhead from storage cost. The seed guide redirects the output to a file, so this prints a plain
text report; progress notes go to stderr so they stay out of that file.

A benchmark measures, it does not assert: below-target figures still exit 0; only errors do not.

The live lock database is never touched. Durable backends get a scratch directory next to the
configured data dir (same filesystem, so fsync costs are the real ones) with the same
`synchronous`/WAL settings, removed afterwards; shared backends (Redis) only see keys under
`bench:<pid>:`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from sidecar.config.durations import parse_duration
from sidecar.engine.manager import Granted, LockManager
from sidecar.engine.model import Owner
from sidecar.errors import LockError
from sidecar.metrics.stats import percentile
from sidecar.plugin.registry import UnknownName

if TYPE_CHECKING:
    from sidecar.backends.base import Backend
    from sidecar.config import Settings
    from sidecar.plugin.manager import Plugins
    from sidecar.runtime import Runtime

API = "/api/enhanced-locks"
#: Long enough that an uncontended acquire never times out, short enough that a bug shows.
ACQUIRE_WAIT = 5.0
#: The "bounded count" side of "for duration seconds or a bounded count": keeps memory bounded
#: (one float per sample) when a fast backend runs for minutes.
MAX_PAIRS = 500_000
MAX_HANDOFFS = 100_000
#: Untimed pairs per worker first, so table creation, first connections and caches are not
#: counted as latency.
WARMUP_PAIRS = 5
WARMUP_HANDOFFS = 3
#: How long a handoff round may wait to see its waiter queued before we call it a bug.
QUEUED_TIMEOUT = 5.0
TARGET_RATIO = 0.5
TARGET_HANDOFF_P50_MS = 1.0
SQLITE_SYNCHRONOUS = {"OFF", "NORMAL", "FULL", "EXTRA"}


class BenchmarkError(Exception):
    """Something went wrong while measuring (not a slow figure: that is only reported)."""


@dataclass(frozen=True, slots=True)
class Measured:
    """Samples of one measurement: `count` operations in `elapsed` seconds, latencies sorted."""

    count: int
    elapsed: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.count / self.elapsed if self.elapsed > 0 else 0.0

    def ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000.0

    def percentiles(self) -> str:
        return "  ".join(f"p{q} {self.ms(q):.3f} ms" for q in (50, 95, 99))


@dataclass(frozen=True, slots=True)
class Context:
    """What every measurement needs: settings, plugins, the scratch dir and the key prefix."""

    settings: Settings
    plugins: Plugins
    scratch: Path
    seconds: float
    concurrency: int
    prefix: str

    def scratch_settings(self, tag: str) -> Settings:
        """The configured settings aimed at a scratch directory, so nothing live is opened.

        `enabled` is forced on: with the master switch off the API answers 503, which would
        measure nothing.
        """
        settings = dataclasses.replace(
            self.settings, data_dir=str(self.scratch / tag), enabled=True
        )
        if settings.backend == "redis":  # shared: a key prefix of its own instead of a file
            from sidecar.cli.benchmark_redis import scratch_prefix

            redis = dataclasses.replace(settings.redis, key_prefix=scratch_prefix(settings))
            settings = dataclasses.replace(settings, redis=redis)
        return settings

    def runtime(self, tag: str) -> Runtime:
        from sidecar.runtime import ConfigSource, Runtime

        runtime = Runtime.build(self.scratch_settings(tag), self.plugins, ConfigSource(None, {}))
        _guard_scratch(runtime.backend, self.scratch)
        return runtime


#: A floor returns its measurement and a note for the report (what SQLite actually chose).
Floor = Callable[[Context], Awaitable[tuple[Measured, str]]]


def _guard_scratch(backend: Backend, scratch: Path) -> None:
    """Refuse to go on if a backend with a file would open anything outside the scratch dir.

    This is the last line of defence for the live `locks.db`: should a backend's
    `from_settings` ever stop deriving its path from `data-dir`, the benchmark stops here.
    """
    path = getattr(backend, "path", None)
    if isinstance(path, Path) and scratch.resolve() not in path.resolve().parents:
        raise BenchmarkError(f"refusing to benchmark on {path}: it is outside {scratch}")


# -- drivers ------------------------------------------------------------------------------------


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc = group.exceptions[0]
    return _first_error(exc) if isinstance(exc, BaseExceptionGroup) else exc


async def _all(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run coroutines together; on the first failure cancel the rest and raise that failure.

    A TaskGroup rather than gather, so that no worker keeps hammering a backend that is being
    closed; unwrapped, so the CLI prints one plain error.
    """
    try:
        async with asyncio.TaskGroup() as group:
            for coro in coros:
                group.create_task(coro)
    except BaseExceptionGroup as failed:
        raise _first_error(failed) from None


async def _pairs(
    concurrency: int, seconds: float, pair: Callable[[int], Awaitable[None]]
) -> Measured:
    """`concurrency` workers each repeat `pair(worker)` until time or MAX_PAIRS is up."""

    async def warm(worker: int) -> None:
        for _ in range(WARMUP_PAIRS):
            await pair(worker)

    await _all(warm(i) for i in range(concurrency))
    samples: list[float] = []
    start = time.perf_counter()
    deadline = start + seconds

    async def run(worker: int) -> None:
        while len(samples) < MAX_PAIRS:
            began = time.perf_counter()
            if began >= deadline:
                return
            await pair(worker)
            samples.append(time.perf_counter() - began)

    await _all(run(i) for i in range(concurrency))
    elapsed = time.perf_counter() - start
    samples.sort()
    return Measured(len(samples), elapsed, samples)


async def _handoffs(seconds: float, one_round: Callable[[int], Awaitable[float]]) -> Measured:
    """Repeat `one_round(holder)` (which returns one handoff latency), swapping the holder.

    Two owners take turns: the holder releases, the other one, already queued, is granted and
    becomes the holder of the next round.
    """
    holder = 0
    for _ in range(WARMUP_HANDOFFS):
        await one_round(holder)
        holder = 1 - holder
    samples: list[float] = []
    start = time.perf_counter()
    deadline = start + seconds
    while len(samples) < MAX_HANDOFFS and time.perf_counter() < deadline:
        samples.append(await one_round(holder))
        holder = 1 - holder
    elapsed = time.perf_counter() - start
    samples.sort()
    return Measured(len(samples), elapsed, samples)


async def _until(check: Callable[[], Awaitable[bool]], task: asyncio.Task[Any], what: str) -> None:
    """Poll `check` until it holds; fail fast if `task` (the waiter) ended or time is up."""
    give_up = time.perf_counter() + QUEUED_TIMEOUT
    while not await check():
        if task.done():
            await task  # raises what the waiter raised
            raise BenchmarkError(f"{what}: the waiter finished before it was queued")
        if time.perf_counter() > give_up:
            task.cancel()
            raise BenchmarkError(f"{what}: the waiter was not queued within {QUEUED_TIMEOUT:g}s")
        await asyncio.sleep(0)


# -- in-process ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _running(runtime: Runtime) -> AsyncIterator[LockManager]:
    """Start backend, event dispatcher and engine (sweeper included) as the app would."""
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(runtime.backend.close)  # also after a failed start
        await runtime.backend.start()
        await runtime.events.start()
        stack.push_async_callback(runtime.events.stop)
        await runtime.engine.start()
        stack.push_async_callback(runtime.engine.stop)
        yield runtime.engine


async def _grab(engine: LockManager, key: str, owner: Owner) -> float:
    """Acquire `key` for `owner` (waiting up to ACQUIRE_WAIT); return when it returned."""
    request, wait = engine.new_request([key], owner, wait=ACQUIRE_WAIT)
    result = await engine.acquire(request, wait)
    returned = time.perf_counter()
    if not isinstance(result, Granted):
        raise BenchmarkError(f"acquire of {key!r} was not granted: {result!r}")
    return returned


async def _let_go(engine: LockManager, owners: Iterable[Owner]) -> None:
    """Release whatever the benchmark's owners still hold or wait for, also after a failure.

    Scratch stores are deleted anyway; this is for shared backends (Redis), where a leftover
    `bench:` grant without a lease would stay forever.
    """
    for owner in owners:
        with contextlib.suppress(LockError):
            await engine.release_owner(owner.id)


@dataclass(frozen=True, slots=True)
class InProcess:
    pairs: Measured
    handoffs: Measured
    floor: Measured | None
    floor_note: str


async def _floor_halves(
    ctx: Context, floor: Floor | None, middle: Callable[[], Awaitable[Measured]]
) -> tuple[Measured, Measured | None, str]:
    """Run `middle` between two half-length runs of the floor and merge the halves.

    The ratio compares two measurements taken at different moments; on a shared machine the
    load changes in between. Bracketing the in-process pairs with the floor makes a drift
    affect both sides alike instead of skewing the ratio.
    """
    if floor is None:
        return await middle(), None, ""
    half = dataclasses.replace(ctx, seconds=ctx.seconds / 2)
    _progress(f"the floor, first half ({half.seconds:g}s)")
    before, note = await floor(half)
    measured = await middle()
    _progress(f"the floor, second half ({half.seconds:g}s)")
    after, _ = await floor(half)
    merged = Measured(
        before.count + after.count, before.elapsed + after.elapsed,
        sorted(before.latencies + after.latencies),
    )
    return measured, merged, note


async def measure_in_process(ctx: Context, runtime: Runtime, floor: Floor | None) -> InProcess:
    """Pairs on distinct keys (floor around them), then handoffs on one key.

    One engine built like the server's, sweeper and event dispatcher running.
    """
    async with _running(runtime) as engine:
        owners = [Owner(f"bench-{os.getpid()}-w{i}") for i in range(ctx.concurrency)]
        keys = [f"{ctx.prefix}w{i}" for i in range(ctx.concurrency)]

        async def pair(worker: int) -> None:
            await _grab(engine, keys[worker], owners[worker])
            await engine.release(owners[worker].id, [keys[worker]])

        async def pairs_now() -> Measured:
            _progress(f"in-process pairs ({ctx.seconds:g}s)")
            return await _pairs(ctx.concurrency, ctx.seconds, pair)

        pairs, floor_measured, floor_note = await _floor_halves(ctx, floor, pairs_now)

        key = f"{ctx.prefix}handoff"
        two = (Owner(f"bench-{os.getpid()}-a"), Owner(f"bench-{os.getpid()}-b"))

        async def queued() -> bool:
            return bool((await engine.backend.key_state(key, max_waiting=1)).waiting)

        async def one_round(holder: int) -> float:
            waiter = asyncio.create_task(_grab(engine, key, two[1 - holder]))
            await _until(queued, waiter, "in-process handoff")
            released = time.perf_counter()
            await engine.release(two[holder].id, [key])
            return (await waiter) - released

        _progress(f"in-process handoffs ({ctx.seconds:g}s)")
        try:
            await _grab(engine, key, two[0])
            handoffs = await _handoffs(ctx.seconds, one_round)
        finally:
            await _let_go(engine, [*owners, *two])
        return InProcess(pairs, handoffs, floor_measured, floor_note)


# -- over HTTP ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _serving(runtime: Runtime) -> AsyncIterator[str]:
    """The real app on 127.0.0.1 and a free port; yields its base URL."""
    from sidecar.api.app import create_app

    runner = web.AppRunner(create_app(runtime), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _post(session: aiohttp.ClientSession, path: str, body: dict[str, Any]) -> float:
    """POST a JSON body; return when the whole answer was read. Anything but 200 is an error."""
    async with session.post(API + path, json=body) as resp:
        answer = await resp.read()
        returned = time.perf_counter()
        if resp.status != 200:
            raise BenchmarkError(f"POST {path} answered {resp.status}: {answer[:300]!r}")
    return returned


async def measure_http(ctx: Context) -> tuple[Measured, Measured]:
    """The same pairs and handoffs through the real app and a real aiohttp client."""
    runtime = ctx.runtime("http")
    headers = {"X-Atlantis-Token": runtime.settings.api_token} if runtime.settings.api_token else {}
    async with (
        _serving(runtime) as url,
        aiohttp.ClientSession(
            base_url=url, headers=headers,
            connector=aiohttp.TCPConnector(limit=ctx.concurrency + 2),
            timeout=aiohttp.ClientTimeout(total=ACQUIRE_WAIT * 4),
        ) as session,
    ):
        owners = [f"bench-{os.getpid()}-w{i}" for i in range(ctx.concurrency)]
        keys = [f"{ctx.prefix}w{i}" for i in range(ctx.concurrency)]

        async def pair(worker: int) -> None:
            key, owner = keys[worker], owners[worker]
            await _post(session, "/acquire", {"key": key, "owner": owner, "wait": ACQUIRE_WAIT})
            await _post(session, "/release", {"key": key, "owner": owner})

        _progress(f"HTTP pairs ({ctx.seconds:g}s)")
        pairs = await _pairs(ctx.concurrency, ctx.seconds, pair)

        key = f"{ctx.prefix}handoff"
        two = (f"bench-{os.getpid()}-a", f"bench-{os.getpid()}-b")

        async def queued() -> bool:
            async with session.get(API + "/lock", params={"key": key}) as resp:
                state = await resp.json()
            return bool(state.get("waiting"))

        async def one_round(holder: int) -> float:
            waiter = asyncio.create_task(
                _post(session, "/acquire", {"key": key, "owner": two[1 - holder],
                                            "wait": ACQUIRE_WAIT})
            )
            await _until(queued, waiter, "HTTP handoff")
            released = time.perf_counter()
            await _post(session, "/release", {"key": key, "owner": two[holder]})
            return (await waiter) - released

        _progress(f"HTTP handoffs ({ctx.seconds:g}s)")
        try:
            await _post(session, "/acquire", {"key": key, "owner": two[0], "wait": ACQUIRE_WAIT})
            handoffs = await _handoffs(ctx.seconds, one_round)
        finally:
            await _let_go(runtime.engine, [Owner(o) for o in (*owners, *two)])
        return pairs, handoffs


# -- floors -------------------------------------------------------------------------------------


def _sqlite_floor_loop(path: Path, synchronous: str, busy_timeout: float, seconds: float) -> tuple[
    Measured, str
]:
    """The bare pair in one thread that owns the connection, as the backend's thread does.

    Same pragmas as `SqliteBackend._open`; a scratch table shaped like a grant row. Returns the
    measurement and the journal mode SQLite actually chose (WAL can be refused by some
    filesystems, which changes every figure).
    """
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout)
    try:
        journal = str(db.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute(
            "CREATE TABLE IF NOT EXISTS floor (key TEXT PRIMARY KEY, owner TEXT NOT NULL,"
            " token INTEGER NOT NULL, acquired_at REAL NOT NULL)"
        )

        def pair(token: int) -> None:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO floor VALUES (?, ?, ?, ?)",
                       ("bench:floor", "bench-floor", token, time.time()))
            db.execute("COMMIT")
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM floor WHERE key = ?", ("bench:floor",))
            db.execute("COMMIT")

        for token in range(WARMUP_PAIRS):
            pair(token)
        samples: list[float] = []
        start = time.perf_counter()
        deadline = start + seconds
        while len(samples) < MAX_PAIRS:
            began = time.perf_counter()
            if began >= deadline:
                break
            pair(len(samples))
            samples.append(time.perf_counter() - began)
        elapsed = time.perf_counter() - start
    finally:
        db.close()
    samples.sort()
    return Measured(len(samples), elapsed, samples), journal


async def sqlite_floor(ctx: Context) -> tuple[Measured, str]:
    sync = ctx.settings.sqlite.synchronous.upper()
    if sync not in SQLITE_SYNCHRONOUS:
        raise BenchmarkError(f"unexpected sqlite.synchronous {sync!r}")
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-floor")
    try:
        measured, journal = await asyncio.get_running_loop().run_in_executor(
            executor, _sqlite_floor_loop, ctx.scratch / "floor.db", sync,
            ctx.settings.sqlite.busy_timeout, ctx.seconds,
        )
    finally:
        executor.shutdown(wait=True)
    return measured, f"journal_mode={journal}"


async def memory_floor(ctx: Context) -> tuple[Measured, str]:
    """A dict set and a dict delete, each behind an `await` like the backend's `run`."""
    table: dict[str, tuple[str, int, float]] = {}

    async def put(key: str, token: int) -> None:
        table[key] = ("bench-floor", token, time.time())

    async def delete(key: str) -> None:
        del table[key]

    async def pair(worker: int) -> None:
        key = f"{ctx.prefix}floor{worker}"
        await put(key, worker)
        await delete(key)

    return await _pairs(1, ctx.seconds, pair), ""


async def redis_floor(ctx: Context) -> tuple[Measured, str]:
    from sidecar.cli.benchmark_redis import redis_floor as floor

    return await floor(ctx)


FLOORS: dict[str, tuple[str, Floor]] = {
    "sqlite": (
        "bare BEGIN IMMEDIATE; INSERT; COMMIT + BEGIN IMMEDIATE; DELETE; COMMIT,"
        " same pragmas, one thread, scratch file",
        sqlite_floor,
    ),
    "memory": ("dict set + delete, each awaited, one asyncio task", memory_floor),
    "redis": (
        "bare SET NX PX + DEL on the same Redis, redis-py asyncio, as many tasks as workers",
        redis_floor,
    ),
}


# -- the report ---------------------------------------------------------------------------------


def _out(line: str = "") -> None:
    print(line, flush=True)


def _progress(what: str) -> None:
    print(f"measuring {what}...", file=sys.stderr, flush=True)


def _ratio(value: float) -> str:
    return f"{value:.2f}" if value >= 0.1 else f"{value:.4f}"


def _pairs_line(label: str, m: Measured, workers: int) -> str:
    return (
        f"{label}: {m.rate:.1f} pairs/s  {m.percentiles()}  ({m.count} pairs, {workers} workers)"
    )


def _handoff_line(label: str, m: Measured) -> str:
    return f"{label}: {m.percentiles()}  ({m.count} handoffs)"


def _settings_line(settings: Settings, backend_cls: type[Backend]) -> str:
    if settings.backend == "sqlite":
        s = settings.sqlite
        return (
            f"settings: synchronous={s.synchronous.upper()}  journal_mode=WAL"
            f"  busy-timeout={s.busy_timeout:g}s"
        )
    if settings.backend == "memory":
        return "settings: none (this process's memory, not durable)"
    return f"settings: durable={backend_cls.durable} (see `atlantis-sidecar config show`)"


def _described(backend: Backend) -> str:
    """What the backend itself says about how it is built (group commit, ...).

    Asked of the backend rather than re-derived here, so that settings a backend grows later
    (such as sqlite's group commit under `batch-processing`) show up in the report unasked.
    """
    described = backend.describe()
    shown = {k: v for k, v in described.items() if k not in ("name", "durable", "path")}
    return "  ".join(f"{k}={v}" for k, v in shown.items()) or "nothing more"


async def _measure(ctx: Context, backend_cls: type[Backend]) -> None:
    if ctx.settings.backend != "redis":
        await _measure_backend(ctx, backend_cls)
        return
    from sidecar.cli.benchmark_redis import remove_scratch_keys

    try:
        await _measure_backend(ctx, backend_cls)
    finally:
        await remove_scratch_keys(ctx.settings)


async def _measure_backend(ctx: Context, backend_cls: type[Backend]) -> None:
    name = ctx.settings.backend
    _out("atlantis-sidecar locks benchmark")
    _out(f"backend: {name} ({'durable' if backend_cls.durable else 'not durable'})")
    _out(_settings_line(ctx.settings, backend_cls))
    in_process = ctx.runtime("in-process")  # built (no I/O yet) to describe what is measured
    _out(f"backend reports: {_described(in_process.backend)}")
    _out(f"scratch: {ctx.scratch} (removed afterwards; the live lock store is not opened)")
    _out(f"keys: {ctx.prefix}*")
    _out(f"duration: {ctx.seconds:g}s per measurement (at most {MAX_PAIRS} pairs,"
         f" {MAX_HANDOFFS} handoffs)")
    _out(f"concurrency: {ctx.concurrency} workers")
    _out(f"event loop: {type(asyncio.get_running_loop()).__module__.split('.')[0]}"
         " (HTTP client and server share it)")
    _out()

    floor_entry = FLOORS.get(name)
    measured = await measure_in_process(
        ctx, in_process, floor_entry[1] if floor_entry is not None else None
    )
    in_pairs, in_handoffs, floor = measured.pairs, measured.handoffs, measured.floor
    _out(_pairs_line("in-process", in_pairs, ctx.concurrency))
    http_pairs, http_handoffs = await measure_http(ctx)
    _out(_pairs_line("http", http_pairs, ctx.concurrency))
    _out(_handoff_line("handoff in-process (release -> next waiter granted)", in_handoffs))
    _out(_handoff_line("handoff http (release sent -> waiter's answer read)", http_handoffs))
    if floor_entry is None or floor is None:
        _out(f"floor: not defined for {name}")
    else:
        note = f", {measured.floor_note}" if measured.floor_note else ""
        _out(f"floor: {floor.rate:.1f} pairs/s  {floor.percentiles()}  ({floor.count} pairs;"
             f" {floor_entry[0]}{note}; half before, half after the in-process pairs)")

    _out()
    ratio: float | None = None
    if floor is not None and floor.rate > 0:
        ratio = in_pairs.rate / floor.rate
        _out(f"ratio in-process/floor: {_ratio(ratio)}")
        _out(f"ratio http/floor: {_ratio(http_pairs.rate / floor.rate)}")
    else:
        _out("ratio in-process/floor: n/a")
        _out("ratio http/floor: n/a")
    peer_targets: list[str] = []
    if name == "redis":  # the peers on the same Redis, and handoffs between two replicas
        from sidecar.cli import benchmark_redis

        peers = await benchmark_redis.measure_peers(ctx)
        for line in benchmark_redis.report(ctx, in_pairs, peers):
            _out(line)
        peer_targets = benchmark_redis.targets(in_pairs, peers)

    _out()
    _out("targets:")
    if ratio is None:
        _out(f"  in-process/floor: n/a (floor not defined for {name})")
    else:
        verdict = "ok" if ratio >= TARGET_RATIO else "below target"
        _out(f"  in-process/floor = {_ratio(ratio)} (target >= {TARGET_RATIO:g}): {verdict}")
    p50 = in_handoffs.ms(50)
    if name == "memory":
        verdict = "ok" if p50 <= TARGET_HANDOFF_P50_MS else "below target"
    else:
        verdict = "n/a (the target is for memory)"
    _out(f"  handoff p50 = {p50:.3f} ms (target <= {TARGET_HANDOFF_P50_MS:g} ms on memory):"
         f" {verdict}")
    for line in peer_targets:
        _out(line)


def _scratch_dir(settings: Settings, durable: bool) -> tuple[Path, Path | None]:
    """A fresh directory for scratch stores; also the data dir if we had to create it.

    Durable backends get it inside the data dir, so the scratch file sits on the same
    filesystem as the live one; others (which keep nothing on disk) get the system temp dir.
    """
    if not durable:
        return Path(tempfile.mkdtemp(prefix=f"atlantis-bench-{os.getpid()}-")), None
    data = settings.data_path
    created = None if data.exists() else data
    data.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"bench-{os.getpid()}-", dir=data)), created


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when available, because `serve` runs on it and figures should match production."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_benchmark(settings: Settings, plugins: Plugins, args: argparse.Namespace) -> int:
    """Print the report; 0 when measured (whatever the figures), 1 on errors, 2 on bad args."""
    try:
        seconds = parse_duration(args.duration)
    except ValueError as exc:
        print(f"error: --duration: {exc}", file=sys.stderr)
        return 2
    concurrency = int(args.concurrency)
    if concurrency < 1:
        print("error: --concurrency must be at least 1", file=sys.stderr)
        return 2
    try:
        backend_cls = plugins.backends.get(settings.backend)
    except UnknownName as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    scratch, created = _scratch_dir(settings, backend_cls.durable)
    ctx = Context(settings, plugins, scratch, seconds, concurrency, f"bench:{os.getpid()}:")
    try:
        with asyncio.Runner(loop_factory=_new_loop) as runner:
            runner.run(_measure(ctx, backend_cls))
    except (BenchmarkError, LockError, OSError, sqlite3.Error, aiohttp.ClientError,
            TimeoutError) as exc:
        print(f"error: benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if created is not None:
            with contextlib.suppress(OSError):
                created.rmdir()  # only if still empty: never remove what someone else put there
    return 0
