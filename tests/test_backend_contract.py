"""The engine rules, proven against every backend (design.md "The engine").

Every test runs once per backend in `conftest.BACKENDS`; a new backend joins by being added
there. Requests that must wait use `stay_queued` with `wait=0`, so the test sees each step of the
queue without racing real time; the clock is moved by hand.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from plugins.backends.sqlite import SqliteBackend
from sidecar.engine.manager import Granted, LockManager, StillQueued
from sidecar.engine.model import Ending, Owner, Priority
from sidecar.errors import Code, LockError
from sidecar.metrics.stats import EngineStats
from sidecar.plugin.manager import Plugins
from sidecar.runtime import engine_settings, overflow_policy
from tests.conftest import Clock, MakeEngine, backend_settings


async def take(
    engine: LockManager,
    keys: str | list[str],
    owner: str,
    priority: Priority = Priority.NORMAL,
    *,
    lease: float | None = None,
) -> Granted | StillQueued:
    """Acquire without waiting; a blocked request stays queued."""
    request, _ = engine.new_request(
        [keys] if isinstance(keys, str) else keys,
        Owner(owner),
        priority,
        wait=0,
        stay_queued=True,
        lease=lease,
    )
    return await engine.acquire(request, 0, stay_queued=True)


async def holder(engine: LockManager, key: str) -> str | None:
    state = await engine.backend.key_state(key, max_waiting=10)
    return state.grant.owner.id if state.grant else None


async def token(engine: LockManager, key: str) -> int:
    state = await engine.backend.key_state(key, max_waiting=10)
    assert state.grant is not None
    return state.grant.token


async def served_after(engine: LockManager, key: str, first: str, count: int) -> list[str]:
    """Release `key` `count` times, starting with `first`: who got it each time."""
    order = []
    current = first
    for _ in range(count):
        await engine.release(current, [key])
        current = await holder(engine, key) or ""
        order.append(current)
    return order


async def test_free_key_is_granted_with_first_fencing_token(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    result = await take(engine, "k", "alice")
    assert isinstance(result, Granted)
    assert [(g.key, g.owner.id, g.token) for g in result.grants] == [("k", "alice", 1)]


async def test_fencing_token_grows_with_every_grant_of_a_key(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    tokens = []
    for i in range(5):
        result = await take(engine, "k", f"owner{i}")
        assert isinstance(result, Granted)
        tokens.append(result.grants[0].token)
        await engine.release(f"owner{i}", ["k"])
    other = await take(engine, "other", "x")
    assert tokens == [1, 2, 3, 4, 5]
    assert isinstance(other, Granted) and other.grants[0].token == 1


async def test_equal_priorities_are_served_first_come_first_served(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine()
    await take(engine, "k", "holder")
    for name in ["b", "c", "d", "e"]:
        assert isinstance(await take(engine, "k", name), StillQueued)
    order = await served_after(engine, "k", "holder", 4)
    assert order == ["b", "c", "d", "e"]


async def test_higher_priority_is_served_first(make_engine: MakeEngine) -> None:
    engine = await make_engine(priority_queue__anti_starvation=False)
    await take(engine, "k", "holder")
    await take(engine, "k", "low", Priority.LOW)
    await take(engine, "k", "normal", Priority.NORMAL)
    await take(engine, "k", "critical", Priority.CRITICAL)
    await take(engine, "k", "high", Priority.HIGH)
    order = await served_after(engine, "k", "holder", 4)
    assert order == ["critical", "high", "normal", "low"]


async def test_queue_position_reflects_order(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    await take(engine, "k", "holder")
    first = await take(engine, "k", "a", Priority.LOW)
    second = await take(engine, "k", "b", Priority.HIGH)
    assert isinstance(first, StillQueued) and isinstance(second, StillQueued)
    state = await engine.backend.request_state(first.request.id)
    assert state is not None and state.position == 2
    state = await engine.backend.request_state(second.request.id)
    assert state is not None and state.position == 1


async def test_waiting_time_ages_a_low_priority_request_past_newer_high_ones(
    make_engine: MakeEngine,
) -> None:
    clock = Clock()
    engine = await make_engine(clock, priority_queue__priority_boost_interval=30.0)
    await take(engine, "k", "holder")
    await take(engine, "k", "old-low", Priority.LOW)
    clock.advance(100)  # 100 s of waiting is worth 3 levels: more than critical's head start
    await take(engine, "k", "new-critical", Priority.CRITICAL)
    await engine.release("holder", ["k"])
    assert await holder(engine, "k") == "old-low"


async def test_boost_does_not_outrun_a_younger_request_too_soon(make_engine: MakeEngine) -> None:
    clock = Clock()
    engine = await make_engine(clock, priority_queue__priority_boost_interval=30.0)
    await take(engine, "k", "holder")
    await take(engine, "k", "old-low", Priority.LOW)
    clock.advance(50)  # worth 1.67 levels: high (2 levels above low) still goes first
    await take(engine, "k", "new-high", Priority.HIGH)
    await engine.release("holder", ["k"])
    assert await holder(engine, "k") == "new-high"


async def test_request_waiting_past_max_wait_time_goes_to_the_front(
    make_engine: MakeEngine,
) -> None:
    clock = Clock()
    engine = await make_engine(
        clock,
        priority_queue__anti_starvation=True,
        priority_queue__priority_boost_interval=3600.0,
        priority_queue__max_wait_time=60.0,
    )
    await take(engine, "k", "holder")
    await take(engine, "k", "patient", Priority.LOW)
    clock.advance(30)
    await take(engine, "k", "urgent", Priority.CRITICAL)
    clock.advance(31)  # "patient" has now waited 61 s > max-wait-time
    change = await engine.sweep_once()
    assert [r.owner.id for r in change.promoted] == ["patient"]
    await engine.release("holder", ["k"])
    assert await holder(engine, "k") == "patient"


async def test_multi_key_request_is_granted_all_or_nothing(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    await take(engine, "k2", "holder")
    result = await take(engine, ["k1", "k2", "k3"], "multi")
    assert isinstance(result, StillQueued)
    snapshot = await engine.backend.snapshot(now=0, max_waiting=100)
    assert {g.key: g.owner.id for g in snapshot.grants} == {"k2": "holder"}
    await engine.release("holder", ["k2"])
    snapshot = await engine.backend.snapshot(now=0, max_waiting=100)
    assert {g.key: g.owner.id for g in snapshot.grants} == {
        "k1": "multi",
        "k2": "multi",
        "k3": "multi",
    }


async def test_waiting_multi_key_request_keeps_its_place_on_a_free_key(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine()
    await take(engine, "k2", "holder")
    await take(engine, ["k1", "k2"], "multi")
    later = await take(engine, "k1", "later")  # same priority, younger: must not overtake
    assert isinstance(later, StillQueued)
    assert await holder(engine, "k1") is None
    await engine.release("holder", ["k2"])
    assert await holder(engine, "k1") == "multi"
    await engine.release("multi", ["k1", "k2"])
    assert await holder(engine, "k1") == "later"


async def test_acquiring_a_key_already_held_is_reentrant_and_keeps_the_token(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine()
    first = await take(engine, "k", "alice")
    again = await take(engine, ["k", "j"], "alice")
    assert isinstance(first, Granted) and isinstance(again, Granted)
    tokens = {g.key: g.token for g in again.grants}
    assert tokens == {"k": first.grants[0].token, "j": 1}
    await engine.release("alice", ["k"])  # one release frees it, as in Atlantis
    assert await holder(engine, "k") is None


async def test_expired_lease_hands_the_key_to_the_next_waiter(make_engine: MakeEngine) -> None:
    clock = Clock()
    engine = await make_engine(clock)
    await take(engine, "k", "leaser", lease=10)
    await take(engine, "k", "next")
    clock.advance(9)
    await engine.sweep_once()
    assert await holder(engine, "k") == "leaser"
    clock.advance(2)
    change = await engine.sweep_once()
    assert [g.owner.id for g in change.expired] == ["leaser"]
    assert await holder(engine, "k") == "next"
    assert await token(engine, "k") == 2


async def test_renewing_a_lease_keeps_the_lock(make_engine: MakeEngine) -> None:
    clock = Clock()
    engine = await make_engine(clock)
    await take(engine, "k", "leaser", lease=10)
    clock.advance(8)
    renewed = await engine.renew("leaser", ["k"], 10)
    assert renewed[0].lease_expires_at == clock.now + 10
    clock.advance(8)
    await engine.sweep_once()
    assert await holder(engine, "k") == "leaser"


async def test_only_the_holder_can_renew_or_release(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    await take(engine, ["a", "b"], "alice")
    await take(engine, "c", "bob")
    with pytest.raises(LockError) as denied:
        await engine.release("alice", ["a", "c"])
    assert denied.value.code is Code.PERMISSION_DENIED
    with pytest.raises(LockError) as missing:
        await engine.release("alice", ["a", "nothing"])
    assert missing.value.code is Code.NOT_FOUND
    with pytest.raises(LockError):
        await engine.renew("bob", ["a"], 10)
    assert [await holder(engine, k) for k in "abc"] == ["alice", "alice", "bob"]


async def test_release_by_owner_frees_every_key_and_cancels_its_waits(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine()
    await take(engine, ["a", "b"], "pr-1")
    await take(engine, "c", "pr-2")
    waiting = await take(engine, "c", "pr-1")
    await take(engine, "a", "pr-3")
    change = await engine.release_owner("pr-1")
    assert sorted(g.key for g in change.released) == ["a", "b"]
    assert isinstance(waiting, StillQueued)
    assert [e.request.id for e in change.ended] == [waiting.request.id]
    assert await holder(engine, "a") == "pr-3"
    assert await holder(engine, "b") is None


async def test_cancelling_a_head_request_lets_the_next_one_in(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    await take(engine, "k2", "holder")
    blocked = await take(engine, ["k1", "k2"], "multi")
    await take(engine, "k1", "single")
    assert isinstance(blocked, StillQueued)
    change = await engine.cancel(blocked.request.id)
    assert [e.ending for e in change.ended] == [Ending.CANCELLED]
    assert await holder(engine, "k1") == "single"
    state = await engine.backend.request_state(blocked.request.id)
    assert state is not None and state.state == "cancelled"


async def test_force_release_frees_whoever_holds(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    await take(engine, "k", "alice")
    await take(engine, "k", "bob")
    await engine.force_release(["k"])
    assert await holder(engine, "k") == "bob"


async def test_a_waiter_is_woken_at_once_by_the_release(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    await take(engine, "k", "alice")
    request, wait = engine.new_request(["k"], Owner("bob"), wait=30)
    waiter = asyncio.create_task(engine.acquire(request, wait))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await engine.release("alice", ["k"])
    result = await asyncio.wait_for(waiter, 2)
    assert isinstance(result, Granted) and result.grants[0].owner.id == "bob"


async def test_a_waiter_that_is_not_granted_in_time_gets_EL002_and_leaves_the_queue(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine()
    await take(engine, "k", "alice")
    request, _ = engine.new_request(["k"], Owner("bob"), wait=0.1)
    with pytest.raises(LockError) as timed_out:
        await engine.acquire(request, 0.1)
    assert (timed_out.value.code, timed_out.value.status) == (Code.ACQUIRE_TIMEOUT, 408)
    assert (await engine.backend.queue_summary()).depth == 0
    await engine.release("alice", ["k"])
    assert await holder(engine, "k") is None


async def test_busy_key_with_no_wait_answers_at_once_with_the_holder(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine()
    await take(engine, "k", "alice")
    request, _ = engine.new_request(["k"], Owner("bob"), wait=0)
    with pytest.raises(LockError) as busy:
        await engine.acquire(request, 0)
    assert busy.value.status == 409
    assert busy.value.details["holders"][0]["owner"]["id"] == "alice"
    assert (await engine.backend.queue_summary()).depth == 0


async def test_queued_request_times_out_after_queue_timeout(make_engine: MakeEngine) -> None:
    clock = Clock()
    engine = await make_engine(clock, queue_timeout=60.0)
    await take(engine, "k", "alice")
    queued = await take(engine, "k", "bob")
    assert isinstance(queued, StillQueued)
    clock.advance(61)
    change = await engine.sweep_once()
    assert [e.ending for e in change.ended] == [Ending.TIMED_OUT]
    state = await engine.backend.request_state(queued.request.id)
    assert state is not None and state.state == "timed_out"


@pytest.mark.parametrize(
    ("policy", "rejected"),
    [
        ("reject_newest", "newcomer"),
        ("reject_oldest", "first"),
        ("reject_lowest_priority", "second"),
    ],
)
async def test_overflow_policy_picks_whom_to_reject(
    make_engine: MakeEngine, policy: str, rejected: str
) -> None:
    clock = Clock()
    engine = await make_engine(
        clock, queue_config__max_queue_size=3, queue_config__overflow_policy=policy
    )
    await take(engine, "k", "holder")
    ids = {}
    for name, priority in [
        ("first", Priority.NORMAL),
        ("second", Priority.LOW),
        ("third", Priority.HIGH),
    ]:
        clock.advance(1)
        result = await take(engine, "k", name, priority)
        assert isinstance(result, StillQueued)
        ids[name] = result.request.id
    clock.advance(1)
    if rejected == "newcomer":
        with pytest.raises(LockError) as overflow:
            await take(engine, "k", "newcomer", Priority.NORMAL)
        assert (overflow.value.code, overflow.value.status) == (Code.QUEUE_OVERFLOW, 429)
        assert (await engine.backend.queue_summary()).depth == 3
        return
    result = await take(engine, "k", "newcomer", Priority.NORMAL)
    assert isinstance(result, StillQueued)
    state = await engine.backend.request_state(ids[rejected])
    assert state is not None and state.state == "evicted"
    assert (await engine.backend.queue_summary()).depth == 3


async def test_eviction_wakes_the_evicted_waiter_with_EL005(make_engine: MakeEngine) -> None:
    engine = await make_engine(
        queue_config__max_queue_size=1, queue_config__overflow_policy="reject_oldest"
    )
    await take(engine, "k", "holder")
    request, _ = engine.new_request(["k"], Owner("old"), wait=30)
    waiter = asyncio.create_task(engine.acquire(request, 30))
    await asyncio.sleep(0.05)
    await take(engine, "k", "new")
    with pytest.raises(LockError) as evicted:
        await asyncio.wait_for(waiter, 2)
    assert evicted.value.code is Code.QUEUE_OVERFLOW


async def test_sqlite_group_commit_shares_transactions_between_concurrent_writes(
    plugins: Plugins, tmp_path: Path
) -> None:
    settings = backend_settings("sqlite+group-commit", tmp_path)
    backend = SqliteBackend.from_settings(settings)
    assert isinstance(backend, SqliteBackend)
    await backend.start()
    try:
        engine = LockManager(
            backend,
            engine_settings(settings),
            overflow=overflow_policy(plugins, settings),
            stats=EngineStats(),
        )
        results = await asyncio.gather(*(take(engine, f"k{i}", f"o{i}") for i in range(60)))
        assert all(isinstance(r, Granted) for r in results)
        assert backend.commits <= 30
        snapshot = await backend.snapshot(now=0, max_waiting=10)
        assert len(snapshot.grants) == 60
    finally:
        await backend.close()


OLD_WAITS = """
CREATE TABLE old_waits AS SELECT key, score, seq, request_id FROM waits;
DROP TABLE waits;
CREATE TABLE waits (
    key TEXT NOT NULL, score REAL NOT NULL, seq INTEGER NOT NULL, request_id TEXT NOT NULL,
    PRIMARY KEY (key, score, seq));
