"""`locks benchmark` on Redis: the floor, the peers on the same Redis, and handoffs that cross
from one sidecar replica to another.

- **floor**: a bare `SET key value NX PX` + `DEL` pair with redis-py's asyncio client, as many
  tasks as the engine has workers and the same connection settings: what the storage costs with
  nothing of ours around it.
- **peers**: redis-py's `Lock` and python-redis-lock's `redis_lock.Lock` (the most used lock
  library; installed only to run this, never a dependency of the sidecar), each from as many
  threads as the engine has workers, one process, like the engine.
- **handoff across two replicas**: two engines in this process, each with its own backend (its
  own replica id, connections and pub/sub subscriber): the holder releases on one, the waiter on
  the other is granted. python-redis-lock's handoff is measured the way its users see it: the
  holder releases, and a waiter blocked in another process returns from `acquire`. The two are
  taken in alternating blocks, so that the machine's drift does not fall on one of them.

Everything lives under a scratch key prefix (`<key-prefix>bench-<pid>:`), removed at the end; the
live lock space under `key-prefix` itself is never read or written.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from typing import TYPE_CHECKING, Any

from sidecar.cli.benchmark import (
    MAX_HANDOFFS,
    MAX_PAIRS,
    WARMUP_HANDOFFS,
    WARMUP_PAIRS,
    BenchmarkError,
    Context,
    Measured,
    _grab,
    _let_go,
    _pairs,
    _progress,
    _running,
)
from sidecar.config import RedisSettings, Settings
from sidecar.config.checks import split_host_port
from sidecar.engine.model import Owner, Request

if TYPE_CHECKING:
    import redis

TARGET_PEER_RATIO = 1.0
#: Our handoffs and python-redis-lock's are measured in this many alternating blocks each.
HANDOFF_BLOCKS = 5
TARGET_REPLICA_HANDOFF_P50_MS = 2.0
#: How long a lock key of a peer lives if the benchmark dies holding it.
PEER_EXPIRE_SECONDS = 10
#: How long python-redis-lock's waiter may take to block in BLPOP before we call it a bug.
BLOCKED_TIMEOUT = 5.0
MISSING_PEER = (
    "python-redis-lock is not installed, so it is not measured: `pip install python-redis-lock`"
    " into this venv to compare (only this benchmark uses it; the sidecar does not need it)"
)


def scratch_prefix(settings: Settings) -> str:
    return f"{settings.redis.key_prefix}bench-{os.getpid()}:"


def _tagged(ctx: Context, what: str) -> str:
    """A peer's key: under the scratch prefix and in the engine's hash tag (same Cluster slot,
    so every measurement talks to the same Redis node)."""
    return f"{scratch_prefix(ctx.settings)}{{locks}}:{what}"


# -- the floor -----------------------------------------------------------------------------------


async def redis_floor(ctx: Context) -> tuple[Measured, str]:
    from plugins.backends.redis.connection import build_client

    client, sentinels = build_client(ctx.settings.redis, "atlantis-sidecar-bench-floor")
    try:

        async def pair(worker: int) -> None:
            key = _tagged(ctx, f"floor:{worker}")
            if not await client.set(key, "bench", nx=True, px=PEER_EXPIRE_SECONDS * 1000):
                raise BenchmarkError(f"floor: SET NX of {key!r} found the key already set")
            await client.delete(key)

        return await _pairs(ctx.concurrency, ctx.seconds, pair), ""
    finally:
        for c in [client, *sentinels]:
            await c.aclose()


async def transport_floor(ctx: Context) -> Measured:
    """The same pair on the backend's own transport (RESP written on its pooled connections,
    no redis-py command layer): the floor a lock engine with that transport could reach."""
    from plugins.backends.redis.connection import Connection
    from plugins.backends.redis.resp import Prefix

    conn = Connection(ctx.settings.redis, "atlantis-sidecar-bench-transport")
    set_nx, delete = Prefix.of("SET"), Prefix.of("DEL")
    try:

        async def pair(worker: int) -> None:
            key = _tagged(ctx, f"transport:{worker}")
            if (
                await conn.command(set_nx, key, "bench", "NX", "PX", PEER_EXPIRE_SECONDS * 1000)
                is None
            ):
                raise BenchmarkError(f"floor: SET NX of {key!r} found the key already set")
            await conn.command(delete, key)

        return await _pairs(ctx.concurrency, ctx.seconds, pair)
    finally:
        await conn.close()


# -- peers (synchronous libraries, one thread per worker) ----------------------------------------


def sync_client(settings: RedisSettings) -> redis.Redis | redis.RedisCluster:
    """A synchronous redis-py client for the configured deployment (the peers are sync)."""
    import redis
    from redis.cluster import ClusterNode
    from redis.sentinel import Sentinel

    from plugins.backends.redis.connection import tls_kwargs

    kwargs: dict[str, Any] = {
        "username": settings.username or None,
        "password": settings.password or None,
        "socket_connect_timeout": settings.dial_timeout,
        "socket_timeout": settings.dial_timeout + settings.write_timeout + settings.read_timeout,
    }
    kwargs.update(tls_kwargs(settings))
    if settings.cluster_nodes:
        nodes = [
            ClusterNode(*split_host_port(n))  # type: ignore[no-untyped-call]
            for n in settings.cluster_nodes
        ]
        return redis.RedisCluster(startup_nodes=nodes, **kwargs)
    if settings.sentinel.nodes:
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            [split_host_port(n) for n in settings.sentinel.nodes]
        )
        master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            settings.sentinel.master_name, db=settings.db, **kwargs
        )
        return master
    return redis.Redis(host=settings.host, port=settings.port, db=settings.db, **kwargs)


def _thread_pairs(concurrency: int, seconds: float, pair: Callable[[int], None]) -> Measured:
    """`concurrency` threads each repeat `pair(worker)` until time or MAX_PAIRS is up."""
    samples: list[float] = []
    guard = threading.Lock()
    start = deadline = 0.0
    go = threading.Barrier(concurrency + 1)

    def run(worker: int) -> None:
        for _ in range(WARMUP_PAIRS):
            pair(worker)
        go.wait()
        go.wait()
        mine: list[float] = []
        while len(mine) * concurrency < MAX_PAIRS:
            began = time.perf_counter()
            if began >= deadline:
                break
            pair(worker)
            mine.append(time.perf_counter() - began)
        with guard:
            samples.extend(mine)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(run, n) for n in range(concurrency)]
        go.wait()  # everyone warmed up
        start = time.perf_counter()
        deadline = start + seconds
        go.wait()
        for future in futures:
            future.result()
    elapsed = time.perf_counter() - start
    samples.sort()
    return Measured(len(samples), elapsed, samples)


def bare_pairs(ctx: Context) -> Measured:
    """The floor measured like the peers: SET NX PX + DEL from threads, synchronous client."""
    client = sync_client(ctx.settings.redis)
    try:

        def pair(worker: int) -> None:
            key = _tagged(ctx, f"bare:{worker}")
            if not client.set(key, "bench", nx=True, px=PEER_EXPIRE_SECONDS * 1000):
                raise BenchmarkError(f"bare pair: SET NX of {key!r} found the key already set")
            client.delete(key)

        return _thread_pairs(ctx.concurrency, ctx.seconds, pair)
    finally:
        client.close()


def redis_py_lock_pairs(ctx: Context) -> Measured:
    client = sync_client(ctx.settings.redis)
    try:
        locks = [
            client.lock(_tagged(ctx, f"redis-py:{n}"), timeout=PEER_EXPIRE_SECONDS)
            for n in range(ctx.concurrency)
        ]

        def pair(worker: int) -> None:
            if not locks[worker].acquire(blocking=True, blocking_timeout=5):
                raise BenchmarkError("redis-py Lock: not acquired within 5 s")
            locks[worker].release()

        return _thread_pairs(ctx.concurrency, ctx.seconds, pair)
    finally:
        client.close()


def python_redis_lock_pairs(ctx: Context) -> Measured:
    import redis_lock

    client = sync_client(ctx.settings.redis)
    try:
        locks = [
            redis_lock.Lock(client, _tagged(ctx, f"prl:{n}"), expire=PEER_EXPIRE_SECONDS)
            for n in range(ctx.concurrency)
        ]

        def pair(worker: int) -> None:
            if not locks[worker].acquire(blocking=True, timeout=5):
                raise BenchmarkError("python-redis-lock: not acquired within 5 s")
            locks[worker].release()

        return _thread_pairs(ctx.concurrency, ctx.seconds, pair)
    finally:
        client.close()


def _prl_waiter(settings: RedisSettings, name: str, pipe: Pipe) -> None:
    """In another process: on each "wait", block in acquire, note when it returned, release."""
    import redis_lock

    client = sync_client(settings)
    lock = redis_lock.Lock(client, name, expire=PEER_EXPIRE_SECONDS)
    try:
        while pipe.recv() == "wait":
            lock.acquire(blocking=True)
            returned = time.monotonic()  # CLOCK_MONOTONIC: comparable across processes
            lock.release()
            pipe.send(returned)
    finally:
        client.close()


def _blocked_clients(client: redis.Redis | redis.RedisCluster, key: str) -> int:
    """How many clients are blocked (BLPOP) on the node that holds `key`."""
    from redis.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
        clients = client.client_list(target_nodes=node)
    else:
        clients = client.client_list()
    return sum("b" in c.get("flags", "") for c in clients)


@contextlib.contextmanager
def python_redis_lock_handoffs(ctx: Context) -> Iterator[Callable[[], float]]:
    """Rounds of: the holder (here) releases; a waiter blocked in another process returns from
    acquire. Each round blocks: run them in a thread."""
    import redis_lock

    name = _tagged(ctx, "prl:handoff")
    client = sync_client(ctx.settings.redis)
    lock = redis_lock.Lock(client, name, expire=PEER_EXPIRE_SECONDS)
    spawn = multiprocessing.get_context("spawn")
    ours, theirs = spawn.Pipe()
    waiter = spawn.Process(target=_prl_waiter, args=(ctx.settings.redis, name, theirs), daemon=True)
    waiter.start()
    try:

        def one_round() -> float:
            lock.acquire(blocking=True)
            ours.send("wait")
            give_up = time.monotonic() + BLOCKED_TIMEOUT
            while _blocked_clients(client, "lock-signal:" + name) == 0:
                if time.monotonic() > give_up or not waiter.is_alive():
                    raise BenchmarkError("python-redis-lock handoff: the waiter never blocked")
                time.sleep(0.0002)
            released = time.monotonic()
            lock.release()
            if not ours.poll(BLOCKED_TIMEOUT):
                raise BenchmarkError("python-redis-lock handoff: the waiter never returned")
            returned: float = ours.recv()
            return returned - released

        yield one_round
    finally:
        ours.send("stop")
        waiter.join(5)
        if waiter.is_alive():
            waiter.kill()
        client.close()


# -- our handoff across two replicas -------------------------------------------------------------


async def _received(pipe: Pipe) -> Any:
    """The next object from `pipe`, read when the event loop sees it ready: no thread to wake
    (which, on a small machine, took a CPU from the very processes being measured)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(pipe.fileno(), readable)
    try:
        if not pipe.poll():
            await ready
    finally:
        loop.remove_reader(pipe.fileno())
    return pipe.recv()


