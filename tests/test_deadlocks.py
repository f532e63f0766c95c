"""Deadlock detection and resolution, on every backend (design.md "Deadlocks")."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import pytest

from plugins.resolution import LowestPriority, RandomVictim, YoungestFirst
from sidecar.engine.detector import DeadlockDetector, DetectorSettings
from sidecar.engine.manager import Granted, LockManager, StillQueued
from sidecar.engine.model import Ending, Owner, Priority, Request
from sidecar.engine.policies import Cycle, ResolutionPolicy, WaitEdge
from sidecar.engine.waitgraph import WaitGraph, edges_of, may_lie_on_a_cycle
from sidecar.errors import Code, LockError
from sidecar.plugin import hookimpl
from sidecar.plugin.manager import Plugins
from sidecar.plugin.registry import Registry
from tests.conftest import Clock, MakeEngine
from tests.test_backend_contract import holder, take

POLICIES: dict[str, ResolutionPolicy] = {
    "lowest_priority": LowestPriority(),
    "youngest_first": YoungestFirst(),
}


def detector_for(
    engine: LockManager,
    *,
    immediate: bool = True,
    policies: Sequence[str] = ("lowest_priority",),
    extra_policies: dict[str, ResolutionPolicy] | None = None,
    **settings: Any,
) -> DeadlockDetector:
    known = {**POLICIES, **(extra_policies or {})}
    detector = DeadlockDetector(
        engine,
        DetectorSettings(policies=tuple((n, known[n]) for n in policies), **settings),
        engine.stats,
    )
    if immediate:
        engine.on_wait = detector.on_wait
    return detector


async def queued(
    engine: LockManager, keys: str | list[str], owner: str, priority: Priority = Priority.NORMAL
) -> Request:
    result = await take(engine, keys, owner, priority)
    assert isinstance(result, StillQueued), f"{owner} was not queued"
    return result.request


async def crossed(engine: LockManager) -> tuple[Request, Request]:
    """alice holds x and waits for y; bob holds y and waits for x (detector not consulted)."""
    await take(engine, "x", "alice")
    await take(engine, "y", "bob")
    return await queued(engine, "y", "alice"), await queued(engine, "x", "bob")


async def attempt(
    engine: LockManager, keys: str | list[str], owner: str, priority: Priority = Priority.NORMAL
) -> Granted | StillQueued | LockError:
    """Queue a request that may close a cycle: if it is the victim, the EL004 is its answer."""
    try:
        return await take(engine, keys, owner, priority)
    except LockError as exc:
        return exc


async def state(engine: LockManager, request: Request) -> str:
    found = await engine.backend.request_state(request.id)
    assert found is not None
    return found.state


async def test_two_owners_waiting_for_each_other_are_resolved_at_once(
    make_engine: MakeEngine,
) -> None:
    clock = Clock()
    engine = await make_engine(clock)
    detector = detector_for(engine)
    await take(engine, "x", "alice")
    await take(engine, "y", "bob")
    alice_waits = await queued(engine, "y", "alice")
    clock.advance(1)
    result = await attempt(engine, "x", "bob")  # closes the cycle; bob's request is the youngest
    assert isinstance(result, LockError) and result.code is Code.DEADLOCK_VICTIM
    assert await state(engine, alice_waits) == "waiting"
    [resolution] = detector.recent
    assert resolution.outcome == "resolved" and resolution.found_by == "immediate"
    assert resolution.victim is not None and resolution.victim.owner.id == "bob"
    assert await holder(engine, "y") == "bob"  # the victim keeps what it holds
    await engine.release("bob", ["y"])
    assert await holder(engine, "y") == "alice"


async def test_the_victims_waiter_gets_EL004_naming_the_cycle(make_engine: MakeEngine) -> None:
    clock = Clock()
    engine = await make_engine(clock)
    detector_for(engine)
    await take(engine, "x", "alice")
    await take(engine, "y", "bob")
    await queued(engine, "y", "alice")
    clock.advance(1)
    request, _ = engine.new_request(["x"], Owner("bob"), wait=5)
    with pytest.raises(LockError) as victim:
        await asyncio.wait_for(engine.acquire(request, 5), 2)
    assert (victim.value.code, victim.value.status) == (Code.DEADLOCK_VICTIM, 409)
    detail = victim.value.details["detail"]
    assert (
        "alice waits for 'y' held by bob" in detail and "bob waits for 'x' held by alice" in detail
    )


async def test_three_owner_cycle_is_resolved(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    detector = detector_for(engine)
    for owner, key in [("a", "ka"), ("b", "kb"), ("c", "kc")]:
        await take(engine, key, owner)
    await queued(engine, "kb", "a")
    await queued(engine, "kc", "b")
    await attempt(engine, "ka", "c")
    [resolution] = detector.recent
    assert resolution.outcome == "resolved" and len(resolution.cycle.edges) == 3
    assert sorted(resolution.cycle.owners) == ["a", "b", "c"]


async def test_fifty_owner_ring_is_resolved_with_one_victim(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    detector = detector_for(engine)
    n = 50
    for i in range(n):
        await take(engine, f"k{i}", f"o{i}")
    for i in range(n):
        await attempt(engine, f"k{(i + 1) % n}", f"o{i}")
    assert [r.outcome for r in detector.recent] == ["resolved"]
    assert len(detector.recent[0].cycle.edges) == n
    assert (await engine.backend.queue_summary()).depth == n - 1


async def test_two_cycles_sharing_an_owner_need_one_victim_when_one_request_is_in_both(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine()
    detector = detector_for(engine, immediate=False)
    await take(engine, "a", "shared")
    await take(engine, "b", "left")
    await take(engine, "c", "right")
    both = await queued(engine, ["b", "c"], "shared", Priority.LOW)
    left = await queued(engine, "a", "left", Priority.HIGH)
    right = await queued(engine, "a", "right", Priority.HIGH)
    resolutions = await detector.sweep()
    assert [r.outcome for r in resolutions] == ["resolved"]
    assert await state(engine, both) == "deadlock"
    assert await state(engine, left) == "waiting"
    assert await state(engine, right) == "waiting"
    assert await detector.sweep() == []


async def test_two_separate_cycles_get_one_victim_each_in_one_sweep(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine()
    detector = detector_for(engine, immediate=False)
    for pair in (("a1", "a2"), ("b1", "b2")):
        await take(engine, f"{pair[0]}-key", pair[0])
        await take(engine, f"{pair[1]}-key", pair[1])
        await queued(engine, f"{pair[1]}-key", pair[0])
        await queued(engine, f"{pair[0]}-key", pair[1])
    resolutions = await detector.sweep()
    assert sorted(r.outcome for r in resolutions) == ["resolved", "resolved"]
    assert detector.status()["resolved"] == 2 and detector.last_sweep is not None


async def test_a_cycle_through_a_strict_queue_position_is_found(make_engine: MakeEngine) -> None:
    """bob waits for 'a' behind alice's request, which waits for 'b' that bob holds."""
    engine = await make_engine()
    detector = detector_for(engine, immediate=False)
    await take(engine, "b", "bob")
    await take(engine, "a", "carol")
    await queued(engine, ["a", "b"], "alice")
    await queued(engine, "a", "bob")
    await engine.release("carol", ["a"])  # 'a' is free now, but alice cannot have 'b'
    [resolution] = await detector.sweep()
    assert resolution.outcome == "resolved"
    assert any(not e.held for e in resolution.cycle.edges)


