"""Built-in deadlock-resolution policies: which waiting request of a cycle gives way (EL004).

Each is deterministic for a given cycle (`random` too, once seeded), so every replica that looks
at the same snapshot picks the same victim.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from sidecar.engine.model import Request
from sidecar.engine.policies import Cycle, ResolutionPolicy
from sidecar.plugin import hookimpl
from sidecar.plugin.registry import Registry


def _youngest_key(request: Request) -> tuple[float, int, str]:
    return (request.enqueued_at, request.seq, request.id)


class LowestPriority:
    """The lowest priority gives way; among equals the youngest request (it has waited least)."""

    def choose_victim(self, cycle: Cycle) -> Request | None:
        waiters = [e.waiter for e in cycle.edges]
        lowest = min(int(r.priority) for r in waiters)
        return max((r for r in waiters if int(r.priority) == lowest), key=_youngest_key)


class YoungestFirst:
    """The request that started waiting last gives way, whatever its priority."""

    def choose_victim(self, cycle: Cycle) -> Request | None:
        return max((e.waiter for e in cycle.edges), key=_youngest_key)


class RandomVictim:
    """A victim drawn at random; pass a seed for repeatable tests."""

    def __init__(self, seed: int | None = None) -> None:
        self._random = random.Random(seed)

    def choose_victim(self, cycle: Cycle) -> Request | None:
        waiters = sorted((e.waiter for e in cycle.edges), key=_youngest_key)
        return self._random.choice(waiters) if waiters else None


@hookimpl
def atlantis_sidecar_register_resolution_policies(
    registry: Registry[Callable[[], ResolutionPolicy]],
) -> None:
    registry.register("lowest_priority", LowestPriority)
    registry.register("youngest_first", YoungestFirst)
    registry.register("random", RandomVictim)
