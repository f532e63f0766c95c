"""The `memory` backend: every lock in this process's memory. Not durable.

For tests, benchmarks and trying things out: a restart forgets every grant, queue and fencing
counter, so fencing tokens start again at 1. Operations are atomic because each runs in one step of
the event loop, without awaiting.
"""

from __future__ import annotations

import bisect
import heapq
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import TypeVar

from sidecar.backends.base import Backend
from sidecar.backends.txn import Txn, TxnBackend
from sidecar.config import Settings
from sidecar.engine.model import Grant, Outcome, QueueSummary, Request
from sidecar.engine.policies import EdgeRef
from sidecar.engine.waitgraph import edges_in_queues
from sidecar.plugin import hookimpl
from sidecar.plugin.registry import Registry

T = TypeVar("T")
_Entry = tuple[float, int, str]  # (score, seq, request id): a key's queue order


def _discard(index: defaultdict[str, set[str]], owner_id: str, item: str) -> None:
    items = index.get(owner_id)
    if items is not None:
        items.discard(item)
        if not items:
            del index[owner_id]


class MemoryStore(Txn):
    def __init__(self) -> None:
        self.grants: dict[str, Grant] = {}
        self.tokens: dict[str, int] = {}
        self.seq = 0
        self.requests: dict[str, Request] = {}
        self.queues: dict[str, list[_Entry]] = defaultdict(list)
        self.outcomes: dict[str, Outcome] = {}
        # Lazily cleaned heaps: an entry is stale when what it points at has changed since.
        self._deadlines: list[tuple[float, str]] = []
        self._leases: list[tuple[float, str, int]] = []
        self._arrivals: list[tuple[float, str]] = []
        self._finished: list[tuple[float, str]] = []
        # Owner indexes, so release-by-owner and the deadlock walk do not scan everything.
        self._owner_grants: defaultdict[str, set[str]] = defaultdict(set)
        self._owner_requests: defaultdict[str, set[str]] = defaultdict(set)

    def grant_of(self, key: str) -> Grant | None:
        return self.grants.get(key)

    def put_grant(self, grant: Grant) -> None:
        self.delete_grant(grant.key)
        self.grants[grant.key] = grant
        self._owner_grants[grant.owner.id].add(grant.key)
        if grant.lease_expires_at is not None:
            heapq.heappush(self._leases, (grant.lease_expires_at, grant.key, grant.token))

    def delete_grant(self, key: str) -> None:
        grant = self.grants.pop(key, None)
        if grant is not None:
            _discard(self._owner_grants, grant.owner.id, key)

    def next_token(self, key: str) -> int:
        token = self.tokens.get(key, 0) + 1
        self.tokens[key] = token
        return token

    def last_token(self, key: str) -> int:
        return self.tokens.get(key, 0)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def queue_head(self, key: str) -> Request | None:
        queue = self.queues.get(key)
        return self.requests[queue[0][2]] if queue else None

    def queue_rank(self, key: str, score: float, seq: int) -> int:
        return bisect.bisect_left(self.queues.get(key, []), (score, seq, ""))

    def queue_ahead(self, key: str, score: float, seq: int) -> Request | None:
        queue = self.queues.get(key, [])
        rank = bisect.bisect_left(queue, (score, seq, ""))
        return self.requests[queue[rank - 1][2]] if rank > 0 else None

    def queue_of(self, key: str, limit: int) -> list[Request]:
        return [self.requests[e[2]] for e in self.queues.get(key, [])[:limit]]

    def add_request(self, request: Request) -> None:
        self.requests[request.id] = request
        self._owner_requests[request.owner.id].add(request.id)
        for key in request.keys:
            bisect.insort(self.queues[key], (request.score, request.seq, request.id))
        heapq.heappush(self._deadlines, (request.deadline, request.id))
        if not request.promoted:
            heapq.heappush(self._arrivals, (request.enqueued_at, request.id))

    def remove_request(self, request_id: str) -> Request | None:
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        _discard(self._owner_requests, request.owner.id, request_id)
        for key in request.keys:
            queue = self.queues[key]
            queue.remove((request.score, request.seq, request.id))
            if not queue:
                del self.queues[key]
        return request

    def get_request(self, request_id: str) -> Request | None:
        return self.requests.get(request_id)

    def waiting_count(self) -> int:
        return len(self.requests)

    def waiting(self, limit: int) -> list[Request]:
        return sorted(self.requests.values(), key=lambda r: r.seq)[:limit]

    def wait_graph(self, limit: int) -> list[EdgeRef]:
        included = None if limit >= len(self.requests) else {r.id for r in self.waiting(limit)}

        def rows() -> Iterator[tuple[str, str, str, str | None]]:
            for key, queue in self.queues.items():
                grant = self.grants.get(key)
                holder = grant.owner.id if grant else None
                for _, _, request_id in queue:
                    if included is None or request_id in included:
                        yield key, request_id, self.requests[request_id].owner.id, holder

        return edges_in_queues(rows())

    def grants_of_owner(self, owner_id: str) -> list[Grant]:
        return [self.grants[k] for k in sorted(self._owner_grants.get(owner_id, ()))]

    def requests_of_owner(self, owner_id: str) -> list[Request]:
        found = (self.requests[r] for r in self._owner_requests.get(owner_id, ()))
        return sorted(found, key=lambda r: r.seq)

    def expired_leases(self, now: float, limit: int) -> list[Grant]:
        found: list[Grant] = []
        while self._leases and self._leases[0][0] <= now and len(found) < limit:
            expires, key, token = heapq.heappop(self._leases)
            grant = self.grants.get(key)
            if grant is not None and grant.token == token and grant.lease_expires_at == expires:
                found.append(grant)
        return found

    def expired_requests(self, now: float, limit: int) -> list[Request]:
        found: list[Request] = []
        while self._deadlines and self._deadlines[0][0] <= now and len(found) < limit:
            _, request_id = heapq.heappop(self._deadlines)
            request = self.requests.get(request_id)
            if request is not None and request.deadline <= now:
                found.append(request)
        return found

    def unpromoted_enqueued_before(self, moment: float, limit: int) -> list[Request]:
        found: list[Request] = []
        while self._arrivals and self._arrivals[0][0] < moment and len(found) < limit:
            _, request_id = heapq.heappop(self._arrivals)
            request = self.requests.get(request_id)
            if request is not None and not request.promoted:
                found.append(request)
        return found

    def record_outcome(self, outcome: Outcome) -> None:
        self.outcomes[outcome.request_id] = outcome
        heapq.heappush(self._finished, (outcome.finished_at, outcome.request_id))

    def get_outcome(self, request_id: str) -> Outcome | None:
        return self.outcomes.get(request_id)

    def prune_outcomes(self, finished_before: float, limit: int) -> int:
        pruned = 0
        while self._finished and self._finished[0][0] < finished_before and pruned < limit:
            _, request_id = heapq.heappop(self._finished)
            if self.outcomes.pop(request_id, None) is not None:
                pruned += 1
        return pruned

    def list_grants(
        self, owner_id: str | None, prefix: str | None, after_key: str | None, limit: int
    ) -> list[Grant]:
        keys = sorted(
            k
            for k, g in self.grants.items()
            if (owner_id is None or g.owner.id == owner_id)
            and (prefix is None or k.startswith(prefix))
            and (after_key is None or k > after_key)
        )
        return [self.grants[k] for k in keys[:limit]]

    def queue_summary(self) -> QueueSummary:
        by_priority: dict[str, int] = defaultdict(int)
        for request in self.requests.values():
            by_priority[request.priority.label] += 1
        oldest = min((r.enqueued_at for r in self.requests.values()), default=None)
        return QueueSummary(len(self.requests), dict(by_priority), oldest, len(self.queues))

    def all_grants(self) -> list[Grant]:
        return list(self.grants.values())


class MemoryBackend(TxnBackend):
    name = "memory"
    durable = False

    def __init__(self) -> None:
        self.store = MemoryStore()

    @classmethod
    def from_settings(cls, settings: Settings) -> Backend:
        return cls()

    async def ping(self) -> None:
        return None

    async def run(self, fn: Callable[[Txn], T], *, write: bool = True) -> T:
        return fn(self.store)


@hookimpl
def atlantis_sidecar_register_backends(registry: Registry[type[Backend]]) -> None:
    registry.register(MemoryBackend.name, MemoryBackend)
