"""What a Redis deployment is called and how to wait for it: no redis-py needed here, so the
backend can be registered (and configured, and described) without importing the client."""

from __future__ import annotations

import time

from sidecar.config import RedisSettings


def mode_of(settings: RedisSettings) -> str:
    if settings.cluster_nodes:
        return "cluster"
    if settings.sentinel.nodes:
        return "sentinel"
    return "standalone"


def where(settings: RedisSettings) -> str:
    """The Redis deployment, for messages and health (never a secret)."""
    mode = mode_of(settings)
    if mode == "cluster":
        return "cluster " + ",".join(settings.cluster_nodes)
    if mode == "sentinel":
        nodes = ",".join(settings.sentinel.nodes)
        return f"sentinel master {settings.sentinel.master_name!r} via {nodes}"
    return f"{settings.host}:{settings.port}"


def describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "..."


class Backoff:
    """Delays for a loop that must keep trying (the subscriber): doubling, capped, and a note
    of when it last logged, so that an outage logs a line every few seconds, not hundreds."""

    def __init__(self, first: float, cap: float = 5.0, log_every: float = 10.0) -> None:
        self.first = first
        self.cap = cap
        self.log_every = log_every
        self.delay = first
        self._logged = 0.0

    def reset(self) -> None:
        self.delay = self.first

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.cap, self.delay * 2)
        return delay

    def should_log(self) -> bool:
        now = time.monotonic()
        if now - self._logged >= self.log_every:
            self._logged = now
            return True
        return False
