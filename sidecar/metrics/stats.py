"""One place that counts what the engine does, feeding both Prometheus and the JSON endpoint.

Each app gets its own `CollectorRegistry` (tests build many apps in one process). Latency
percentiles come from a bounded window of recent samples, not from histogram buckets, so the JSON
figures are exact for that window.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

WINDOW = 10_000
_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


class EngineStats:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        if registry is None:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            self.registry.register(GC_COLLECTOR)
        r = self.registry
        self.locks_total = Counter(
            "atlantis_locks", "Acquire requests by how they ended.", ["outcome"], registry=r
        )
        self.errors_total = Counter(
            "atlantis_lock_errors",
            "Lock operations that failed, by error code.",
            ["code"],
            registry=r,
        )
        self.acquire_seconds = Histogram(
            "atlantis_lock_duration_seconds",
            "Time from an acquire request to its grant (waiting included).",
            buckets=_BUCKETS,
            registry=r,
        )
        self.held_seconds = Histogram(
            "atlantis_lock_held_seconds",
            "How long grants were held before release or expiry.",
            buckets=_BUCKETS,
            registry=r,
        )
        self.handoffs_total = Counter(
            "atlantis_lock_handoffs",
            "Waiting requests granted by a release, expiry or cancel.",
            registry=r,
        )
        self.queue_size = Gauge("atlantis_queue_size", "Requests waiting in the queue.", registry=r)
        self.deadlocks_total = Counter(
            "atlantis_deadlock_detected", "Deadlock cycles detected.", registry=r
        )
        self.backend_health = Gauge(
            "atlantis_backend_health_score", "1 healthy, 0.5 degraded, 0 unhealthy.", registry=r
        )
        self.plugin_errors_total = Counter(
            "atlantis_plugin_errors", "Exceptions raised by plugin hooks.", ["plugin"], registry=r
        )
        self.events_dropped_total = Counter(
            "atlantis_plugin_events_dropped",
            "Lock events dropped because plugins lagged.",
            registry=r,
        )
        self.divergences_total = Counter(
            "atlantis_lock_divergences",
            "Atlantis locks that Atlantis and the engine both hold for different owners (EL006).",
            registry=r,
        )
        self._granted = self.locks_total.labels("granted")  # the hot path's child, looked up once
        self._latencies: deque[float] = deque(maxlen=WINDOW)
        self.counts: dict[str, int] = {
            "acquisitions_total": 0,
            "grants_total": 0,
            "releases_total": 0,
            "expired_total": 0,
            "timeouts_total": 0,
            "busy_total": 0,
            "overflows_total": 0,
            "cancelled_total": 0,
            "deadlock_victims_total": 0,
            "handoffs_total": 0,
            "errors_total": 0,
            "plugin_errors_total": 0,
            "events_dropped_total": 0,
            "divergences_total": 0,
        }
        self.queue_depth = 0

    def _count(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def acquired(self, latency_seconds: float) -> None:
        self._count("acquisitions_total")
        self._count("grants_total")
        self._granted.inc()
        self.acquire_seconds.observe(latency_seconds)
        self._latencies.append(latency_seconds)

    def handoff(self, count: int) -> None:
        self._count("handoffs_total", count)
        self._count("grants_total", count)
        self.handoffs_total.inc(count)

    def released(self, held_seconds: list[float], *, expired: bool = False) -> None:
        self._count("expired_total" if expired else "releases_total", len(held_seconds))
        for held in held_seconds:
            self.held_seconds.observe(max(0.0, held))

    def failed(self, outcome: str, code: str) -> None:
        """An acquire that ended without a grant (timed out, rejected, cancelled, victim)."""
        self._count("acquisitions_total")
        name = {
            "timed_out": "timeouts_total",
            "busy": "busy_total",
            "overflow": "overflows_total",
            "cancelled": "cancelled_total",
            "deadlock": "deadlock_victims_total",
        }.get(outcome)
        if name:
            self._count(name)
        self.locks_total.labels(outcome).inc()
        self.error(code)

    def error(self, code: str) -> None:
        self._count("errors_total")
        self.errors_total.labels(code).inc()

    def plugin_error(self, plugin: str) -> None:
        self._count("plugin_errors_total")
        self.plugin_errors_total.labels(plugin).inc()

    def event_dropped(self) -> None:
        self._count("events_dropped_total")
        self.events_dropped_total.inc()

    def divergence(self) -> None:
        """A key Atlantis and the engine both hold for different owners (reported once)."""
        self._count("divergences_total")
        self.divergences_total.inc()

    def set_queue_depth(self, depth: int) -> None:
        self.queue_depth = depth
        self.queue_size.set(depth)

    def latency_summary(self) -> dict[str, float]:
        values = sorted(self._latencies)
        ms = 1000.0
        return {
            "avg": (sum(values) / len(values) * ms) if values else 0.0,
            "p50": percentile(values, 50) * ms,
            "p95": percentile(values, 95) * ms,
            "p99": percentile(values, 99) * ms,
        }

    def to_json(self) -> dict[str, Any]:
        lat = self.latency_summary()
        return {
            **self.counts,
            # An integer, so the guide's `[ "$LATENCY" -gt 1000 ]` shell check works as written.
            "avg_latency_ms": round(lat["avg"]),
            "p50_latency_ms": round(lat["p50"], 3),
            "p95_latency_ms": round(lat["p95"], 3),
            "p99_latency_ms": round(lat["p99"], 3),
            "latency_ms": {k: round(v, 3) for k, v in lat.items()},
            "queue_depth": self.queue_depth,
            "latency_window": len(self._latencies),
        }
