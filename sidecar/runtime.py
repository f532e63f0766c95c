"""Everything a running sidecar is made of, built from settings and plugins, and its reloads.

No I/O happens here: the app's cleanup contexts start and stop the pieces. A reload re-reads the
config the sidecar was started with (file, environment, CLI overrides), applies what can change
at runtime and reports what needs a restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar import config
from sidecar.backends.base import Backend
from sidecar.config import LoadResult, Settings
from sidecar.engine.detector import DeadlockDetector, DetectorSettings
from sidecar.engine.manager import EngineSettings, LockManager
from sidecar.engine.ordering import Ordering
from sidecar.engine.policies import OverflowPolicy
from sidecar.errors import Code, LockError
from sidecar.metrics.stats import EngineStats
from sidecar.plugin.dispatch import EventDispatcher
from sidecar.plugin.manager import Plugins

log = logging.getLogger("enhanced-locking.runtime")

RELOAD_HISTORY = 50


def engine_settings(settings: Settings) -> EngineSettings:
    pq = settings.priority_queue
    qc = settings.queue_config
    return EngineSettings(
        ordering=Ordering(
            use_priority=pq.enabled,
            anti_starvation=pq.anti_starvation,
            boost_interval=pq.priority_boost_interval,
            max_wait=pq.max_wait_time,
        ),
        lock_timeout=settings.lock_timeout,
        queue_timeout=settings.queue_timeout,
        max_queue=qc.max_queue_size,
        processing_interval=qc.processing_interval,
        batch_size=qc.batch_size,
        sweepers=qc.workers if qc.parallel_processing else 1,
    )


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where the settings came from, so a reload reads the same places again."""

    path: Path | None
    env: Mapping[str, str]
    overrides: Mapping[str, str] = field(default_factory=dict)

    def load(self, plugins: Plugins) -> LoadResult:
        return config.load(
            self.path,
            env=dict(self.env),
            overrides=self.overrides,
            known_names=plugins.known_names(),
        )


@dataclass
class Runtime:
    settings: Settings
    plugins: Plugins
    source: ConfigSource
    stats: EngineStats
    backend: Backend
    events: EventDispatcher
    engine: LockManager
    detector: DeadlockDetector
    started_at: float = field(default_factory=time.time)
    reloads: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings, plugins: Plugins, source: ConfigSource) -> Runtime:
        stats = EngineStats()
        backend = plugins.backends.get(settings.backend).from_settings(settings)
        events = EventDispatcher(plugins, stats)
        engine = LockManager(
            backend,
            engine_settings(settings),
            overflow=overflow_policy(plugins, settings),
            stats=stats,
            events=events,
        )
        detector = DeadlockDetector(engine, detector_settings(plugins, settings), stats)
        engine.on_wait = detector.on_wait
        return cls(settings, plugins, source, stats, backend, events, engine, detector)

    def reload(self, *, by: str) -> dict[str, Any]:
        """Re-read the config; apply it if valid. Raises LockError(EL003) listing the problems."""
        result = self.source.load(self.plugins)
        if result.problems:
            raise LockError(
                Code.INVALID_CONFIG,
                "configuration invalid; nothing was changed",
                problems=[str(p) for p in result.problems],
            )
        return self.apply(result.settings, by=by)

    def apply(self, new: Settings, *, by: str) -> dict[str, Any]:
        old = self.settings
        changed = _changed_paths(config.redacted(old), config.redacted(new))
        restart = config.diff_restart_required(old, new)
        self.settings = new
        self.engine.reconfigure(engine_settings(new), overflow_policy(self.plugins, new))
        self.detector.reconfigure(detector_settings(self.plugins, new))
        record = {
            "at": time.time(),
            "by": by,
            "changed": changed,
            "restart_required": restart,
        }
        self.reloads.append(record)
        del self.reloads[:-RELOAD_HISTORY]
        if restart:
            log.warning(
                "config reloaded by %s; these changes need a restart: %s", by, ", ".join(restart)
            )
        else:
            log.info("config reloaded by %s; changed: %s", by, ", ".join(changed) or "nothing")
        return record


def detector_settings(plugins: Plugins, settings: Settings) -> DetectorSettings:
    dd = settings.deadlock_detection
    return DetectorSettings(
        enabled=dd.enabled,
        check_interval=dd.check_interval,
        min_cycle_length=dd.min_cycle_length,
        confidence_threshold=dd.confidence_threshold,
        policies=tuple(
            (name, plugins.resolution_policies.get(name)()) for name in dd.resolution_policies
        ),
        max_attempts=dd.max_resolution_attempts,
    )


def overflow_policy(plugins: Plugins, settings: Settings) -> OverflowPolicy:
    return plugins.overflow_policies.get(settings.queue_config.overflow_policy)()


def _changed_paths(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _changed_paths(a, b, path + ".")
        elif a != b:
            out.append(path)
    return out
