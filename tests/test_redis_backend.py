"""The Redis backend beyond the shared contract: replicas in one process, each with its own
backend (its own replica id, connections and pub/sub subscriber) on the same real servers.

Every test runs on standalone Redis, on a 3-master Cluster and on Sentinel.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from plugins.backends.redis import RedisBackend
from plugins.backends.redis.backend import key_base
from plugins.backends.redis.codec import encode_request
from sidecar.config import load
from sidecar.engine.manager import Granted, LockManager, StillQueued
from sidecar.engine.model import Owner, Priority, Request
from sidecar.errors import Code, LockError
from sidecar.metrics.stats import EngineStats
from sidecar.plugin.manager import Plugins
from sidecar.runtime import engine_settings, overflow_policy
from tests.conftest import REDIS_DEPLOYMENTS, Clock, MakeEngine, backend_settings, use_backend
from tests.redis_servers import Deployment
from tests.test_backend_contract import holder, take


@pytest.fixture(params=list(REDIS_DEPLOYMENTS))
def backend_name(request: pytest.FixtureRequest) -> str:
    return use_backend(request, str(request.param))


@pytest.fixture
def deployment(request: pytest.FixtureRequest, backend_name: str) -> Deployment:
    found: Deployment = request.getfixturevalue(REDIS_DEPLOYMENTS[backend_name])
    return found


def data_servers(deployment: Deployment) -> list[redis.Redis]:
    return [s.client() for s in deployment.servers if not s.sentinel]


def kill_pubsub_connections(deployment: Deployment) -> None:
    """Drop every pub/sub connection, as a network blip or a server restart would."""
    for client in data_servers(deployment):
        with client:
            client.client_kill_filter(_type="pubsub")


async def cut_off(deployment: Deployment, replica: LockManager) -> None:
    """Drop every pub/sub connection and wait until `replica` knows (made with a long
    retry-delay, it then stays deaf to grant messages)."""
    kill_pubsub_connections(deployment)
    await wait_until(lambda: str(backend_of(replica).describe()["pubsub"]).startswith("reconn"))


Acquiring = asyncio.Task[Granted | StillQueued]


async def bob_waits_on_another_replica(
    make_engine: MakeEngine,
) -> tuple[LockManager, LockManager, Request, Acquiring]:
    """alice holds `k` on a first replica; bob's acquire of `k` waits on a second one."""
    first, second = await make_engine(), await make_engine()
    await take(first, "k", "alice")
    request, wait = second.new_request(["k"], Owner("bob"), wait=10)
    waiter = asyncio.create_task(second.acquire(request, wait))
    await wait_until(lambda: request.id in backend_of(second)._queued)
    return first, second, request, waiter


async def alive_and_ghost(make_engine: MakeEngine) -> tuple[Clock, LockManager, LockManager]:
    """Two replicas on one clock; the second, once cut off, stops answering: its subscriber
    does not come back in time (a long retry-delay)."""
    clock = Clock()
    return clock, await make_engine(clock), await make_engine(clock, redis__retry_delay=60.0)


async def queued_through(replica: LockManager, clock: Clock, key: str, owner: str) -> Request:
    """A request queued through `replica`'s backend alone: no caller waits for it there."""
    request, _ = replica.new_request([key], Owner(owner), wait=60)
    queued = await replica.backend.acquire(request, now=clock.now, queue_if_busy=True, max_queue=99)
    assert queued.status == "queued"
    return request


