"""Deadlock detection and resolution (design.md "Deadlocks").

Two ways in: every new wait is checked at once by a bounded walk from its owner, read inside one
backend transaction; and a sweep every `check-interval` reads every wait-for edge at once (ids
only, one atomic read) and looks for cycles the immediate check could not see (its walk is
bounded). Before acting, the cycle's edges are read again: a cycle whose confidence (edges still
present / edges) is below the threshold is a false positive and is left alone. Otherwise the
first resolution policy that picks a victim decides, and the victim's waiting request ends with
EL004 naming the cycle; its held locks stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sidecar.engine.manager import LockManager
from sidecar.engine.model import Ending, Request
from sidecar.engine.policies import Cycle, EdgeRef, ResolutionPolicy, WaitEdge
from sidecar.engine.waitgraph import WaitGraph, may_lie_on_a_cycle
from sidecar.metrics.stats import EngineStats

log = logging.getLogger("enhanced-locking.deadlock")

HISTORY = 50
IMMEDIATE_MAX_OWNERS = 1000
MAX_VICTIMS_PER_SWEEP = 1000
SNAPSHOT_LIMIT = 1_000_000


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    enabled: bool = True
    check_interval: float = 30.0
    min_cycle_length: int = 2
    confidence_threshold: float = 0.8
    policies: tuple[tuple[str, ResolutionPolicy], ...] = ()
    max_attempts: int = 3


@dataclass(frozen=True, slots=True)
class Resolution:
    cycle: Cycle
    outcome: str  # resolved | false_positive | failed
    confidence: float
    victim: Request | None
    policy: str | None
    at: float
    elapsed_ms: float
    found_by: str

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "found_by": self.found_by,
            "at": self.at,
            "elapsed_ms": round(self.elapsed_ms, 3),
            "confidence": round(self.confidence, 3),
            "cycle": [e.to_json() for e in self.cycle.edges],
            "description": self.cycle.describe(),
            "victim": None
            if self.victim is None
            else {
                "request_id": self.victim.id,
                "owner": self.victim.owner.id,
                "keys": list(self.victim.keys),
            },
            "policy": self.policy,
        }


@contextlib.contextmanager
def _no_gc_pauses() -> Iterator[None]:
    """Reading 100 000 edges and building their graph creates objects fast enough to trigger
    full collections over everything the sidecar holds; they would double the sweep. Collect
    afterwards instead (the pause spans the read's await: other tasks only collect later too)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class DeadlockDetector:
    def __init__(self, engine: LockManager, settings: DetectorSettings, stats: EngineStats) -> None:
        self.engine = engine
        self.settings = settings
        self.stats = stats
        self.counts = {
            "cycles_found": 0,
            "resolved": 0,
            "false_positives": 0,
            "failed": 0,
            "immediate_checks": 0,
            "sweeps": 0,
        }
        self.last_sweep: dict[str, Any] | None = None
        self.recent: deque[Resolution] = deque(maxlen=HISTORY)
        self._task: asyncio.Task[None] | None = None
        # One resolution at a time, so two checks never pick two victims for one cycle.
        self._lock = asyncio.Lock()

    def reconfigure(self, settings: DetectorSettings) -> None:
        self.settings = settings

    # -- finding ------------------------------------------------------------------------------

    async def on_wait(self, request: Request) -> None:
        """Check at once whether the owner of a request that just started waiting is in a cycle."""
        if not self.settings.enabled:
            return
        self.counts["immediate_checks"] += 1
        # Look and act under one lock: two waits closing the same cycle at once must not each
        # find it before either has picked a victim, or the cycle would lose two requests.
        async with self._lock:
            edges = await self.engine.backend.wait_edges_from(
                request.owner.id, max_owners=IMMEDIATE_MAX_OWNERS
            )
            path = WaitGraph(edges).cycle_through(
                request.owner.id, min_length=self.settings.min_cycle_length
            )
            if path is not None:
                await self.resolve(Cycle(path), found_by="immediate")

    async def sweep(self) -> list[Resolution]:
        """Find and resolve every cycle in one consistent read, re-checking after each victim.

        The read is ids only (`Backend.wait_graph`); whole requests are read for the edges of
        the cycles found, just before each is resolved.
        """
        started = time.perf_counter()
        with _no_gc_pauses():
            refs = await self.engine.backend.wait_graph(max_waiting=SNAPSHOT_LIMIT)
            suspects = may_lie_on_a_cycle(refs)
            graph = WaitGraph(r for r in refs if r.source in suspects and r.target in suspects)
            paths = graph.cycles(min_length=self.settings.min_cycle_length)
        resolutions: list[Resolution] = []
        async with self._lock:
            for _ in range(MAX_VICTIMS_PER_SWEEP):
                if not paths:
                    break
                for path in paths:
                    cycle = await self._whole(path)
                    if cycle is None:  # a request of it no longer waits: the cycle is gone
                        self.counts["false_positives"] += 1
                        for ref in path:
                            graph.remove_request(ref.request_id)
                        continue
                    resolution = await self.resolve(cycle, found_by="sweep")
                    resolutions.append(resolution)
                    if resolution.victim is not None:
                        graph.remove_request(resolution.victim.id)
                    else:  # stale or unresolvable: drop what the re-read did not confirm
                        for ref in path:
                            graph.remove_request(ref.request_id)
                paths = graph.cycles(min_length=self.settings.min_cycle_length)
        self.counts["sweeps"] += 1
        self.last_sweep = {
            "at": time.time(),
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "edges": len(refs),
            "suspects": len(suspects),
            "cycles": len(resolutions),
        }
        return resolutions

    async def _whole(self, path: tuple[EdgeRef, ...]) -> Cycle | None:
        """The cycle with its whole requests, or None if one of them no longer waits.

        Each edge's blocker is the next edge's waiting owner, so the owners come from the
        requests too.
        """
        requests = await self.engine.backend.waiting_requests([ref.request_id for ref in path])
        if len(requests) < len({ref.request_id for ref in path}):
            log.info(
                "deadlock candidate dismissed (a request left before it was read): %s",
                "; ".join(f"{r.source} waits for {r.key!r} of {r.target}" for r in path),
            )
            return None
        return Cycle(
            tuple(
                WaitEdge(
                    requests[ref.request_id], ref.key, requests[after.request_id].owner, ref.held
                )
                for ref, after in zip(path, path[1:] + path[:1], strict=True)
            )
        )

    # -- resolving ----------------------------------------------------------------------------

    def _choose(self, cycle: Cycle) -> tuple[Request | None, str | None]:
        for name, policy in self.settings.policies:
            victim = policy.choose_victim(cycle)
            if victim is not None:
                return victim, name
        return None, None

    async def resolve(self, cycle: Cycle, *, found_by: str) -> Resolution:
        started = time.perf_counter()
        present = await self.engine.backend.edges_present(cycle.edges)
        confidence = sum(present) / len(present)
        if confidence < self.settings.confidence_threshold:
            self.counts["false_positives"] += 1
            log.info(
                "deadlock candidate dismissed (confidence %.2f < %.2f): %s",
                confidence,
                self.settings.confidence_threshold,
                cycle.describe(),
            )
            return self._record(cycle, "false_positive", confidence, None, None, started, found_by)
        self.counts["cycles_found"] += 1
        self.stats.deadlocks_total.inc()
        tried: set[str] = set()
        for _ in range(self.settings.max_attempts):
            candidates = Cycle(tuple(e for e in cycle.edges if e.waiter.id not in tried))
            victim, policy = self._choose(candidates) if candidates.edges else (None, None)
            if victim is None:
                break
            tried.add(victim.id)
            detail = f"deadlock victim (policy {policy}): {cycle.describe()}"
            change = await self.engine.cancel(victim.id, Ending.DEADLOCK, detail=detail)
            if change.ended:
                self.counts["resolved"] += 1
                log.warning(
                    "deadlock detected: %s; victim %s of %s (policy %s) [EL004]",
                    cycle.describe(),
                    victim.id,
                    victim.owner.id,
                    policy,
                )
                return self._record(
                    cycle, "resolved", confidence, victim, policy, started, found_by
                )
        self.counts["failed"] += 1
        log.error(
            "cascade resolution failed after %d attempt(s): %s [EL004]",
            len(tried),
            cycle.describe(),
        )
        return self._record(cycle, "failed", confidence, None, None, started, found_by)

    def _record(
        self,
        cycle: Cycle,
        outcome: str,
        confidence: float,
        victim: Request | None,
        policy: str | None,
        started: float,
        found_by: str,
    ) -> Resolution:
        resolution = Resolution(
            cycle,
            outcome,
            confidence,
            victim,
            policy,
            time.time(),
            (time.perf_counter() - started) * 1000,
            found_by,
        )
        self.recent.append(resolution)
        return resolution

    # -- running --------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.check_interval)
            if not self.settings.enabled:
                continue
            try:
                await self.sweep()
            except Exception:
                log.exception("deadlock sweep failed")

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="deadlock-sweep")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def status(self) -> dict[str, Any]:
        s = self.settings
        return {
            "enabled": s.enabled,
            "check_interval_seconds": s.check_interval,
            "min_cycle_length": s.min_cycle_length,
            "confidence_threshold": s.confidence_threshold,
            "resolution_policies": [name for name, _ in s.policies],
            "max_resolution_attempts": s.max_attempts,
            "last_sweep": self.last_sweep,
            **self.counts,
            "recent": [r.to_json() for r in reversed(self.recent)],
        }