async def _from_replica(pipe: Pipe, seconds: float, what: str) -> Any:
    try:
        async with asyncio.timeout(seconds):
            return await _received(pipe)
    except TimeoutError:
        raise BenchmarkError(f"handoff across replicas: the other replica {what}") from None


def _replica_process(settings: Settings, key: str, owner: str, pipe: Pipe) -> None:
    """The other replica, in a process of its own (own backend, replica id, subscriber, event
    loop): on each "wait", acquire `key` (queued behind the holder, granted by the holder's
    release on the other replica), note when the acquire returned, release, answer the time.

    Once its request is queued and its own deadlock check done, the acquire has nothing left
    to do but wait: it says "waiting" then, and only then does the holder release. (Releasing
    as soon as the request shows in the queue raced that check for the waiter's own CPU and
    Redis, which a waiter of seconds never does; python-redis-lock's holder, likewise,
    releases once its waiter is blocked in BLPOP.)"""
    from sidecar.cli.benchmark import _new_loop
    from sidecar.plugin.manager import Plugins
    from sidecar.runtime import ConfigSource, Runtime

    async def serve() -> None:
        plugins = Plugins.load(env=dict(os.environ), entry_points=False)
        runtime = Runtime.build(settings, plugins, ConfigSource(None, {}))
        async with _running(runtime) as engine:
            check = engine.on_wait

            async def checked(request: Request) -> None:
                if check is not None:
                    await check(request)
                pipe.send("waiting")

            engine.on_wait = checked
            pipe.send("ready")
            while await _received(pipe) == "wait":
                await _grab(engine, key, Owner(owner))
                returned = time.monotonic()  # CLOCK_MONOTONIC: comparable across processes
                await engine.release(owner, [key])
                pipe.send(returned)

    with asyncio.Runner(loop_factory=_new_loop) as runner:
        runner.run(serve())


