"""Built-in queue-overflow policies: whom to reject when `max-queue-size` requests wait."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sidecar.engine.model import Request
from sidecar.engine.policies import OverflowPolicy
from sidecar.plugin import hookimpl
from sidecar.plugin.registry import Registry


class RejectNewest:
    """The newcomer is refused; whoever waits keeps its place (the default, and the fairest)."""

    def choose_victim(self, incoming: Request, waiting: Sequence[Request]) -> str:
        return incoming.id


class RejectOldest:
    """The longest waiter is evicted to make room: fresh work wins over stale work."""

    def choose_victim(self, incoming: Request, waiting: Sequence[Request]) -> str:
        if not waiting:
            return incoming.id
        return min(waiting, key=lambda r: (r.enqueued_at, r.seq)).id


class RejectLowestPriority:
    """The lowest-priority request is refused, the newest among equals; the newcomer included."""

    def choose_victim(self, incoming: Request, waiting: Sequence[Request]) -> str:
        # The newcomer counts as the newest, so it loses ties with waiters of its priority.
        candidates = [(int(r.priority), -r.enqueued_at, -r.seq, r.id) for r in waiting]
        candidates.append((int(incoming.priority), float("-inf"), 0, incoming.id))
        return min(candidates)[3]


@hookimpl
def atlantis_sidecar_register_overflow_policies(
    registry: Registry[Callable[[], OverflowPolicy]],
) -> None:
    registry.register("reject_newest", RejectNewest)
    registry.register("reject_oldest", RejectOldest)
    registry.register("reject_lowest_priority", RejectLowestPriority)
