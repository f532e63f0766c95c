"""`GET /api/locks` in Atlantis's exact shape, with the engine's grants merged in.

Atlantis answers `{"Locks":[...]}` (`{"Locks":null}` when it holds none) with Go's field names and
no JSON tags: `Name` (the id), `ProjectName`, `ProjectRepo`, `ProjectRepoPath`, `PullID` (a
string), `PullURL`, `User`, `Workspace`, `Time` (RFC 3339 with nanoseconds and an offset)
(atlantis-lock-api.md "Lock routes"). When nothing needs adding, Atlantis's bytes are relayed
untouched; otherwise the merged listing is written the way Go's `encoding/json` writes it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sidecar.engine.model import Grant, Owner
from sidecar.proxy.atlantis_ids import split_id
from sidecar.routing.keys import ATLANTIS_PREFIX

# Go's encoder escapes these inside strings (HTML safety, and JavaScript line terminators).
_GO_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def go_json(value: Any) -> str:
    """`json.Marshal` output: compact, UTF-8, with Go's extra escapes (only inside strings, as
    these characters never appear in JSON's own syntax)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for char, escape in _GO_ESCAPES.items():
        text = text.replace(char, escape)
    return text


def go_time(timestamp: float) -> str:
    """Go's JSON form of a `time.Time` in UTC: RFC 3339, fraction with trailing zeros trimmed.

    The engine keeps times as float seconds, good to about a microsecond, so no more digits are
    invented than that.
    """
    micros = round(timestamp * 1_000_000)
    seconds, fraction = divmod(micros, 1_000_000)
    base = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return base + (f".{fraction:06d}".rstrip("0") if fraction else "") + "Z"


def lock_detail(grant: Grant) -> dict[str, str]:
    """An engine grant on `atlantis:<id>` as an Atlantis `/api/locks` item.

    A pull-request owner fills every field (`PullURL` when the owner was given a `url`). A
    named client holding an Atlantis key has no pull request: `PullID` and `PullURL` are empty
    and `User` is the client's name, so the UI still shows who holds it.
    """
    lock_id = grant.key[len(ATLANTIS_PREFIX) :]
    owner = grant.owner
    parts = split_id(lock_id, owner.repo)
    is_pull = owner.pull is not None
    return {
        "Name": lock_id,
        "ProjectName": parts.project,
        "ProjectRepo": parts.repo,
        "ProjectRepoPath": parts.path,
        "PullID": str(owner.pull) if is_pull else "",
        "PullURL": owner.url or "",
        "User": owner.user or ("" if is_pull else owner.id),
        "Workspace": parts.workspace,
        "Time": go_time(grant.acquired_at),
    }


def atlantis_owner(item: dict[str, Any]) -> str:
    """The owner of an Atlantis item, written like an engine pull-request owner id."""
    return f"{item.get('ProjectRepo', '')}#{item.get('PullID', '')}"


def same_owner(item: dict[str, Any], owner: Owner) -> bool:
    return (
        owner.pull is not None
        and item.get("ProjectRepo") == owner.repo
        and item.get("PullID") == str(owner.pull)
    )


@dataclass(frozen=True, slots=True)
class Divergence:
    key: str
    atlantis_owner: str
    engine_owner: str


@dataclass(frozen=True, slots=True)
class Merged:
    body: bytes | None  # None: Atlantis's answer stands, byte for byte
    divergences: tuple[Divergence, ...]


def merge(atlantis_body: bytes, grants: Sequence[Grant]) -> Merged:
    """Atlantis's listing plus the engine's grants it lacks; the engine's grant wins a conflict.

    Raises ValueError when Atlantis's body is not its usual `{"Locks": ...}` object.
    """
    text = atlantis_body.decode("utf-8")
    trailer = text[len(text.rstrip()) :]
    data = json.loads(text)
    if not isinstance(data, dict) or "Locks" not in data:
        raise ValueError("not an Atlantis lock listing")
    locks = data["Locks"]
    if locks is None:
        locks = []
    if not isinstance(locks, list):
        raise ValueError("Locks is not a list")
    where = {item.get("Name"): i for i, item in enumerate(locks) if isinstance(item, dict)}
    changed = False
    divergences: list[Divergence] = []
    for grant in grants:
        detail = lock_detail(grant)
        index = where.get(detail["Name"])
        if index is None:
            locks.append(detail)
            changed = True
        elif not same_owner(locks[index], grant.owner):
            divergences.append(Divergence(grant.key, atlantis_owner(locks[index]), grant.owner.id))
            locks[index] = detail
            changed = True
    if not changed:
        return Merged(None, tuple(divergences))
    data["Locks"] = locks
    return Merged((go_json(data) + trailer).encode(), tuple(divergences))