async def wait_until(predicate: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def library_names(deployment: Deployment) -> list[bytes]:
    names: list[bytes] = []
    for client in data_servers(deployment):
        with client:
            if client.info("replication")["role"] == "master":
                for library in client.function_list():  # [b"library_name", name, ...]
                    names.append(
                        dict(zip(library[::2], library[1::2], strict=True))[b"library_name"]
                    )
    return names


def backend_of(engine: LockManager) -> RedisBackend:
    assert isinstance(engine.backend, RedisBackend)
    return engine.backend


async def test_a_release_on_one_replica_wakes_the_waiter_on_another_at_once(
    make_engine: MakeEngine,
) -> None:
    first, second = await make_engine(), await make_engine()
    assert backend_of(first).replica != backend_of(second).replica
    await take(first, "k", "alice")
    request, wait = second.new_request(["k"], Owner("bob"), wait=10)
    waiter = asyncio.create_task(second.acquire(request, wait))
    await wait_until(lambda: request.id in second._waiters and not waiter.done())
    await asyncio.sleep(0.05)
    await first.release("alice", ["k"])
    # These engines run no sweeper, so no catch-up either: only the notification can wake it.
    result = await asyncio.wait_for(waiter, 5)
    assert isinstance(result, Granted) and [g.token for g in result.grants] == [2]


async def test_a_malformed_message_on_a_replicas_channel_is_ignored(
    make_engine: MakeEngine, deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    first, second, request, waiter = await bob_waits_on_another_replica(make_engine)
    junk = ["g 1", f"g x 1.5 {request.id}", "g 2 soon " + request.id, "{", '{"t":"g"}', "[1]"]
    with data_servers(deployment)[0] as client:  # in a Cluster, any node publishes to all
        for message in junk:
            client.publish(backend_of(second).channel, message)
    await wait_until(lambda: caplog.text.count("ignoring a malformed message") == len(junk))
    assert not waiter.done()
    await first.release("alice", ["k"])
    result = await asyncio.wait_for(waiter, 5)
    assert isinstance(result, Granted) and [g.token for g in result.grants] == [2]


async def test_a_grant_for_a_request_the_replica_no_longer_remembers_is_read_back_at_once(
    make_engine: MakeEngine, deployment: Deployment
) -> None:
    # A grant message names the request and carries its grants; the replica that queued the
    # request supplies the rest. One that forgot it (more than REMEMBERED_REQUESTS queued)
    # reads the grant back from Redis, which claims it.
    first, second, request, waiter = await bob_waits_on_another_replica(make_engine)
    backend_of(second)._queued.clear()
    await first.release("alice", ["k"])
    result = await asyncio.wait_for(waiter, 5)  # no sweeper here: no catch-up either
    assert isinstance(result, Granted) and result.request.id == request.id
    assert [(g.owner.id, g.token) for g in result.grants] == [("bob", 2)]
    pickups = key_base(backend_of(first).settings.key_prefix) + "pickups"
    unclaimed = []
    for client in data_servers(deployment):
        with client:
            try:
                unclaimed.append(client.zcard(pickups))
            except (redis.exceptions.MovedError, redis.exceptions.ReadOnlyError):
                continue  # another node's slot, or a replica
    assert unclaimed and not any(unclaimed)  # claimed by the read


async def test_a_replica_remembers_only_the_requests_still_waiting_on_it(
    make_engine: MakeEngine,
) -> None:
    first, second = await make_engine(), await make_engine()
    await take(first, ["k", "j"], "alice")
    handed, wait = second.new_request(["k"], Owner("bob"), wait=10)
    timing_out, _ = second.new_request(["j"], Owner("carol"), wait=0.2)
    waiters = [
        asyncio.create_task(second.acquire(handed, wait)),
        asyncio.create_task(second.acquire(timing_out, 0.2)),
    ]
    await wait_until(lambda: len(backend_of(second)._queued) == 2)
    await first.release("alice", ["k"])
    assert isinstance(await asyncio.wait_for(waiters[0], 5), Granted)
    with pytest.raises(LockError):
        await asyncio.wait_for(waiters[1], 5)
    assert backend_of(second)._queued == {}


async def test_a_waiter_whose_notification_was_lost_is_granted_by_the_catch_up(
    make_engine: MakeEngine, deployment: Deployment
) -> None:
    first = await make_engine()
    second = await make_engine(redis__retry_delay=3.0)  # its subscriber comes back slowly
    await second.start()
    await take(first, "k", "alice")
    request, wait = second.new_request(["k"], Owner("bob"), wait=10)
    waiter = asyncio.create_task(second.acquire(request, wait))
    await wait_until(lambda: request.id in second._waiters)
    await cut_off(deployment, second)
    await first.release("alice", ["k"])  # its notification is published to nobody
    result = await asyncio.wait_for(waiter, 4)
    assert isinstance(result, Granted) and result.grants[0].owner.id == "bob"
    assert result.grants[0].token == 2


async def test_a_grant_its_replica_never_claims_is_revoked_and_the_key_handed_on(
    make_engine: MakeEngine, deployment: Deployment
) -> None:
    clock, alive, ghost = await alive_and_ghost(make_engine)
    await take(alive, ["k", "k2"], "holder")
    stranded = await queued_through(ghost, clock, "k", "ghost-1")
    other = await queued_through(ghost, clock, "k2", "ghost-2")
    after = await take(alive, "k", "patient")
    assert isinstance(after, StillQueued)
    await cut_off(deployment, ghost)

    await alive.release("holder", ["k"])
    assert await holder(alive, "k") == "ghost-1"  # handed on, but nobody will ever claim it
    clock.advance(4)
    assert not (await alive.sweep_once()).expired
    clock.advance(2)  # past the 5 s pickup deadline
    change = await alive.sweep_once()
    assert [g.owner.id for g in change.expired] == ["ghost-1"]
    assert sorted(e.request.owner.id for e in change.ended) == ["ghost-1", "ghost-2"]
    assert await holder(alive, "k") == "patient"
    state = await alive.backend.request_state(stranded.id)
    assert state is not None and state.state == "cancelled"
    assert state.outcome is not None and "did not claim" in state.outcome.detail
    state = await alive.backend.request_state(other.id)
    assert state is not None and state.state == "cancelled"


def on_master(deployment: Deployment, read: Callable[[redis.Redis], Any]) -> Any:
    """`read` on the server that holds the lock space (in a Cluster, the master of its slot)."""
    for client in data_servers(deployment):
        with client:
            try:
                return read(client)
            except (redis.exceptions.MovedError, redis.exceptions.ReadOnlyError):
                continue  # another node's slot, or a replica
    raise AssertionError("no server answered for the lock space")


def index_entries(deployment: Deployment, engine: LockManager, request_id: str) -> list[str]:
    """The indexes (besides its queues) that still name a request: none once it has gone."""
    backend = backend_of(engine)
    base = key_base(backend.settings.key_prefix)

    def read(client: redis.Redis) -> list[str]:
        found = [
            name
            for name in ("deadlines", "enqueued", "arrivals", "waiting", "pickups")
            if client.zscore(base + name, request_id) is not None
        ]
        found += [
            name
            for name in ("owner-requests:bob", f"replica-requests:{backend.replica}")
            if client.sismember(base + name, request_id)
        ]
        found += [str(w) for w in client.zrange(base + "all-waits", 0, -1)]
        found += [str(k) for k in client.smembers(base + "queued-keys")]
        found += ["form"] * client.exists(base + "form:" + request_id)
        counts = client.hvals(base + "by-priority")
        return found + [f"priority count {int(n)}" for n in counts if int(n)]

    found: list[str] = on_master(deployment, read)
    return found


async def test_a_request_handed_on_straight_leaves_its_indexes_to_whoever_reads_them_first(
    make_engine: MakeEngine, deployment: Deployment
) -> None:
    # The release that hands a key to a waiter on another replica does the least it can while
    # that waiter waits for it: the request's indexes follow when its replica claims the grant,
    # or when an operation that reads them comes first. Here the claim never comes.
    clock, alive, ghost = await alive_and_ghost(make_engine)
    await take(alive, "k", "holder")
    request = await queued_through(ghost, clock, "k", "bob")
    await cut_off(deployment, ghost)

    await alive.release("holder", ["k"])
    assert await holder(alive, "k") == "bob"
    assert "deadlines" in index_entries(deployment, ghost, request.id)  # left for later
    summary = await alive.backend.queue_summary()
    assert (summary.depth, summary.by_priority, summary.keys_with_waiters) == (0, {}, 0)
    assert summary.oldest_enqueued_at is None
    assert index_entries(deployment, ghost, request.id) == ["pickups"]  # still to be claimed


async def test_a_claimed_handoff_leaves_no_trace_of_its_request(
    make_engine: MakeEngine, deployment: Deployment
) -> None:
    first, second, request, waiter = await bob_waits_on_another_replica(make_engine)
    await asyncio.sleep(0.05)
    assert index_entries(deployment, second, request.id)  # while it waits
    await first.release("alice", ["k"])
    assert isinstance(await asyncio.wait_for(waiter, 5), Granted)
    await wait_until(lambda: not index_entries(deployment, second, request.id))


async def test_a_stopped_replicas_stay_queued_request_is_still_granted_later(
    make_engine: MakeEngine,
) -> None:
    clock = Clock()
    alive, leaving = await make_engine(clock), await make_engine(clock)
    await take(alive, "k", "holder")
    queued = await take(leaving, "k", "patient")  # wait 0, stays queued: the caller polls
    assert isinstance(queued, StillQueued)
    await leaving.stop()
    await leaving.backend.close()
    await alive.release("holder", ["k"])
    clock.advance(10)  # far past any pickup deadline: nobody had to claim it
    await alive.sweep_once()
    assert await holder(alive, "k") == "patient"
    state = await alive.backend.request_state(queued.request.id)
    assert state is not None and state.state == "granted"


async def test_a_caller_hanging_up_as_another_replica_grants_it_leaves_no_lock_behind(
    make_engine: MakeEngine, deployment: Deployment
) -> None:
    first = await make_engine()
    second = await make_engine(redis__retry_delay=60.0)
    await take(first, "k", "alice")
    request, wait = second.new_request(["k"], Owner("bob"), wait=30)
    caller = asyncio.create_task(second.acquire(request, wait))
    await wait_until(lambda: request.id in second._waiters)
    await asyncio.sleep(0.05)
    await cut_off(deployment, second)  # so the grant's notification cannot arrive first
    await first.release("alice", ["k"])
    assert await holder(first, "k") == "bob"
    caller.cancel()  # the HTTP caller went away just now
    with pytest.raises(asyncio.CancelledError):
        await caller
    await wait_until(lambda: not second._waiters)
    for _ in range(50):
        if await holder(first, "k") is None:
            break
        await asyncio.sleep(0.05)
    assert await holder(first, "k") is None


async def test_repeating_an_operation_whose_answer_was_lost_does_not_do_it_twice(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine()
    backend = backend_of(engine)
    conn = backend._connection()

    async def script(op: str, *args: str | int, retry: bool) -> Any:
        argv = [backend.base, backend.replica, op, "1800000000.0", "1" if retry else "0", *args]
        return json.loads(await conn.client.eval(backend.source, 1, backend.anchor, *argv))

    await take(engine, "k", "alice")
    waiting, _ = engine.new_request(["k"], Owner("bob"), wait=30)
    body = encode_request(waiting, backend.replica)
    first = await script("acquire", body, "1", 100, retry=False)
    again = await script("acquire", body, "1", 100, retry=True)
    assert first["status"] == again["status"] == "queued"
    assert (await backend.queue_summary()).depth == 1

    released = await script("release", "op-1", "alice", "k", retry=False)
    assert released["granted"][0]["request"]["owner"]["id"] == "bob"
    # The retry gets the first answer; it must not free the key bob now holds.
    assert await script("release", "op-1", "alice", "k", retry=True) == released
    assert await holder(engine, "k") == "bob"
    granted = await script("acquire", body, "1", 100, retry=True)
    assert granted["status"] == "granted" and granted["grants"][0]["token"] == 2


async def test_answers_kept_for_retried_releases_are_forgotten_after_two_minutes(
    make_engine: MakeEngine, deployment: Deployment
) -> None:
    clock = Clock()
    engine = await make_engine(clock)
    ops = key_base(backend_of(engine).settings.key_prefix) + "ops"

    def kept() -> int:
        count: int = on_master(deployment, lambda client: client.hlen(ops))
        return count

    for key in ("k1", "k2", "k3", "k4"):
        await take(engine, key, "alice")
    await engine.release("alice", ["k1"])
    await engine.release("alice", ["k2"])
    clock.advance(60)
    await engine.release("alice", ["k3"])
    assert kept() == 3
    clock.advance(61)  # the first two are past their two minutes; each release forgets two
    await engine.release("alice", ["k4"])
    assert kept() == 2
    clock.advance(120)  # nobody releases any more: the sweep forgets the rest
    await engine.sweep_once()
    assert kept() == 0


@pytest.fixture(params=[True, False], ids=["functions", "scripts"])
async def make_replica(
    request: pytest.FixtureRequest, backend_name: str, plugins: Plugins, tmp_path: Path
) -> AsyncIterator[Callable[[], Awaitable[LockManager]]]:
    """Replicas whose backend calls the library as a Redis Function (FCALL), or, as on a Redis
    without Functions, as a script (EVALSHA)."""
    made: list[LockManager] = []

    async def make() -> LockManager:
        settings = backend_settings(backend_name, tmp_path / "data")
        backend = RedisBackend(settings.redis, functions=request.param)
        await backend.start()
        engine = LockManager(
            backend,
            engine_settings(settings),
            overflow=overflow_policy(plugins, settings),
            stats=EngineStats(),
            clock=Clock(),
        )
        made.append(engine)
        return engine

    yield make
    for engine in made:
        await engine.stop()
        await engine.backend.close()


def forget_the_library(deployment: Deployment) -> None:
    """What a restart without persistence (or a fail-over to a fresh node) leaves behind."""
    for client in data_servers(deployment):
        with client:
            if client.info("replication")["role"] == "master":
                client.script_flush()
                client.function_flush()


async def test_the_library_is_sent_again_when_redis_forgot_it(
    make_replica: Callable[[], Awaitable[LockManager]], deployment: Deployment
) -> None:
    first, second = await make_replica(), await make_replica()
    await take(first, "k", "alice")
    request, wait = second.new_request(["k"], Owner("bob"), wait=10)
    waiter = asyncio.create_task(second.acquire(request, wait))
    await wait_until(lambda: request.id in second._waiters)
    await asyncio.sleep(0.05)
    forget_the_library(deployment)
    await first.release("alice", ["k"])
    result = await asyncio.wait_for(waiter, 5)
    assert isinstance(result, Granted) and result.grants[0].token == 2
    mode = backend_of(first).functions
    assert mode is (backend_of(first).function.encode() in library_names(deployment))


async def test_times_and_scores_survive_the_round_trip_exactly(make_engine: MakeEngine) -> None:
    clock = Clock(1_800_000_000.123457)
    engine = await make_engine(clock)
    result = await take(engine, "k", "alice", lease=0.1)
    assert isinstance(result, Granted)
    assert result.grants[0].acquired_at == clock.now
    assert result.grants[0].lease_expires_at == clock.now + 0.1
    waiting = await take(engine, "k", "bob", Priority.HIGH)
    assert isinstance(waiting, StillQueued)
    state = await engine.backend.request_state(waiting.request.id)
    assert state is not None and state.request is not None
    assert state.request.score == waiting.request.score
    assert state.request.enqueued_at == clock.now


async def test_many_concurrent_operations_share_a_small_pool_without_errors(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine(redis__pool_size=2)
    results = await asyncio.gather(*(take(engine, f"k{i}", f"o{i}") for i in range(100)))
    assert all(isinstance(r, Granted) for r in results)
    page = await engine.backend.list_grants(limit=1000)
    assert len(page.grants) == 100


async def test_every_key_is_under_the_prefix_and_in_one_cluster_slot(
    make_engine: MakeEngine, deployment: Deployment
) -> None:
    engine = await make_engine()
    backend = backend_of(engine)
    await take(engine, ["a", "b/c", "d.e"], "alice")
    await take(engine, "a", "bob")
    await engine.release("alice", ["a", "b/c", "d.e"])
    await take(engine, ["x", "y"], "carol", lease=30)
    prefix = backend.settings.key_prefix
    keys = []
    for client in data_servers(deployment):
        with client:
            if client.info("replication")["role"] == "master":
                keys += [k.decode() for k in client.scan_iter(match=prefix + "*", count=1000)]
    assert len(keys) > 5
    assert all(k.startswith(key_base(prefix)) for k in keys)
    if backend.describe()["mode"] == "cluster":
        with data_servers(deployment)[0] as client:
            slots = {client.execute_command("CLUSTER", "KEYSLOT", k) for k in keys}
        assert len(slots) == 1


async def test_wrong_owner_and_missing_key_are_refused_atomically(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine()
    await take(engine, ["a", "b"], "alice")
    with pytest.raises(LockError) as denied:
        await engine.release("bob", ["a"])
    assert denied.value.code is Code.PERMISSION_DENIED
    with pytest.raises(LockError) as missing:
        await engine.renew("alice", ["a", "zzz"], 10)
    assert missing.value.code is Code.NOT_FOUND
    state = await engine.backend.key_state("a", max_waiting=1)
    assert state.grant is not None and state.grant.lease_expires_at is None


async def test_deadlock_edges_are_read_in_one_script(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    await take(engine, "a", "alice")
    await take(engine, "b", "bob")
    waiting = await take(engine, "b", "alice")
    assert isinstance(waiting, StillQueued)
    edges = await engine.backend.wait_edges_from("alice", max_owners=10)
    assert [(e.waiter.owner.id, e.key, e.blocker.id, e.held) for e in edges] == [
        ("alice", "b", "bob", True)
    ]
    assert await engine.backend.edges_present(edges) == [True]
    await engine.release("bob", ["b"])
    assert await engine.backend.edges_present(edges) == [False]


async def test_describe_names_the_deployment_and_never_the_password(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine(redis__password="")
    described = backend_of(engine).describe()
    assert described["name"] == "redis" and described["mode"] in (
        "standalone",
        "cluster",
        "sentinel",
    )
    settings = dataclasses.replace(backend_of(engine).settings, password="hunter2-secret")
    assert "hunter2" not in json.dumps(RedisBackend(settings).describe())


async def test_a_waiter_evicted_by_another_replica_hears_EL005_at_once(
    make_engine: MakeEngine,
) -> None:
    changes = {"queue_config__max_queue_size": 1, "queue_config__overflow_policy": "reject_oldest"}
    first, second = await make_engine(**changes), await make_engine(**changes)
    await take(first, "k", "holder")
    request, wait = first.new_request(["k"], Owner("old"), wait=30)
    waiter = asyncio.create_task(first.acquire(request, wait))
    await wait_until(lambda: request.id in first._waiters)
    await asyncio.sleep(0.05)
    newcomer = await take(second, "k", "new")  # the queue is full: the oldest waiter goes
    assert isinstance(newcomer, StillQueued)
    # No sweeper runs here (so no catch-up), and its own wait is 30 s: only the other replica's
    # notification can end it within 5 s.
    with pytest.raises(LockError) as evicted:
        await asyncio.wait_for(waiter, 5)
    assert (evicted.value.code, evicted.value.status) == (Code.QUEUE_OVERFLOW, 429)


def test_a_key_prefix_with_braces_is_a_configuration_problem() -> None:
    result = load(None, env={"ATLANTIS_ENHANCED_LOCKING_REDIS_KEY_PREFIX": "locks{x}:"})
    assert [p.path for p in result.problems] == ["enhanced-locking.redis.key-prefix"]
    problem = str(result.problems[0])
    assert "must not contain { or }" in problem and "EL003" in problem
