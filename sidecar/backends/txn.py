"""The storage primitives a transactional backend offers, and a Backend built on them.

A backend that can run a Python function atomically (the in-memory store, inside one event-loop
step; SQLite, inside one `BEGIN IMMEDIATE` transaction) implements `Txn` and gets every lock
operation from `sidecar.engine.rules`, written once. Backends that cannot (Redis, where atomicity
means one Lua script) implement `Backend` directly and use `rules` as their reference.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from sidecar.backends.base import Backend, GrantPage
from sidecar.engine import rules
from sidecar.engine.model import (
    AcquireResult,
    Change,
    Ending,
    Grant,
    KeyState,
    Outcome,
    QueueSummary,
    Request,
    RequestState,
    Snapshot,
)
from sidecar.engine.policies import EdgeRef, WaitEdge

T = TypeVar("T")


class Txn(Protocol):
    """Reads and writes inside one atomic unit. Queues order by (score, seq)."""

    def grant_of(self, key: str) -> Grant | None: ...
    def put_grant(self, grant: Grant) -> None: ...
    def delete_grant(self, key: str) -> None: ...
    def next_token(self, key: str) -> int:
        """Increment and return the key's fencing counter (it never goes back, never resets)."""
        ...

    def last_token(self, key: str) -> int: ...
    def next_seq(self) -> int:
        """A number larger than every earlier one, for FIFO among equal scores."""
        ...

    def queue_head(self, key: str) -> Request | None: ...
    def queue_rank(self, key: str, score: float, seq: int) -> int:
        """How many requests wait on `key` ahead of (score, seq)."""
        ...

    def queue_of(self, key: str, limit: int) -> list[Request]: ...
    def queue_ahead(self, key: str, score: float, seq: int) -> Request | None:
        """The request right ahead of (score, seq) in `key`'s queue."""
        ...

    def add_request(self, request: Request) -> None: ...
    def remove_request(self, request_id: str) -> Request | None: ...
    def get_request(self, request_id: str) -> Request | None: ...
    def waiting_count(self) -> int: ...
    def waiting(self, limit: int) -> list[Request]: ...
    def grants_of_owner(self, owner_id: str) -> list[Grant]: ...
    def requests_of_owner(self, owner_id: str) -> list[Request]: ...
    def expired_leases(self, now: float, limit: int) -> list[Grant]: ...
    def expired_requests(self, now: float, limit: int) -> list[Request]: ...
    def unpromoted_enqueued_before(self, moment: float, limit: int) -> list[Request]: ...
    def record_outcome(self, outcome: Outcome) -> None: ...
    def get_outcome(self, request_id: str) -> Outcome | None: ...
    def prune_outcomes(self, finished_before: float, limit: int) -> int: ...
    def list_grants(
        self, owner_id: str | None, prefix: str | None, after_key: str | None, limit: int
    ) -> list[Grant]: ...
    def queue_summary(self) -> QueueSummary: ...
    def all_grants(self) -> list[Grant]: ...
    def wait_graph(self, limit: int) -> list[EdgeRef]:
        """`Backend.wait_graph`: the rule of `waitgraph.edges_of`, over ids (see
        `waitgraph.edges_in_queues`), for the first `limit` waiting requests by seq."""
        ...


class TxnBackend(Backend):
    """Every Backend operation as one call of `run`, which must be atomic."""

    @abc.abstractmethod
    async def run(self, fn: Callable[[Txn], T], *, write: bool = True) -> T:
        """Run `fn` atomically against the store and return its result."""

    async def acquire(
        self, request: Request, *, now: float, queue_if_busy: bool, max_queue: int
    ) -> AcquireResult:
        return await self.run(
            lambda tx: rules.acquire(
                tx, request, now=now, queue_if_busy=queue_if_busy, max_queue=max_queue
            )
        )

    async def enqueue_evicting(
        self, request: Request, victim_id: str, *, now: float, max_queue: int
    ) -> AcquireResult | None:
        return await self.run(
            lambda tx: rules.enqueue_evicting(tx, request, victim_id, now=now, max_queue=max_queue)
        )

    async def release(self, owner_id: str, keys: Sequence[str], *, now: float) -> Change:
        return await self.run(lambda tx: rules.release(tx, owner_id, keys, now=now))

    async def release_owner(self, owner_id: str, *, now: float) -> Change:
        return await self.run(lambda tx: rules.release_owner(tx, owner_id, now=now))

    async def force_release(self, keys: Sequence[str], *, now: float) -> Change:
        return await self.run(lambda tx: rules.force_release(tx, keys, now=now))

    async def cancel(
        self, request_id: str, ending: Ending, *, now: float, detail: str = ""
    ) -> Change:
        return await self.run(
            lambda tx: rules.cancel(tx, request_id, ending, now=now, detail=detail)
        )

    async def renew(
        self, owner_id: str, keys: Sequence[str], lease_seconds: float, *, now: float
    ) -> list[Grant]:
        return await self.run(lambda tx: rules.renew(tx, owner_id, keys, lease_seconds, now=now))

    async def sweep(
        self, *, now: float, promote_enqueued_before: float | None, batch: int
    ) -> Change:
        return await self.run(
            lambda tx: rules.sweep(
                tx, now=now, promote_enqueued_before=promote_enqueued_before, batch=batch
            )
        )

    async def request_state(self, request_id: str) -> RequestState | None:
        return await self.run(lambda tx: rules.request_state(tx, request_id), write=False)

    async def key_state(self, key: str, *, max_waiting: int) -> KeyState:
        return await self.run(lambda tx: rules.key_state(tx, key, max_waiting), write=False)

    async def list_grants(
        self,
        *,
        owner_id: str | None = None,
        prefix: str | None = None,
        after_key: str | None = None,
        limit: int = 100,
    ) -> GrantPage:
        return await self.run(
            lambda tx: GrantPage.of(tx.list_grants(owner_id, prefix, after_key, limit + 1), limit),
            write=False,
        )

    async def queue_summary(self) -> QueueSummary:
        return await self.run(lambda tx: tx.queue_summary(), write=False)

    async def snapshot(self, *, now: float, max_waiting: int) -> Snapshot:
        return await self.run(
            lambda tx: Snapshot(tuple(tx.all_grants()), tuple(tx.waiting(max_waiting)), now),
            write=False,
        )

    async def wait_edges_from(self, owner_id: str, *, max_owners: int) -> list[WaitEdge]:
        return await self.run(
            lambda tx: rules.wait_edges_from(tx, owner_id, max_owners), write=False
        )

    async def wait_graph(self, *, max_waiting: int) -> list[EdgeRef]:
        return await self.run(lambda tx: tx.wait_graph(max_waiting), write=False)

    async def waiting_requests(self, request_ids: Sequence[str]) -> dict[str, Request]:
        def read(tx: Txn) -> dict[str, Request]:
            found = (tx.get_request(request_id) for request_id in request_ids)
            return {r.id: r for r in found if r is not None}

        return await self.run(read, write=False)

    async def edges_present(self, edges: Sequence[WaitEdge]) -> list[bool]:
        return await self.run(lambda tx: rules.edges_present(tx, edges), write=False)

    async def prune_outcomes(self, *, finished_before: float, batch: int) -> int:
        return await self.run(lambda tx: tx.prune_outcomes(finished_before, batch))
