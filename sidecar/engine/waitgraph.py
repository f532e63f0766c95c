"""The wait-for graph over owners, and the cycles in it.

Built from one consistent read of the backend (a snapshot, or a bounded walk done inside one
transaction), never from per-key reads taken at different moments. Nodes are owners; an edge
A -> B means a waiting request of A cannot be granted until B acts: B holds a key A waits for, or
B's request is ahead of A's in that key's strict queue. Every search here is bounded.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Generic, Protocol, TypeVar

from sidecar.engine.model import Request, Snapshot
from sidecar.engine.policies import EdgeRef, WaitEdge

# How many steps a search for a long-enough cycle may take before it gives up on that start.
SEARCH_BUDGET = 100_000


def edges_of(snapshot: Snapshot) -> Iterator[WaitEdge]:
    holders = {g.key: g for g in snapshot.grants}
    queues: defaultdict[str, list[Request]] = defaultdict(list)
    for request in snapshot.waiting:
        for key in request.keys:
            queues[key].append(request)
    for key, queue in queues.items():
        if len(queue) > 1:
            queue.sort(key=_queue_order)
        ahead = None
        for request in queue:
            grant = holders.get(key)
            mine = grant is not None and grant.owner.id == request.owner.id
            if grant is not None and not mine:
                yield WaitEdge(request, key, grant.owner, held=True)
            if ahead is not None and not mine and ahead.owner.id != request.owner.id:
                yield WaitEdge(request, key, ahead.owner, held=False)
            ahead = request


def edges_in_queues(rows: Iterable[tuple[str, str, str, str | None]]) -> list[EdgeRef]:
    """The rule of `edges_of` over id rows: (key, request id, its owner, the key's holder or
    None), each key's rows together and in queue order. Backends that can list their queues
    cheaply (SQLite in one query) give the sweep its edges this way."""
    refs: list[EdgeRef] = []
    current: str | None = None
    ahead: str | None = None
    for key, request_id, owner, holder in rows:
        if key != current:
            current, ahead = key, None
        mine = holder == owner
        if holder is not None and not mine:
            refs.append(EdgeRef(request_id, owner, key, holder, True))
        if ahead is not None and not mine and ahead != owner:
            refs.append(EdgeRef(request_id, owner, key, ahead, False))
        ahead = owner
    return refs


def may_lie_on_a_cycle(edges: Sequence[Arc]) -> set[str]:
    """The owners left after repeatedly dropping owners that nobody waits for (Kahn's
    algorithm): every cycle lies among them. Linear and cheaper than finding components, and
    in the usual case, a graph without deadlocks, nothing is left to search at all. Owners are
    numbered first: lists indexed by number cost less than dicts keyed by owner id."""
    number: dict[str, int] = {}
    of = number.setdefault
    sources = [of(edge.source, len(number)) for edge in edges]
    targets = [of(edge.target, len(number)) for edge in edges]
    waits_for: list[list[int]] = [[] for _ in number]
    waited_on = [0] * len(number)
    for source, target in zip(sources, targets, strict=True):
        if source != target:
            waits_for[source].append(target)
            waited_on[target] += 1
    free = [owner for owner, count in enumerate(waited_on) if not count]
    while free:
        for target in waits_for[free.pop()]:
            waited_on[target] -= 1
            if not waited_on[target]:
                free.append(target)
    return {owner for owner, n in number.items() if waited_on[n]}


def _queue_order(request: Request) -> tuple[float, int]:
    return (request.score, request.seq)


class Arc(Protocol):
    """What the graph needs of an edge: whose request waits, and for which owner."""

    @property
    def request_id(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def target(self) -> str: ...


E = TypeVar("E", bound=Arc)


class WaitGraph(Generic[E]):
    """Over whole edges (`WaitEdge`, the immediate check's bounded walk) or id-only ones
    (`EdgeRef`, the sweep): a cycle is the tuple of its edges, edge i's target being edge
    i+1's source."""

    def __init__(self, edges: Iterable[E] = ()) -> None:
        # owner -> blocker owner -> the edges between them (several requests or keys may link two)
        self.out: dict[str, dict[str, list[E]]] = defaultdict(dict)
        for edge in edges:
            self.add(edge)

    @staticmethod
    def from_snapshot(snapshot: Snapshot) -> WaitGraph[WaitEdge]:
        return WaitGraph(edges_of(snapshot))

    def add(self, edge: E) -> None:
        source, target = edge.source, edge.target
        if source != target:
            self.out[source].setdefault(target, []).append(edge)

    def remove_request(self, request_id: str) -> None:
        """Drop every edge of a request that no longer waits (a victim)."""
        for source in list(self.out):
            targets = self.out[source]
            for target in list(targets):
                kept = [e for e in targets[target] if e.request_id != request_id]
                if kept:
                    targets[target] = kept
                else:
                    del targets[target]
            if not targets:
                del self.out[source]

    def strongly_connected(self) -> list[list[str]]:
        """Groups of two or more owners that all reach each other (Tarjan's, iterative: graphs
        reach 100 000 owners). Every cycle lies inside one group."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        on_stack: set[str] = set()
        stack: list[str] = []
        components: list[list[str]] = []
        counter = 0
        for root in self.out:
            if root in index:
                continue
            work: list[tuple[str, Iterator[str]]] = [(root, iter(self.out.get(root, {})))]
            index[root] = low[root] = counter
            counter += 1
            stack.append(root)
            on_stack.add(root)
            while work:
                node, children = work[-1]
                advanced = False
                for child in children:
                    if child not in index:
                        index[child] = low[child] = counter
                        counter += 1
                        stack.append(child)
                        on_stack.add(child)
                        work.append((child, iter(self.out.get(child, {}))))
                        advanced = True
                        break
                    if child in on_stack:
                        low[node] = min(low[node], index[child])
                if advanced:
                    continue
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
        # Sorted, so the same snapshot always yields the same cycles in the same order.
        return sorted(components)

    def _cycle_from_path(self, path: list[str]) -> tuple[E, ...]:
        hops = zip(path, path[1:] + path[:1], strict=True)
        return tuple(self.out[a][b][0] for a, b in hops)

    def cycle_through(
        self,
        start: str,
        *,
        min_length: int = 2,
        within: set[str] | None = None,
        budget: int = SEARCH_BUDGET,
    ) -> tuple[E, ...] | None:
        """The shortest cycle through `start` of at least `min_length` owners, or None.

        Breadth-first finds the shortest cycle; only when that one is too short does a bounded
        depth-first search look for a longer one.
        """
        parents: dict[str, str] = {}
        queue = deque([start])
        seen = {start}
        steps = 0
        while queue and steps < budget:
            node = queue.popleft()
            for child in sorted(self.out.get(node, {})):
                steps += 1
                if within is not None and child not in within:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    path.reverse()
                    if len(path) >= min_length:
                        return self._cycle_from_path(path)
                    return self._long_cycle(start, min_length, within, budget)
                if child not in seen:
                    seen.add(child)
                    parents[child] = node
                    queue.append(child)
        return None

    def _long_cycle(
        self, start: str, min_length: int, within: set[str] | None, budget: int
    ) -> tuple[E, ...] | None:
        path = [start]
        on_path = {start}
        frames = [iter(sorted(self.out.get(start, {})))]
        steps = 0
        while frames and steps < budget:
            steps += 1
            child = next(frames[-1], None)
            if child is None:
                frames.pop()
                on_path.discard(path.pop())
                continue
            if within is not None and child not in within:
                continue
            if child == start and len(path) >= min_length:
                return self._cycle_from_path(path)
            if child not in on_path:
                path.append(child)
                on_path.add(child)
                frames.append(iter(sorted(self.out.get(child, {}))))
        return None

    def cycles(self, *, min_length: int = 2) -> list[tuple[E, ...]]:
        """One cycle (the shortest long enough) for each strongly connected group of owners.

        Breaking it may leave another cycle in the same group: the detector removes its victim
        and asks again, so one victim can break several overlapping cycles at once.
        """
        found = []
        for component in self.strongly_connected():
            if len(component) < max(2, min_length):
                continue
            members = set(component)
            for start in component:
                cycle = self.cycle_through(start, min_length=min_length, within=members)
                if cycle is not None:
                    found.append(cycle)
                    break
        return found