@contextlib.asynccontextmanager
async def replica_handoffs(ctx: Context) -> AsyncIterator[Callable[[], Awaitable[float]]]:
    """Rounds of: the holder releases on this replica once the waiter, queued through another
    replica in another process, waits; the waiter is granted (pub/sub) and its acquire returns.
    Measured the way python-redis-lock's handoff is, so that the two figures compare."""
    loop = asyncio.get_running_loop()
    key = f"{ctx.prefix}across-replicas"
    holder, waiting = Owner(f"bench-{os.getpid()}-ra"), f"bench-{os.getpid()}-rb"
    spawn = multiprocessing.get_context("spawn")
    ours, theirs = spawn.Pipe()
    other = spawn.Process(
        target=_replica_process,
        args=(ctx.scratch_settings("replica-b"), key, waiting, theirs),
        daemon=True,
    )
    other.start()
    try:
        await _from_replica(ours, 30.0, "did not start")
        async with _running(ctx.runtime("replica-a")) as engine:

            async def one_round() -> float:
                await _grab(engine, key, holder)
                ours.send("wait")
                said = await _from_replica(ours, BLOCKED_TIMEOUT, "never queued")
                if said != "waiting":
                    raise BenchmarkError(f"handoff across replicas: the waiter said {said!r}")
                released = time.monotonic()
                await engine.release(holder.id, [key])
                returned: float = await _from_replica(ours, BLOCKED_TIMEOUT, "never returned")
                return returned - released

            try:
                yield one_round
            finally:
                await _let_go(engine, [holder, Owner(waiting)])
    finally:
        ours.send("stop")
        await loop.run_in_executor(None, other.join, 10)
        if other.is_alive():
            other.kill()


