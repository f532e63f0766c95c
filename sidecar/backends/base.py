"""The contract every lock backend keeps.

Each mutating method is one atomic operation in the backend (a transaction, a Lua script), so
that sidecar replicas sharing a backend can never double-grant. The engine adds waiting, policies,
events and metrics on top; it never does read-then-write across two calls.

Backends are plugins: a class registered under a name through the
`atlantis_sidecar_register_backends` hook, built by `from_settings`.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from sidecar.engine.model import (
    AcquireResult,
    Change,
    Ended,
    Ending,
    Grant,
    Handoff,
    KeyState,
    QueueSummary,
    Request,
    RequestState,
    Snapshot,
)
from sidecar.engine.policies import EdgeRef, WaitEdge

if TYPE_CHECKING:
    from sidecar.config import Settings


@dataclass(frozen=True, slots=True)
class GrantPage:
    grants: list[Grant]
    next_after: str | None

    @classmethod
    def of(cls, rows: list[Grant], limit: int) -> GrantPage:
        """A page from up to `limit` + 1 rows read: the extra row only says that more follow."""
        page = rows[:limit]
        return cls(page, page[-1].key if len(rows) > limit and page else None)


#: The most waiting requests a snapshot reads (the bound of every whole-graph read).
SNAPSHOT_LIMIT = 1_000_000

# Called by a backend when another replica granted a request that may wait on this one.
RemoteGrantListener = Callable[[Handoff], Awaitable[None]]
# Called by a backend when another replica ended (timed out, evicted, cancelled) such a request.
RemoteEndListener = Callable[[Ended], Awaitable[None]]


class Backend(abc.ABC):
    name: ClassVar[str]
    #: Whether grants, queues and fencing counters survive a restart of the sidecar.
    durable: ClassVar[bool]
    #: Whether several sidecar processes share this backend's state, so that another process
    #: may grant or end a request this one waits for (the engine then also checks on its own
    #: long waiters, in case a notification was lost).
    shared: ClassVar[bool] = False

    @classmethod
    @abc.abstractmethod
    def from_settings(cls, settings: Settings) -> Backend:
        """Build the backend from the effective config; do no I/O here."""

    @classmethod
    def check_settings(cls, settings: Settings) -> list[tuple[str, str]]:
        """Problems with the settings this backend reads, as (key path, message)."""
        return []

    async def start(self) -> None:  # noqa: B027 - optional hook, most backends need it
        """Open files or connections. Raise LockError (EL001/EL007) when that fails."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release every resource; called once, also after a failed start."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise LockError(EL001) when the backend cannot serve."""

    def describe(self) -> dict[str, object]:
        """What health shows about this backend (never secrets)."""
        return {"name": self.name, "durable": self.durable}

    def set_remote_grant_listener(self, listener: RemoteGrantListener) -> None:  # noqa: B027
        """Backends shared by replicas call this when another replica grants a request."""

    def set_remote_end_listener(self, listener: RemoteEndListener) -> None:  # noqa: B027
        """Backends shared by replicas call this when another replica ends a waiting request."""

    @abc.abstractmethod
    async def acquire(
        self, request: Request, *, now: float, queue_if_busy: bool, max_queue: int
    ) -> AcquireResult:
        """Grant every key of `request` together, or enqueue it, atomically.

        A key is grantable when its owner already holds it, or when it is free and nobody waits
        on it ahead of the request. With `queue_if_busy` false a blocked request is not queued
        ("busy"); when `max_queue` requests already wait it is not queued either ("full").
        """

    @abc.abstractmethod
    async def enqueue_evicting(
        self, request: Request, victim_id: str, *, now: float, max_queue: int
    ) -> AcquireResult | None:
        """Evict the waiting request `victim_id` (EL005) and enqueue `request`, atomically.

        Returns None, changing nothing, when the victim no longer waits or the queue is no longer
        full: the caller then simply tries `acquire` again.
        """

    @abc.abstractmethod
    async def release(self, owner_id: str, keys: Sequence[str], *, now: float) -> Change:
        """Release keys held by `owner_id` and hand each to its next waiter.

        Raises LockError EL010 when a key is not held and EL007 when another owner holds it;
        then nothing is released.
        """

    @abc.abstractmethod
    async def release_owner(self, owner_id: str, *, now: float) -> Change:
        """Release every key of the owner and cancel its waiting requests."""

    @abc.abstractmethod
    async def force_release(self, keys: Sequence[str], *, now: float) -> Change:
        """Release keys whoever holds them (admin)."""

    @abc.abstractmethod
    async def cancel(
        self, request_id: str, ending: Ending, *, now: float, detail: str = ""
    ) -> Change:
        """Remove a waiting request with the given ending; an empty Change if it no longer waits."""

    @abc.abstractmethod
    async def renew(
        self, owner_id: str, keys: Sequence[str], lease_seconds: float, *, now: float
    ) -> list[Grant]:
        """Set the lease of the owner's grants to now + lease_seconds."""

    @abc.abstractmethod
    async def sweep(
        self, *, now: float, promote_enqueued_before: float | None, batch: int
    ) -> Change:
        """Expire leases, time out requests past their deadline, promote long waiters.

        Does at most `batch` of each, so that one pass is bounded.
        """

    @abc.abstractmethod
    async def request_state(self, request_id: str) -> RequestState | None: ...

    @abc.abstractmethod
    async def key_state(self, key: str, *, max_waiting: int) -> KeyState: ...

    @abc.abstractmethod
    async def list_grants(
        self,
        *,
        owner_id: str | None = None,
        prefix: str | None = None,
        after_key: str | None = None,
        limit: int = 100,
    ) -> GrantPage: ...

    @abc.abstractmethod
    async def queue_summary(self) -> QueueSummary: ...

    @abc.abstractmethod
    async def snapshot(self, *, now: float, max_waiting: int) -> Snapshot: ...

    @abc.abstractmethod
    async def prune_outcomes(self, *, finished_before: float, batch: int) -> int: ...

    async def wait_edges_from(self, owner_id: str, *, max_owners: int) -> list[WaitEdge]:
        """Wait-for edges reachable from `owner_id`, read consistently (one atomic read).

        This default reads a whole snapshot; backends override it with a bounded walk.
        """
        from sidecar.engine.waitgraph import WaitGraph

        graph = WaitGraph.from_snapshot(await self.snapshot(now=0.0, max_waiting=SNAPSHOT_LIMIT))
        edges: list[WaitEdge] = []
        seen, frontier = {owner_id}, [owner_id]
        while frontier and len(seen) <= max_owners:
            for target, between in graph.out.get(frontier.pop(), {}).items():
                edges.extend(between)
                if target not in seen:
                    seen.add(target)
                    frontier.append(target)
        return edges

    async def wait_graph(self, *, max_waiting: int) -> list[EdgeRef]:
        """Every wait-for edge of the first `max_waiting` waiting requests (by arrival), as ids,
        read consistently (one atomic read): the full sweep's input.

        This default derives them from a snapshot; backends override it to skip decoding whole
        requests, which dominates a sweep over many thousands of waiters.
        """
        from sidecar.engine.waitgraph import edges_of

        snapshot = await self.snapshot(now=0.0, max_waiting=max_waiting)
        return [edge.ref for edge in edges_of(snapshot)]

    async def waiting_requests(self, request_ids: Sequence[str]) -> dict[str, Request]:
        """Those of these requests that still wait, by id (whole requests, for a found cycle)."""
        wanted = set(request_ids)
        snapshot = await self.snapshot(now=0.0, max_waiting=SNAPSHOT_LIMIT)
        return {r.id: r for r in snapshot.waiting if r.id in wanted}

    async def edges_present(self, edges: Sequence[WaitEdge]) -> list[bool]:
        """Which of these wait-for edges still hold, read consistently (one atomic read)."""
        from sidecar.engine.waitgraph import edges_of

        snapshot = await self.snapshot(now=0.0, max_waiting=SNAPSHOT_LIMIT)
        current = {e.identity for e in edges_of(snapshot)}
        return [e.identity in current for e in edges]