INSERT INTO waits SELECT * FROM old_waits;
DROP TABLE old_waits;
CREATE INDEX waits_by_request ON waits(request_id);
"""


async def test_a_sqlite_lock_database_from_before_waits_kept_their_owner_is_upgraded(
    plugins: Plugins, tmp_path: Path
) -> None:
    settings = backend_settings("sqlite", tmp_path)

    async def engine_on(backend: SqliteBackend) -> LockManager:
        await backend.start()
        policy = overflow_policy(plugins, settings)
        return LockManager(backend, engine_settings(settings), overflow=policy, stats=EngineStats())

    first = SqliteBackend.from_settings(settings)
    assert isinstance(first, SqliteBackend)
    engine = await engine_on(first)
    await take(engine, "x", "alice")
    await take(engine, "y", "bob")
    await take(engine, "y", "alice")
    await take(engine, ["x", "y"], "carol")
    expected = sorted(await first.wait_graph(max_waiting=100))
    await first.close()
    with sqlite3.connect(first.path) as db:  # the waits table as an earlier version wrote it
        db.executescript(OLD_WAITS)

    second = SqliteBackend.from_settings(settings)
    assert isinstance(second, SqliteBackend)
    await engine_on(second)
    try:
        assert len(expected) == 4 and sorted(await second.wait_graph(max_waiting=100)) == expected
    finally:
        await second.close()


async def test_queue_approaching_limit_is_logged_at_80_percent(
    make_engine: MakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    engine = await make_engine(queue_config__max_queue_size=5)
    await take(engine, "k", "holder")
    with caplog.at_level("WARNING", logger="enhanced-locking.engine"):
        for n in range(3):
            await take(engine, "k", f"w{n}")
        assert "queue approaching limit" not in caplog.text
        await take(engine, "k", "w3")
    assert "queue approaching limit: 4 of 5 requests waiting" in caplog.text
