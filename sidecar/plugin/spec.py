"""Every hook a plugin can implement. This module is the plugin API's reference.

Plugins implement hooks with `@hookimpl` from `sidecar.plugin` and are found in two ways: the
built-ins listed in `plugins.BUILTIN_PLUGINS`, and third-party distributions that declare an entry
point in the `atlantis_sidecar` group. Hooks are called with keyword arguments, and an
implementation may accept only the arguments it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from sidecar.backends.base import Backend
    from sidecar.engine.events import LockEvent
    from sidecar.engine.policies import OverflowPolicy, ResolutionPolicy
    from sidecar.plugin.registry import Registry
    from sidecar.routing.legacy import LegacySourceFactory

PROJECT = "atlantis_sidecar"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def atlantis_sidecar_register_backends(registry: Registry[type[Backend]]) -> None:
    """Register lock backend classes by name, e.g. ``registry.register("etcd", EtcdBackend)``.

    A backend subclasses ``sidecar.backends.base.Backend`` (or ``TxnBackend`` when it can run a
    Python function atomically) and is chosen with the ``backend`` config key. The shared backend
    contract suite in ``tests/backend_contract.py`` is the test a new backend must pass.
    """


@hookspec
def atlantis_sidecar_register_overflow_policies(
    registry: Registry[Callable[[], OverflowPolicy]],
) -> None:
    """Register queue-overflow policy factories by name.

    Chosen with ``queue-config.overflow-policy``; called when ``max-queue-size`` requests already
    wait, the policy names the request to reject with EL005 (the newcomer or a waiting one).
    """


@hookspec
def atlantis_sidecar_register_resolution_policies(
    registry: Registry[Callable[[], ResolutionPolicy]],
) -> None:
    """Register deadlock-resolution policy factories by name.

    Listed in ``deadlock-detection.resolution-policies``; the first policy in that list that picks
    a victim in a wait-for cycle decides, and the victim's waiting request fails with EL004.
    """


@hookspec
def atlantis_sidecar_register_legacy_sources(registry: Registry[LegacySourceFactory]) -> None:
    """Register readers of Atlantis's own lock store (its API, Redis, BoltDB) by name.

    Migration uses a legacy source to import Atlantis's locks before their keys move to the
    engine, and to keep the two in step while they are there.
    """


@hookspec
def atlantis_sidecar_lock_event(event: LockEvent) -> None:
    """Observe a lock event (granted, released, queued, dequeued, expired, timed out, overflow
    evicted, cancelled, deadlock).

    Called off the hot path, in a worker thread, after the change is committed; an ``async def``
    implementation is awaited on the event loop with a time limit. A slow implementation delays
    only other events (the event queue is bounded, overflow is dropped and counted), and an
    exception is logged and counted, never passed to lock traffic.
    """