def _rounds_for(one_round: Callable[[], float], seconds: float, limit: int) -> list[float]:
    """As many rounds as `seconds` allow, at most `limit` (in a thread)."""
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(samples) < limit and time.perf_counter() < deadline:
        samples.append(one_round())
    return samples


async def handoffs(ctx: Context, *, with_peer: bool) -> tuple[Measured, Measured | None]:
    """Our handoffs across replicas and, when `with_peer`, python-redis-lock's, taken in
    HANDOFF_BLOCKS alternating blocks: on these machines speed drifts within seconds, and two
    figures taken one after the other compared that drift as much as the two handoffs."""
    loop = asyncio.get_running_loop()
    block = ctx.seconds / HANDOFF_BLOCKS
    ours: list[float] = []
    theirs: list[float] = []
    async with contextlib.AsyncExitStack() as stack:
        our_round = await stack.enter_async_context(replica_handoffs(ctx))
        their_round = stack.enter_context(python_redis_lock_handoffs(ctx)) if with_peer else None
        for _ in range(WARMUP_HANDOFFS):
            await our_round()
        if their_round is not None:
            await loop.run_in_executor(None, _rounds_for, their_round, 60.0, WARMUP_HANDOFFS)
        for _ in range(HANDOFF_BLOCKS):
            deadline = time.perf_counter() + block
            while len(ours) < MAX_HANDOFFS and time.perf_counter() < deadline:
                ours.append(await our_round())
            if their_round is not None:
                theirs += await loop.run_in_executor(
                    None, _rounds_for, their_round, block, MAX_HANDOFFS - len(theirs)
                )
    return Measured(len(ours), ctx.seconds, sorted(ours)), (
        Measured(len(theirs), ctx.seconds, sorted(theirs)) if with_peer else None
    )


# -- putting it together -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Peers:
    transport_floor: Measured
    bare: Measured
    redis_py: Measured
    python_redis_lock: Measured | None
    replica_handoffs: Measured
    python_redis_lock_handoffs: Measured | None


async def measure_peers(ctx: Context) -> Peers:
    logging.getLogger("redis_lock").setLevel(logging.WARNING)  # it logs every acquire at INFO
    loop = asyncio.get_running_loop()
    have_prl = importlib.util.find_spec("redis_lock") is not None
    _progress(f"the floor on the backend's transport ({ctx.seconds:g}s)")
    transport = await transport_floor(ctx)
    _progress(f"peer bare SET NX PX + DEL pairs ({ctx.seconds:g}s)")
    bare = await loop.run_in_executor(None, bare_pairs, ctx)
    _progress(f"peer redis-py Lock pairs ({ctx.seconds:g}s)")
    redis_py = await loop.run_in_executor(None, redis_py_lock_pairs, ctx)
    prl = prl_handoffs = None
    if have_prl:
        _progress(f"peer python-redis-lock pairs ({ctx.seconds:g}s)")
        prl = await loop.run_in_executor(None, python_redis_lock_pairs, ctx)
    peer = " and peer python-redis-lock's, alternating" if have_prl else ""
    _progress(f"handoffs across two replicas{peer} ({ctx.seconds:g}s each)")
    replicas, prl_handoffs = await handoffs(ctx, with_peer=have_prl)
    return Peers(transport, bare, redis_py, prl, replicas, prl_handoffs)