async def test_the_sweeps_id_only_edges_are_the_edges_of_a_snapshot(
    make_engine: MakeEngine,
) -> None:
    """`wait_graph` (what the sweep reads) follows the same rule as `edges_of` over a whole
    snapshot, on random queues with priorities, multi-key requests, re-entrant waits and free
    keys whose head still waits for another key; also when only the first waiters count."""
    engine = await make_engine()
    rng = random.Random(1203)
    priorities = list(Priority)
    key_names = [f"k{i}" for i in range(7)] + ["envs/prod-ü/app"]  # byte and char counts differ
    owners = [f"o{i}" for i in range(9)] + ["ümit"]
    for step in range(60):
        keys = rng.sample(key_names, rng.choice([1, 1, 2, 3]))
        await take(engine, keys, rng.choice(owners), rng.choice(priorities))
        if rng.random() < 0.15:
            held = (await engine.backend.list_grants(limit=100)).grants
            if held:
                grant = rng.choice(held)
                await engine.release(grant.owner.id, [grant.key])
        if step == 40:  # promote the waiters so far: their scores jump far below zero
            swept = await engine.backend.sweep(
                now=engine.clock(), promote_enqueued_before=1e18, batch=1000
            )
            assert swept.promoted
    depth = (await engine.backend.queue_summary()).depth
    assert depth > 20
    for limit in (depth + 5, depth // 2):
        snapshot = await engine.backend.snapshot(now=0, max_waiting=limit)
        expected = sorted(edge.ref for edge in edges_of(snapshot))
        assert sorted(await engine.backend.wait_graph(max_waiting=limit)) == expected
        assert any(not ref.held for ref in expected) and any(ref.held for ref in expected)
    waiting = [r.id for r in snapshot.waiting[:3]]
    found = await engine.backend.waiting_requests([*waiting, "no-such-request"])
    assert found == {r.id: r for r in snapshot.waiting[:3]}


async def test_a_cycle_whose_request_left_before_the_sweep_read_it_is_not_resolved(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine()
    detector = detector_for(engine, immediate=False)
    alice_waits, _ = await crossed(engine)
    [path] = WaitGraph(await engine.backend.wait_graph(max_waiting=100)).cycles()
    await engine.cancel(alice_waits.id)
    assert await detector._whole(path) is None
    assert await detector.sweep() == []  # nothing is left to resolve


async def test_a_cycle_that_disappears_before_resolution_is_a_false_positive(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine()
    detector = detector_for(engine, immediate=False)
    alice_waits, _ = await crossed(engine)
    snapshot = await engine.backend.snapshot(now=0, max_waiting=100)
    [path] = WaitGraph.from_snapshot(snapshot).cycles()
    cycle = Cycle(path)
    await engine.cancel(alice_waits.id)  # alice gives up on her own: the cycle is gone
    resolution = await detector.resolve(cycle, found_by="test")
    assert (resolution.outcome, resolution.confidence, resolution.victim) == (
        "false_positive",
        0.5,
        None,
    )
    assert detector.counts["false_positives"] == 1 and detector.counts["resolved"] == 0


async def test_confidence_at_the_threshold_acts_and_below_it_does_not(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine()
    lenient = detector_for(engine, immediate=False, confidence_threshold=0.5)
    strict = detector_for(engine, immediate=False, confidence_threshold=0.6)
    await take(engine, "x", "alice")
    await take(engine, "y", "bob")
    await take(engine, "z", "carol")
    await queued(engine, "y", "alice")
    bob_waits = await queued(engine, "x", "bob")
    snapshot = await engine.backend.snapshot(now=0, max_waiting=100)
    [path] = WaitGraph.from_snapshot(snapshot).cycles()
    cycle = Cycle(path)
    await engine.release("bob", ["y"])  # alice's edge to bob goes away: confidence 1/2
    assert (await strict.resolve(cycle, found_by="test")).outcome == "false_positive"
    resolution = await lenient.resolve(cycle, found_by="test")
    assert resolution.outcome == "resolved" and resolution.victim is not None
    assert resolution.victim.id == bob_waits.id  # the only one of the two still waiting


async def test_cycles_shorter_than_min_cycle_length_are_not_reported(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine()
    detector = detector_for(engine, min_cycle_length=3)
    await crossed(engine)
    assert list(detector.recent) == [] and await detector.sweep() == []
    for owner, key in [("a", "ka"), ("b", "kb"), ("c", "kc")]:
        await take(engine, key, owner)
    await queued(engine, "kb", "a")
    await queued(engine, "kc", "b")
    await attempt(engine, "ka", "c")
    assert [len(r.cycle.edges) for r in detector.recent] == [3]


async def test_nothing_happens_while_detection_is_disabled(make_engine: MakeEngine) -> None:
    engine = await make_engine()
    detector = detector_for(engine, enabled=False)
    await crossed(engine)
    assert list(detector.recent) == []
    assert (await engine.backend.queue_summary()).depth == 2


@pytest.mark.parametrize(
    ("policy", "victim"),
    [("lowest_priority", "old-low"), ("youngest_first", "young-high")],
)
async def test_each_policy_picks_its_victim(
    make_engine: MakeEngine, policy: str, victim: str
) -> None:
    clock = Clock()
    engine = await make_engine(clock)
    detector = detector_for(engine, policies=[policy])
    await take(engine, "x", "old-low")
    await take(engine, "y", "young-high")
    await queued(engine, "y", "old-low", Priority.LOW)
    clock.advance(5)
    await attempt(engine, "x", "young-high", Priority.HIGH)
    [resolution] = detector.recent
    assert resolution.victim is not None and resolution.victim.owner.id == victim
    assert resolution.policy == policy


def test_random_policy_is_repeatable_with_a_seed() -> None:
    owners = [Owner(f"o{i}") for i in range(6)]
    edges = tuple(
        WaitEdge(_request(f"r{i}", owners[i]), f"k{i}", owners[(i + 1) % 6], held=True)
        for i in range(6)
    )
    picks = {RandomVictim(seed=7).choose_victim(Cycle(edges)) for _ in range(5)}
    assert len(picks) == 1
    assert {RandomVictim(seed=s).choose_victim(Cycle(edges)) for s in range(40)} > picks


class PickBob:
    def choose_victim(self, cycle: Cycle) -> Request | None:
        return next((e.waiter for e in cycle.edges if e.waiter.owner.id == "bob"), None)


class PickBobPlugin:
    @hookimpl
    def atlantis_sidecar_register_resolution_policies(self, registry: Registry[Any]) -> None:
        registry.register("pick_bob", PickBob)


async def test_a_plugin_policy_is_used_by_name_before_the_builtins(
    make_engine: MakeEngine,
) -> None:
    plugins = Plugins.load(env={}, entry_points=False, extra=[("pick-bob", PickBobPlugin())])
    engine = await make_engine()
    detector = detector_for(
        engine,
        policies=["pick_bob", "youngest_first"],
        extra_policies={"pick_bob": plugins.resolution_policies.get("pick_bob")()},
    )
    await take(engine, "x", "bob")
    await take(engine, "y", "alice")
    await queued(engine, "y", "bob")  # bob is older: youngest_first alone would pick alice
    await attempt(engine, "x", "alice")
    [resolution] = detector.recent
    assert resolution.victim is not None and resolution.victim.owner.id == "bob"
    assert resolution.policy == "pick_bob"


def _request(request_id: str, owner: Owner) -> Request:
    return Request(request_id, ("k",), owner, Priority.NORMAL, 0.0, 0.0, 1e12)


def _has_cycle(nodes: int, arcs: set[tuple[int, int]]) -> bool:
    """Reference: plain depth-first search with colours; self-loops do not count."""
    graph: dict[int, list[int]] = {n: [] for n in range(nodes)}
    for a, b in arcs:
        if a != b:
            graph[a].append(b)
    colour = dict.fromkeys(graph, 0)

    def visit(n: int) -> bool:
        colour[n] = 1
        for m in graph[n]:
            if colour[m] == 1 or (colour[m] == 0 and visit(m)):
                return True
        colour[n] = 2
        return False

    return any(colour[n] == 0 and visit(n) for n in graph)


def test_random_wait_graphs_have_a_victim_exactly_when_they_have_a_cycle() -> None:
    rng = random.Random(20261203)
    for trial in range(3000):
        nodes = rng.randint(1, 9)
        owners = [Owner(f"o{i}") for i in range(nodes)]
        arcs = {
            (rng.randrange(nodes), rng.randrange(nodes)) for _ in range(rng.randint(0, nodes * 2))
        }
        edges = [
            WaitEdge(_request(f"r{a}-{b}", owners[a]), f"k{b}", owners[b], held=bool(b % 2))
            for a, b in arcs
        ]
        graph = WaitGraph(edges)
        cycles = graph.cycles()
        assert bool(cycles) == _has_cycle(nodes, arcs), f"trial {trial}: {sorted(arcs)}"
        # The sweep searches only the owners that the cheap trim leaves: it must keep every cycle.
        suspects = may_lie_on_a_cycle(edges)
        assert bool(suspects) == bool(cycles)
        trimmed = WaitGraph(e for e in edges if e.source in suspects and e.target in suspects)
        assert len(trimmed.cycles()) == len(cycles)
        for path in cycles:
            hops = [(e.waiter.owner.id, e.blocker.id) for e in path]
            assert all(hops[i][1] == hops[(i + 1) % len(hops)][0] for i in range(len(hops)))
            assert len({a for a, _ in hops}) == len(hops)  # simple: no owner twice
        for _ in range(len(arcs) + 1):  # removing victims until none is left ends the cycles
            if not (found := graph.cycles()):
                break
            graph.remove_request(found[0][0].waiter.id)
        assert graph.cycles() == []


async def test_random_waits_on_every_backend_get_victims_exactly_when_they_form_a_cycle(
    make_engine: MakeEngine,
) -> None:
    """The whole path (the backend's wait graph, the trim, the search, the resolution) on
    random graphs built through the engine, against the reference cycle finder. Each owner
    holds one key and each key gets at most one waiter, so the arcs are waiter -> holder."""
    engine = await make_engine()
    detector = detector_for(engine, immediate=False)
    rng = random.Random(31)
    cyclic = 0
    for trial in range(25):
        nodes = rng.randint(2, 6)
        owners = [f"t{trial}-o{i}" for i in range(nodes)]
        for i, owner in enumerate(owners):
            await take(engine, f"t{trial}-k{i}", owner)
        arcs = {(rng.randrange(nodes), rng.randrange(nodes)) for _ in range(nodes + 1)}
        arcs = {(a, b) for a, b in arcs if a != b}
        arcs = {(a, b) for a, b in arcs if min(x for x, y in arcs if y == b) == a}  # 1 waiter/key
        for a, b in sorted(arcs):
            await queued(engine, f"t{trial}-k{b}", owners[a])
        expected = _has_cycle(nodes, arcs)
        cyclic += expected
        resolutions = await detector.sweep()
        assert bool(resolutions) == expected, f"trial {trial}: {sorted(arcs)}"
        assert all(r.outcome == "resolved" for r in resolutions)
        assert await detector.sweep() == []  # what is left has no cycle
        for owner in owners:
            await engine.release_owner(owner)
    assert 5 < cyclic < 20  # both kinds of graph were tried


def test_victims_are_waiting_requests_of_the_cycle_and_never_the_holder_only() -> None:
    owners = [Owner("a"), Owner("b")]
    ab = WaitEdge(_request("ra", owners[0]), "kb", owners[1], held=True)
    ba = WaitEdge(_request("rb", owners[1]), "ka", owners[0], held=True)
    cycle = Cycle(WaitGraph([ab, ba]).cycles()[0])
    victim = LowestPriority().choose_victim(cycle)
    assert victim is not None and victim.id in {"ra", "rb"}
    assert Ending.DEADLOCK.value == "deadlock"


async def test_a_cycle_whose_victims_all_left_logs_cascade_resolution_failed(
    make_engine: MakeEngine, caplog: pytest.LogCaptureFixture
) -> None:
    engine = await make_engine()
    detector = detector_for(engine, immediate=False, confidence_threshold=0.0, max_attempts=5)
    alice_waits, bob_waits = await crossed(engine)
    snapshot = await engine.backend.snapshot(now=0, max_waiting=100)
    [path] = WaitGraph.from_snapshot(snapshot).cycles()
    cycle = Cycle(path)
    await engine.cancel(alice_waits.id)
    await engine.cancel(bob_waits.id)
    with caplog.at_level("ERROR", logger="enhanced-locking.deadlock"):
        resolution = await detector.resolve(cycle, found_by="test")
    assert resolution.outcome == "failed" and detector.counts["failed"] == 1
    assert "cascade resolution failed after 2 attempt(s)" in caplog.text
    assert "[EL004]" in caplog.text


async def test_waits_closing_one_cycle_at_the_same_moment_cost_one_victim(
    make_engine: MakeEngine,
) -> None:
    engine = await make_engine()
    detector = detector_for(engine, confidence_threshold=0.5)
    await take(engine, "x", "alice")
    await take(engine, "y", "bob")
    results = await asyncio.gather(attempt(engine, "y", "alice"), attempt(engine, "x", "bob"))
    assert sum(isinstance(r, LockError) for r in results) == 1
    assert [r.outcome for r in detector.recent if r.outcome == "resolved"] == ["resolved"]
