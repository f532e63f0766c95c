"""The nouns of the engine: owners, requests, grants, and what one atomic operation changed.

Every backend stores exactly these shapes, so they are plain frozen dataclasses with a JSON form
(`to_json`/`from_json`) that the SQLite and Redis backends persist and the HTTP API returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any, Literal


class Priority(IntEnum):
    LOW = 0
    NORMAL = 1
    HIGH = 2
    CRITICAL = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Owner:
    """Who holds or waits: a pull request (`repo#pull`) or a named client.

    Two owners are the same owner exactly when their ids are equal; `repo`, `pull`, `user` and
    `url` (the pull request's web page) only describe a pull-request owner for Atlantis-shaped
    answers (`/api/locks`, the lock page). `url` came later: JSON without it still loads.
    """

    id: str
    repo: str | None = None
    pull: int | None = None
    user: str | None = None
    url: str | None = None

    @classmethod
    def pull_request(
        cls, repo: str, pull: int, user: str | None = None, url: str | None = None
    ) -> Owner:
        return cls(id=f"{repo}#{pull}", repo=repo, pull=pull, user=user, url=url)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id}
        if self.repo is not None:
            out["repo"] = self.repo
        if self.pull is not None:
            out["pull"] = self.pull
        if self.user is not None:
            out["user"] = self.user
        if self.url is not None:
            out["url"] = self.url
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Owner:
        return cls(
            id=data["id"],
            repo=data.get("repo"),
            pull=data.get("pull"),
            user=data.get("user"),
            url=data.get("url"),
        )


@dataclass(frozen=True, slots=True)
class Grant:
    """A held lock. `token` is the key's fencing token: it grows with every grant of the key."""

    key: str
    owner: Owner
    token: int
    acquired_at: float
    lease_expires_at: float | None
    request_id: str

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "owner": self.owner.to_json(),
            "token": self.token,
            "acquired_at": self.acquired_at,
            "lease_expires_at": self.lease_expires_at,
            "request_id": self.request_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Grant:
        return cls(
            key=data["key"],
            owner=Owner.from_json(data["owner"]),
            token=int(data["token"]),
            acquired_at=float(data["acquired_at"]),
            lease_expires_at=data.get("lease_expires_at"),
            request_id=data["request_id"],
        )


@dataclass(frozen=True, slots=True)
class Request:
    """An acquire: all of `keys` together for `owner`, or a wait in every key's queue.

    `score` orders a key's queue (lowest first, then `seq`); it is fixed when the request is made
    (see `Ordering`), except that a max-wait promotion lowers it once.
    """

    id: str
    keys: tuple[str, ...]
    owner: Owner
    priority: Priority
    enqueued_at: float
    score: float
    deadline: float
    lease_seconds: float | None = None
    seq: int = 0
    promoted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "keys": list(self.keys),
            "owner": self.owner.to_json(),
            "priority": self.priority.label,
            "enqueued_at": self.enqueued_at,
            "score": self.score,
            "deadline": self.deadline,
            "lease_seconds": self.lease_seconds,
            "seq": self.seq,
            "promoted": self.promoted,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Request:
        return cls(
            id=data["id"],
            keys=tuple(data["keys"]),
            owner=Owner.from_json(data["owner"]),
            priority=Priority[str(data["priority"]).upper()],
            enqueued_at=float(data["enqueued_at"]),
            score=float(data["score"]),
            deadline=float(data["deadline"]),
            lease_seconds=data.get("lease_seconds"),
            seq=int(data.get("seq", 0)),
            promoted=bool(data.get("promoted", False)),
        )


class Ending(StrEnum):
    """Why a request left the queue."""

    GRANTED = "granted"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    EVICTED = "evicted"
    DEADLOCK = "deadlock"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of a request that waited; kept for a while so its caller can ask."""

    request_id: str
    ending: Ending
    finished_at: float
    tokens: dict[str, int] = field(default_factory=dict)
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "ending": str(self.ending),
            "finished_at": self.finished_at,
            "tokens": self.tokens,
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        return cls(
            request_id=data["request_id"],
            ending=Ending(data["ending"]),
            finished_at=float(data["finished_at"]),
            tokens={str(k): int(v) for k, v in data.get("tokens", {}).items()},
            detail=str(data.get("detail", "")),
        )


@dataclass(frozen=True, slots=True)
class Handoff:
    """A waiting request that one operation granted: every key of it, with its tokens."""

    request: Request
    grants: tuple[Grant, ...]


@dataclass(frozen=True, slots=True)
class Ended:
    """A waiting request that one operation removed without granting it."""

    request: Request
    ending: Ending
    detail: str = ""


@dataclass(slots=True)
class Change:
    """Everything one atomic backend operation did: the engine wakes waiters and emits events."""

    granted: list[Handoff] = field(default_factory=list)
    released: list[Grant] = field(default_factory=list)
    expired: list[Grant] = field(default_factory=list)
    ended: list[Ended] = field(default_factory=list)
    queued: list[Request] = field(default_factory=list)
    promoted: list[Request] = field(default_factory=list)

    def merge(self, other: Change) -> None:
        self.granted.extend(other.granted)
        self.released.extend(other.released)
        self.expired.extend(other.expired)
        self.ended.extend(other.ended)
        self.queued.extend(other.queued)
        self.promoted.extend(other.promoted)

    def __bool__(self) -> bool:
        return bool(
            self.granted
            or self.released
            or self.expired
            or self.ended
            or self.queued
            or self.promoted
        )


AcquireStatus = Literal["granted", "queued", "busy", "full"]


@dataclass(frozen=True, slots=True)
class AcquireResult:
    """The answer of one try-acquire-or-enqueue.

    - granted: `grants` holds every key of the request (re-entrant keys keep their old grant).
    - queued: the request waits; `position` is its worst place over its keys (1 = next), and
      `depth` how many requests wait in all.
    - busy: not granted and not queued (the caller asked not to wait); `holders` are in the way.
    - full: not queued because the queue is full; `waiting` lists every waiting request so the
      overflow policy can pick whom to reject.
    """

    status: AcquireStatus
    request: Request
    grants: tuple[Grant, ...] = ()
    position: int = 0
    holders: tuple[Grant, ...] = ()
    waiting: tuple[Request, ...] = ()
    depth: int = 0
    change: Change = field(default_factory=Change)


@dataclass(frozen=True, slots=True)
class RequestState:
    """A request as its caller sees it: still waiting (with its place) or finished."""

    request_id: str
    state: str
    request: Request | None = None
    position: int = 0
    positions: dict[str, int] = field(default_factory=dict)
    outcome: Outcome | None = None


@dataclass(frozen=True, slots=True)
class KeyState:
    key: str
    grant: Grant | None
    waiting: tuple[Request, ...]
    last_token: int


@dataclass(frozen=True, slots=True)
class QueueSummary:
    depth: int
    by_priority: dict[str, int]
    oldest_enqueued_at: float | None
    keys_with_waiters: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every grant and waiting request, read in one transaction: the deadlock detector's view."""

    grants: tuple[Grant, ...]
    waiting: tuple[Request, ...]
    taken_at: float
