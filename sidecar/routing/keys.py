"""Routing of Atlantis lock keys between Atlantis and the engine (design.md "Routing").

A key's bucket depends only on the key, so its routing is sticky; raising `traffic-percentage`
only adds buckets, so keys only ever move from legacy to enhanced.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum

ATLANTIS_PREFIX = "atlantis:"
APPLY_LOCK_KEY = ATLANTIS_PREFIX + "apply"


class System(StrEnum):
    LEGACY = "legacy"
    ENHANCED = "enhanced"


def bucket(atlantis_id: str) -> int:
    digest = hashlib.sha256(atlantis_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def route(key: str, *, enabled: bool, active_system: str, traffic_percentage: int) -> System:
    """The system that serves `key`. Keys outside the `atlantis:` namespace are always enhanced."""
    if not enabled:
        return System.LEGACY
    if not key.startswith(ATLANTIS_PREFIX) or active_system == System.ENHANCED:
        return System.ENHANCED
    in_bucket = bucket(key[len(ATLANTIS_PREFIX) :]) < traffic_percentage
    return System.ENHANCED if in_bucket else System.LEGACY
