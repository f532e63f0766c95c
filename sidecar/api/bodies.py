"""Parsing and bounding what API callers send: anything off is a 400 EL009 before state moves."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from sidecar.config.durations import parse_duration
from sidecar.engine.model import Owner, Priority
from sidecar.errors import bad_request

MAX_BODY_BYTES = 256 * 1024
MAX_KEYS = 64
MAX_KEY_BYTES = 1024
MAX_OWNER_CHARS = 256
MAX_URL_CHARS = 2048
MAX_WAIT_SECONDS = 3600.0
MAX_HOLD_SECONDS = 7 * 24 * 3600.0


async def json_object(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise bad_request(f"body too large (limit {MAX_BODY_BYTES} bytes)", status=413)
    try:
        raw = await request.content.read(MAX_BODY_BYTES + 1)
    except ValueError as exc:
        raise bad_request(f"unreadable body: {exc}") from None
    if len(raw) > MAX_BODY_BYTES:
        raise bad_request(f"body too large (limit {MAX_BODY_BYTES} bytes)", status=413)
    try:
        data = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise bad_request("the body must be a JSON object")
    return data


def only(body: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise bad_request(f"unknown field(s): {', '.join(unknown)}", allowed=sorted(allowed))


def key(value: object, field: str = "key") -> str:
    if not isinstance(value, str):
        raise bad_request(f"{field} must be a string")
    if not value:
        raise bad_request(f"{field} must not be empty")
    if len(value.encode()) > MAX_KEY_BYTES:
        raise bad_request(f"{field} is longer than {MAX_KEY_BYTES} bytes")
    return value


def keys(body: Mapping[str, Any]) -> list[str]:
    if "keys" in body and "key" in body:
        raise bad_request("give either key or keys, not both")
    if "key" in body:
        return [key(body["key"])]
    value = body.get("keys")
    if not isinstance(value, list) or not value:
        raise bad_request("keys must be a non-empty list of strings")
    if len(value) > MAX_KEYS:
        raise bad_request(f"at most {MAX_KEYS} keys per request")
    return [key(v, "keys[]") for v in value]


def _text(value: object, field: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_OWNER_CHARS:
        raise bad_request(f"{field} must be a string of 1 to {MAX_OWNER_CHARS} characters")
    return value


def owner(value: object) -> Owner:
    """A named client (a string or {"name"}) or a pull request ({"repo", "pull", "user"?,
    "url"?})."""
    if isinstance(value, str):
        return Owner(_text(value, "owner"))
    if not isinstance(value, dict):
        raise bad_request('owner must be a string or an object like {"repo": ..., "pull": ...}')
    only(value, {"name", "repo", "pull", "user", "url"})
    if "name" in value:
        if set(value) != {"name"}:
            raise bad_request("owner: give name alone, or repo and pull")
        return Owner(_text(value["name"], "owner.name"))
    pull = value.get("pull")
    if not isinstance(pull, int) or isinstance(pull, bool) or not 0 < pull < 2**31:
        raise bad_request("owner.pull must be a positive integer")
    user = value.get("user")
    url = value.get("url")
    return Owner.pull_request(
        _text(value.get("repo"), "owner.repo"),
        pull,
        None if user is None else _text(user, "owner.user"),
        None if url is None else pull_url(url),
    )


def pull_url(value: object) -> str:
    """A pull request's web page (Atlantis's `PullURL`), shown to everyone as a link: so http(s)
    only, and never with credentials in it (a VCS token must not be republished)."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_URL_CHARS:
        raise bad_request(f"owner.url must be a string of 1 to {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(value)
        credentials = parts.username is not None or parts.password is not None
    except ValueError as exc:
        raise bad_request(f"owner.url is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad_request("owner.url must be an http:// or https:// URL")
    if credentials:
        raise bad_request("owner.url must not contain credentials (user:token@)")
    return value


def priority(value: object) -> Priority:
    if value is None:
        return Priority.NORMAL
    if not isinstance(value, str) or value.upper() not in Priority.__members__:
        raise bad_request(f"unknown priority {value!r}", known=[p.label for p in Priority])
    return Priority[value.upper()]


def duration(value: object, field: str, *, allow_zero: bool = False, limit: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise bad_request(f"{field} must be a number of seconds or a duration like '30s'")
    try:
        seconds = parse_duration(value, allow_zero=allow_zero)
    except ValueError as exc:
        raise bad_request(f"{field}: {exc}") from None
    if seconds > limit:
        raise bad_request(f"{field} must be at most {limit:g} seconds")
    return seconds


def flag(value: object, field: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"{field} must be true or false")
    return value


@dataclass(frozen=True, slots=True)
class AcquireBody:
    keys: list[str]
    owner: Owner
    priority: Priority
    wait: float | None
    stay_queued: bool
    queue_timeout: float | None
    lease: float | None


def acquire(body: Mapping[str, Any]) -> AcquireBody:
    only(
        body, {"key", "keys", "owner", "priority", "wait", "stay_queued", "queue_timeout", "lease"}
    )
    if "owner" not in body:
        raise bad_request("owner is required")

    def optional(name: str, **kw: Any) -> float | None:
        return None if body.get(name) is None else duration(body[name], name, **kw)

    return AcquireBody(
        keys=keys(body),
        owner=owner(body["owner"]),
        priority=priority(body.get("priority")),
        wait=optional("wait", allow_zero=True, limit=MAX_WAIT_SECONDS),
        stay_queued=flag(body.get("stay_queued"), "stay_queued"),
        queue_timeout=optional("queue_timeout", limit=MAX_HOLD_SECONDS),
        lease=optional("lease", limit=MAX_HOLD_SECONDS),
    )


def request_id(value: str) -> str:
    if len(value) != 32 or any(c not in "0123456789abcdef" for c in value):
        raise bad_request("malformed request id (expected 32 hex digits)")
    return value


def limit(value: str | None, *, default: int = 100, maximum: int = 1000) -> int:
    if value is None:
        return default
    if not value.isdigit() or not 1 <= int(value) <= maximum:
        raise bad_request(f"limit must be an integer from 1 to {maximum}")
    return int(value)
