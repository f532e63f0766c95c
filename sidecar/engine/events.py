"""Lock events that plugins can observe through the `atlantis_sidecar_lock_event` hook."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class EventKind(StrEnum):
    GRANTED = "granted"
    RELEASED = "released"
    QUEUED = "queued"
    DEQUEUED = "dequeued"
    EXPIRED = "expired"
    TIMED_OUT = "timed_out"
    OVERFLOW_EVICTED = "overflow_evicted"
    CANCELLED = "cancelled"
    DEADLOCK = "deadlock"


@dataclass(frozen=True, slots=True)
class LockEvent:
    kind: EventKind
    keys: tuple[str, ...]
    owner_id: str
    request_id: str
    at: float
    tokens: dict[str, int] = field(default_factory=dict)
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "keys": list(self.keys),
            "owner_id": self.owner_id,
            "request_id": self.request_id,
            "at": self.at,
            "tokens": self.tokens,
            "detail": self.detail,
        }