def report(ctx: Context, in_process: Measured, peers: Peers) -> list[str]:
    """The Redis part of the report: peer figures, ratios, then (after a blank) target lines."""
    from sidecar.cli.benchmark import _handoff_line, _ratio

    threads = f"{ctx.concurrency} threads, one process"
    raw = peers.transport_floor
    lines = [
        f"floor on the backend's transport: {raw.rate:.1f} pairs/s  {raw.percentiles()}"
        f"  ({raw.count} pairs; the same SET NX PX + DEL written as RESP on the backend's own"
        " pooled connections, as the backend sends its calls)",
        f"ratio in-process/floor on the backend's transport: {_ratio(in_process.rate / raw.rate)}",
        f"peer bare SET NX PX + DEL: {peers.bare.rate:.1f} pairs/s  {peers.bare.percentiles()}"
        f"  ({peers.bare.count} pairs, {threads}: the floor measured like the peers below)",
        f"peer redis-py Lock: {peers.redis_py.rate:.1f} pairs/s  {peers.redis_py.percentiles()}"
        f"  ({peers.redis_py.count} pairs, {threads})",
    ]
    prl = peers.python_redis_lock
    if prl is None:
        lines.append(f"peer python-redis-lock: {MISSING_PEER}")
    else:
        lines.append(
            f"peer python-redis-lock: {prl.rate:.1f} pairs/s  {prl.percentiles()}"
            f"  ({prl.count} pairs, {threads})"
        )
    lines.append(
        _handoff_line(
            "handoff across two replicas (release on one -> waiter on the other, in another"
            " process, returns)",
            peers.replica_handoffs,
        )
    )
    if peers.python_redis_lock_handoffs is not None:
        lines.append(
            _handoff_line(
                "handoff python-redis-lock (release -> waiter blocked in another process returns)",
                peers.python_redis_lock_handoffs,
            )
        )
    lines.append(
        f"ratio in-process/peer bare SET NX PX + DEL: {_ratio(in_process.rate / peers.bare.rate)}"
    )
    lines.append(f"ratio in-process/redis-py Lock: {_ratio(in_process.rate / peers.redis_py.rate)}")
    if prl is not None:
        lines.append(f"ratio in-process/python-redis-lock: {_ratio(in_process.rate / prl.rate)}")
    return lines


def targets(in_process: Measured, peers: Peers) -> list[str]:
    from sidecar.cli.benchmark import _ratio

    lines = []
    prl = peers.python_redis_lock
    if prl is None:
        lines.append("  in-process/python-redis-lock: n/a (python-redis-lock not installed)")
    else:
        ratio = in_process.rate / prl.rate
        verdict = "ok" if ratio >= TARGET_PEER_RATIO else "below target"
        lines.append(
            f"  in-process/python-redis-lock = {_ratio(ratio)}"
            f" (target >= {TARGET_PEER_RATIO:g}): {verdict}"
        )
    p50 = peers.replica_handoffs.ms(50)
    verdict = "ok" if p50 <= TARGET_REPLICA_HANDOFF_P50_MS else "below target"
    theirs = peers.python_redis_lock_handoffs
    versus = (
        f"; python-redis-lock's p50 is {theirs.ms(50):.3f} ms"
        f" ({'beaten' if p50 < theirs.ms(50) else 'not beaten'})"
        if theirs is not None
        else ""
    )
    lines.append(
        f"  handoff across replicas p50 = {p50:.3f} ms"
        f" (target <= {TARGET_REPLICA_HANDOFF_P50_MS:g} ms): {verdict}{versus}"
    )
    return lines


def _glob_escaped(text: str) -> str:
    return "".join("\\" + c if c in "\\*?[]" else c for c in text)


async def remove_scratch_keys(settings: Settings) -> int:
    """Delete every key the benchmark wrote (ours under the scratch prefix, and the peers')."""
    from plugins.backends.redis.connection import build_client

    prefix = scratch_prefix(settings)
    client, sentinels = build_client(settings.redis, "atlantis-sidecar-bench-cleanup")
    removed = 0
    try:
        for pattern in (prefix, "lock:" + prefix, "lock-signal:" + prefix):
            async for key in client.scan_iter(match=_glob_escaped(pattern) + "*", count=500):
                removed += await client.delete(key)
    finally:
        for c in [client, *sentinels]:
            await c.aclose()
    return removed
