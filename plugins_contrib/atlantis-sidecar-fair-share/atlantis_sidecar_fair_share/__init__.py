"""A fair-share queue-overflow policy for atlantis-lock-sidecar.

When `max-queue-size` requests already wait, the owner with the most waiting requests gives way:
its newest waiting request is evicted (EL005) to make room for the newcomer. The newcomer counts
for its own owner, so an owner who is already (tied for) the heaviest cannot push anyone out: its
new request is the one refused. One busy pull request or CI job can thus fill the queue only until
somebody else needs a place.

Enable it with ``queue-config.overflow-policy = "fair_share"`` once this distribution is installed
beside the sidecar; it is found through the ``atlantis_sidecar`` entry-point group.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from sidecar.engine.model import Request
from sidecar.engine.policies import OverflowPolicy
from sidecar.plugin import hookimpl
from sidecar.plugin.registry import Registry

__version__ = "0.1.0"

POLICY_NAME = "fair_share"

__all__ = ["POLICY_NAME", "FairShare", "atlantis_sidecar_register_overflow_policies"]


def _newest_first(request: Request) -> tuple[float, int, str]:
    """Sort key: the request that arrived last is the largest (seq breaks same-instant ties)."""
    return (request.enqueued_at, request.seq, request.id)


class FairShare:
    """The owner holding the most places in the queue gives up its newest one.

    Owners are compared by ``Owner.id`` (a pull request ``repo#pull`` or a client name). The
    policy is pure and deterministic, so every replica that sees the same queue picks the same
    victim.
    """

    def choose_victim(self, incoming: Request, waiting: Sequence[Request]) -> str:
        """Return the id of the request to reject: ``incoming.id`` or a waiting request's id."""
        counts = Counter(r.owner.id for r in waiting)
        counts[incoming.owner.id] += 1
        heaviest = max(counts.values())
        if counts[incoming.owner.id] == heaviest:
            # The newcomer's owner already has the largest share (perhaps tied): it waits its turn.
            return incoming.id
        # Several owners may tie for the largest share: the newest request among theirs goes.
        candidates = [r for r in waiting if counts[r.owner.id] == heaviest]
        return max(candidates, key=_newest_first).id


@hookimpl
def atlantis_sidecar_register_overflow_policies(
    registry: Registry[Callable[[], OverflowPolicy]],
) -> None:
    registry.register(POLICY_NAME, FairShare)
