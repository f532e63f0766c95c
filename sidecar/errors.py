"""Error codes and the one exception type that carries them.

The codes EL001-EL008 are the ones in the operators' troubleshooting guide; EL009 and EL010 are
ours, for malformed requests and unknown things, so that every 4xx answer still names a code.
Each error knows its HTTP status so the API layer never has to guess.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Code(StrEnum):
    BACKEND_UNAVAILABLE = "EL001"
    ACQUIRE_TIMEOUT = "EL002"
    INVALID_CONFIG = "EL003"
    DEADLOCK_VICTIM = "EL004"
    QUEUE_OVERFLOW = "EL005"
    MIGRATION = "EL006"
    PERMISSION_DENIED = "EL007"
    RESOURCE_EXHAUSTION = "EL008"
    BAD_REQUEST = "EL009"
    NOT_FOUND = "EL010"


DESCRIPTIONS: dict[Code, str] = {
    Code.BACKEND_UNAVAILABLE: "Backend connection failed",
    Code.ACQUIRE_TIMEOUT: "Lock acquisition timeout",
    Code.INVALID_CONFIG: "Invalid configuration",
    Code.DEADLOCK_VICTIM: "Deadlock detected",
    Code.QUEUE_OVERFLOW: "Queue overflow",
    Code.MIGRATION: "Migration failure",
    Code.PERMISSION_DENIED: "Permission denied",
    Code.RESOURCE_EXHAUSTION: "Resource exhaustion",
    Code.BAD_REQUEST: "Malformed request",
    Code.NOT_FOUND: "Not found",
}

DEFAULT_STATUS: dict[Code, int] = {
    Code.BACKEND_UNAVAILABLE: 503,
    Code.ACQUIRE_TIMEOUT: 408,
    Code.INVALID_CONFIG: 400,
    Code.DEADLOCK_VICTIM: 409,
    Code.QUEUE_OVERFLOW: 429,
    Code.MIGRATION: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTION: 503,
    Code.BAD_REQUEST: 400,
    Code.NOT_FOUND: 404,
}


class LockError(Exception):
    """An error with a code, an HTTP status and JSON-safe details for the answer body."""

    def __init__(
        self, code: Code, message: str, *, status: int | None = None, **details: Any
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else DEFAULT_STATUS[code]
        self.details = details

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, "code": str(self.code), **self.details}

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"


def backend_unavailable(reason: str) -> LockError:
    return LockError(Code.BACKEND_UNAVAILABLE, f"backend connection failed: {reason}")


def bad_request(message: str, *, status: int = 400, **details: Any) -> LockError:
    return LockError(Code.BAD_REQUEST, message, status=status, **details)
