"""Queue order: effective priority first, then first come, first served.

Anti-starvation makes every `priority-boost-interval` of waiting worth one priority level. Since
that boost grows linearly with time for every waiter alike, comparing effective priorities is the
same as comparing `enqueued_at - priority * interval`, a number fixed when the request is made. So
a key's queue is a plain sorted structure (a heap, an SQL index, a Redis sorted set) that never
needs re-sorting; this is what `heap-optimization` and `lazy-evaluation` mean here. The only
re-scoring is the one-time move to the front after `max-wait-time`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.engine.model import Priority

# One priority level when anti-starvation is off: longer than any wait, so priority is strict.
STRICT_LEVEL_SECONDS = 1e10
# A request promoted after max-wait-time sorts before every priority, in order of arrival.
PROMOTED_OFFSET = 1e12


@dataclass(frozen=True, slots=True)
class Ordering:
    use_priority: bool = True
    anti_starvation: bool = True
    boost_interval: float = 30.0
    max_wait: float | None = 300.0

    @property
    def level_seconds(self) -> float:
        if not self.use_priority:
            return 0.0
        return self.boost_interval if self.anti_starvation else STRICT_LEVEL_SECONDS

    def score(self, priority: Priority, enqueued_at: float) -> float:
        return enqueued_at - int(priority) * self.level_seconds

    @staticmethod
    def promoted_score(enqueued_at: float) -> float:
        return enqueued_at - PROMOTED_OFFSET

    def promote_enqueued_before(self, now: float) -> float | None:
        """Requests enqueued before this moment have waited past max-wait-time."""
        if self.max_wait is None or not self.anti_starvation:
            return None
        return now - self.max_wait
