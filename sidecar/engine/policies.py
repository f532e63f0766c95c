"""What a queue-overflow policy and a deadlock-resolution policy are.

Policies are pure: they look at requests and pick one, and the engine carries out the choice
atomically in the backend. That keeps third-party policies simple and replica-safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from sidecar.engine.model import Owner, Request


class OverflowPolicy(Protocol):
    """Decides whom to reject when `max-queue-size` requests already wait."""

    def choose_victim(self, incoming: Request, waiting: Sequence[Request]) -> str:
        """Return the id of the request to reject with EL005: `incoming.id` or a waiting one's."""
        ...


class WaitEdge(NamedTuple):
    """An edge waiter.owner -> blocker of the wait-for graph.

    `held`: `blocker` holds `key`. Otherwise `blocker` has a request ahead of `waiter` in `key`'s
    queue: queues are strict, so the waiter cannot pass it even when the key is free (PostgreSQL's
    "soft" edge), and a cycle through such an edge is a deadlock all the same. A named tuple, not
    a dataclass: a sweep builds one per waiting request, 100 000 of them on big graphs.
    """

    waiter: Request
    key: str
    blocker: Owner
    held: bool

    @property
    def request_id(self) -> str:
        return self.waiter.id

    @property
    def source(self) -> str:
        return self.waiter.owner.id

    @property
    def target(self) -> str:
        return self.blocker.id

    @property
    def ref(self) -> EdgeRef:
        return EdgeRef(self.waiter.id, self.waiter.owner.id, self.key, self.blocker.id, self.held)

    @property
    def identity(self) -> tuple[str, str, str, bool]:
        return (self.waiter.id, self.key, self.blocker.id, self.held)

    def describe(self) -> str:
        how = "held by" if self.held else "queued behind"
        return f"{self.waiter.owner.id} waits for {self.key!r} {how} {self.blocker.id}"

    def to_json(self) -> dict[str, object]:
        return {
            "waiter": self.waiter.owner.id,
            "request_id": self.waiter.id,
            "key": self.key,
            "blocker": self.blocker.id,
            "held": self.held,
        }


class EdgeRef(NamedTuple):
    """A wait-for edge as the full sweep reads it: ids only.

    A sweep over 100 000 waiting requests needs only who waits for whom; decoding every request
    would cost more than finding the cycles. Whole requests are read for the edges of a cycle.
    """

    request_id: str
    source: str  # the waiting request's owner
    key: str
    target: str  # the blocking owner
    held: bool


@dataclass(frozen=True, slots=True)
class Cycle:
    """A cycle in the wait-for graph: edge i's blocker is edge i+1's waiter, the last closes it."""

    edges: tuple[WaitEdge, ...]

    @property
    def owners(self) -> list[str]:
        return [e.waiter.owner.id for e in self.edges]

    def describe(self) -> str:
        return "; ".join(e.describe() for e in self.edges)


class ResolutionPolicy(Protocol):
    """Picks the deadlock victim of a cycle, or None to leave it to the next policy in the chain."""

    def choose_victim(self, cycle: Cycle) -> Request | None: ...
