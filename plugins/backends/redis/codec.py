"""The JSON shapes the Lua scripts store and answer, to and from the engine's model.

Times, scores and leases travel as strings (Python's `repr`, Lua's `%.17g`): Redis's cjson keeps
only 14 significant digits of a number, which would shift a Unix time by up to a tenth of a
millisecond and could reorder two requests with nearly equal scores. Strings survive exactly.
"""

from __future__ import annotations

import json
from typing import Any

from sidecar.engine.model import (
    AcquireResult,
    AcquireStatus,
    Change,
    Ended,
    Ending,
    Grant,
    Handoff,
    Outcome,
    Owner,
    Priority,
    QueueSummary,
    Request,
)


def number(value: Any) -> str:
    """A float as the exact decimal text Lua's tonumber reads back to the same double."""
    return repr(float(value))


_encode = json.JSONEncoder(separators=(",", ":")).encode


def encode_request(request: Request, replica: str) -> str:
    """The request as stored: Request.to_json, with its times and score as exact strings."""
    lease = request.lease_seconds
    return _encode(
        {
            "id": request.id,
            "keys": list(request.keys),
            "owner": request.owner.to_json(),
            "priority": request.priority.label,
            "enqueued_at": repr(float(request.enqueued_at)),
            "score": repr(float(request.score)),
            "deadline": repr(float(request.deadline)),
            "lease_seconds": None if lease is None else repr(float(lease)),
            "seq": request.seq,
            "promoted": request.promoted,
            "replica": replica,
        }
    )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def request(data: dict[str, Any]) -> Request:
    return Request(
        id=str(data["id"]),
        keys=tuple(str(k) for k in data["keys"]),
        owner=Owner.from_json(data["owner"]),
        priority=Priority[str(data["priority"]).upper()],
        enqueued_at=float(data["enqueued_at"]),
        score=float(data["score"]),
        deadline=float(data["deadline"]),
        lease_seconds=_optional_float(data.get("lease_seconds")),
        seq=int(data.get("seq", 0)),
        promoted=bool(data.get("promoted", False)),
    )


def grant(data: dict[str, Any], owner: Owner | None = None) -> Grant:
    """A grant; `owner`, when the caller knows it already (its own request's), is not parsed."""
    return Grant(
        key=str(data["key"]),
        owner=owner if owner is not None else Owner.from_json(data["owner"]),
        token=int(data["token"]),
        acquired_at=float(data["acquired_at"]),
        lease_expires_at=_optional_float(data.get("lease_expires_at")),
        request_id=str(data["request_id"]),
    )


def _items(value: Any) -> list[Any]:
    # cjson writes an empty Lua table as {}: an empty list either way.
    return list(value) if isinstance(value, list) else []


def grants(value: Any, owner: Owner | None = None) -> tuple[Grant, ...]:
    return tuple(grant(g, owner) for g in _items(value))


def requests(value: Any) -> tuple[Request, ...]:
    return tuple(request(r) for r in _items(value))


def ended(data: dict[str, Any]) -> Ended:
    return Ended(request(data["request"]), Ending(data["ending"]), str(data.get("detail", "")))


def change(data: dict[str, Any]) -> Change:
    """A Change from the script's answer, which leaves out what is empty."""
    if not data:
        return Change()
    return Change(
        granted=[
            Handoff(request(h["request"]), grants(h["grants"])) for h in _items(data.get("granted"))
        ],
        released=list(grants(data.get("released"))),
        expired=list(grants(data.get("expired"))),
        ended=[ended(e) for e in _items(data.get("ended"))],
        queued=list(requests(data.get("queued"))),
        promoted=list(requests(data.get("promoted"))),
    )


def acquire_result(data: dict[str, Any], sent: Request) -> AcquireResult:
    """The answer to an acquire of `sent`; the script sends the request back only if it changed."""
    status: AcquireStatus = data["status"]
    returned = data.get("request")
    return AcquireResult(
        status,
        request(returned) if returned is not None else sent,
        grants=grants(data.get("grants"), sent.owner),  # every one is the requester's
        position=int(data.get("position", 0)),
        holders=grants(data.get("holders")),
        waiting=requests(data.get("waiting")),
        depth=int(data.get("depth", 0)),
        change=change(data.get("change") or {}),
    )


def outcome(data: dict[str, Any]) -> Outcome:
    tokens = data.get("tokens")
    return Outcome(
        request_id=str(data["request_id"]),
        ending=Ending(data["ending"]),
        finished_at=float(data["finished_at"]),
        tokens={str(k): int(v) for k, v in tokens.items()} if isinstance(tokens, dict) else {},
        detail=str(data.get("detail", "")),
    )


def handoff_of(data: dict[str, Any]) -> Handoff:
    """The handoff an outcome of ending `granted` recorded."""
    return Handoff(request(data["request"]), grants(data.get("grants")))


def queue_summary(data: dict[str, Any]) -> QueueSummary:
    by_priority = data.get("by_priority")
    return QueueSummary(
        depth=int(data["depth"]),
        by_priority={str(k): int(v) for k, v in by_priority.items()}
        if isinstance(by_priority, dict)
        else {},
        oldest_enqueued_at=_optional_float(data.get("oldest_enqueued_at")),
        keys_with_waiters=int(data["keys_with_waiters"]),
    )
