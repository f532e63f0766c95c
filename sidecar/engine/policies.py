"""What a queue-overflow policy and a deadlock-resolution policy are.

Policies are pure: they look at requests and pick one, and the engine carries out the choice
atomically in the backend. That keeps third-party policies simple and replica-safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sidecar.engine.model import Grant, Request


class OverflowPolicy(Protocol):
    """Decides whom to reject when `max-queue-size` requests already wait."""

    def choose_victim(self, incoming: Request, waiting: Sequence[Request]) -> str:
        """Return the id of the request to reject with EL005: `incoming.id` or a waiting one's."""
        ...


@dataclass(frozen=True, slots=True)
class WaitEdge:
    """`waiter` waits for `key`, which `holder` holds: an edge waiter.owner -> holder.owner."""

    waiter: Request
    key: str
    holder: Grant


@dataclass(frozen=True, slots=True)
class Cycle:
    """A cycle in the wait-for graph, one edge per owner in the cycle."""

    edges: tuple[WaitEdge, ...]

    @property
    def owners(self) -> list[str]:
        return [e.waiter.owner.id for e in self.edges]

    def describe(self) -> str:
        return "; ".join(
            f"{e.waiter.owner.id} waits for {e.key!r} held by {e.holder.owner.id}"
            for e in self.edges
        )


class ResolutionPolicy(Protocol):
    """Picks the deadlock victim of a cycle, or None to leave it to the next policy in the chain."""

    def choose_victim(self, cycle: Cycle) -> Request | None: ...
