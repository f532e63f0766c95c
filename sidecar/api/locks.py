"""The enhanced-locks API: acquire, release, renew, inspect and cancel.

Keys travel in JSON bodies or in the `key` query parameter, never in the path: Atlantis ids hold
`/` and `.` segments (`acme/infra/./default/`) that clients and proxies normalise in paths.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from sidecar.api import bodies
from sidecar.api.appkeys import RUNTIME
from sidecar.engine.manager import Granted
from sidecar.engine.model import Change, Grant
from sidecar.errors import Code, LockError, bad_request
from sidecar.routing.keys import ATLANTIS_PREFIX, System, route

routes = web.RouteTableDef()
PREFIX = "/api/enhanced-locks"


def require_api_token(request: web.Request) -> None:
    """Mutating calls need X-Atlantis-Token when an api-token is configured."""
    expected = request.app[RUNTIME].settings.api_token
    if expected and not hmac.compare_digest(
        request.headers.get("X-Atlantis-Token", "").encode(), expected.encode()
    ):
        raise LockError(Code.PERMISSION_DENIED, "missing or wrong X-Atlantis-Token", status=401)


def check_routed_here(request: web.Request, keys: Sequence[str]) -> None:
    """Refuse Atlantis keys that Atlantis still serves, so no lock lives in two systems."""
    s = request.app[RUNTIME].settings
    for key in keys:
        if (
            key.startswith(ATLANTIS_PREFIX)
            and route(
                key,
                enabled=s.enabled,
                active_system=s.migration.active_system,
                traffic_percentage=s.migration.traffic_percentage,
            )
            is System.LEGACY
        ):
            raise LockError(
                Code.MIGRATION,
                "served by Atlantis at the current traffic-percentage",
                key=key,
                traffic_percentage=s.migration.traffic_percentage,
            )


def change_json(change: Change) -> dict[str, Any]:
    return {
        "released": [g.to_json() for g in change.released],
        "cancelled": [e.request.id for e in change.ended],
        "handed_off": [
            {
                "request_id": h.request.id,
                "owner": h.request.owner.to_json(),
                "locks": [g.to_json() for g in h.grants],
            }
            for h in change.granted
        ],
    }


def grants_json(grants: Sequence[Grant]) -> list[dict[str, Any]]:
    return [g.to_json() for g in grants]


@routes.post(PREFIX + "/acquire")
async def acquire(request: web.Request) -> web.Response:
    require_api_token(request)
    body = bodies.acquire(await bodies.json_object(request))
    check_routed_here(request, body.keys)
    engine = request.app[RUNTIME].engine
    lock_request, wait = engine.new_request(
        body.keys,
        body.owner,
        body.priority,
        wait=body.wait,
        stay_queued=body.stay_queued,
        queue_timeout=body.queue_timeout,
        lease=body.lease,
    )
    result = await engine.acquire(lock_request, wait, stay_queued=body.stay_queued)
    if isinstance(result, Granted):
        return web.json_response(
            {
                "granted": True,
                "request_id": result.request.id,
                "owner": result.request.owner.to_json(),
                "locks": grants_json(result.grants),
                "waited_seconds": result.waited,
            }
        )
    raise LockError(
        Code.ACQUIRE_TIMEOUT,
        "not granted within the wait; the request stays queued",
        status=409,
        queued=True,
        request_id=result.request.id,
        position=result.position,
        deadline=result.request.deadline,
    )


@routes.post(PREFIX + "/release")
async def release(request: web.Request) -> web.Response:
    require_api_token(request)
    body = await bodies.json_object(request)
    bodies.only(body, {"key", "keys", "owner"})
    keys = bodies.keys(body)
    owner = bodies.owner(body.get("owner"))
    change = await request.app[RUNTIME].engine.release(owner.id, keys)
    return web.json_response(change_json(change))


@routes.post(PREFIX + "/release-owner")
async def release_owner(request: web.Request) -> web.Response:
    require_api_token(request)
    body = await bodies.json_object(request)
    bodies.only(body, {"owner"})
    owner = bodies.owner(body.get("owner"))
    change = await request.app[RUNTIME].engine.release_owner(owner.id)
    return web.json_response(change_json(change))


@routes.post(PREFIX + "/renew")
async def renew(request: web.Request) -> web.Response:
    require_api_token(request)
    body = await bodies.json_object(request)
    bodies.only(body, {"key", "keys", "owner", "lease"})
    keys = bodies.keys(body)
    owner = bodies.owner(body.get("owner"))
    if body.get("lease") is None:
        raise bad_request("lease is required")
    lease = bodies.duration(body["lease"], "lease", limit=bodies.MAX_HOLD_SECONDS)
    renewed = await request.app[RUNTIME].engine.renew(owner.id, keys, lease)
    return web.json_response({"locks": grants_json(renewed)})


@routes.get(PREFIX + "/locks")
async def list_locks(request: web.Request) -> web.Response:
    q = request.query
    owner = q.get("owner")
    prefix = q.get("prefix")
    after = q.get("after")
    page = await request.app[RUNTIME].backend.list_grants(
        owner_id=bodies.key(owner, "owner") if owner is not None else None,
        prefix=bodies.key(prefix, "prefix") if prefix is not None else None,
        after_key=bodies.key(after, "after") if after is not None else None,
        limit=bodies.limit(q.get("limit")),
    )
    return web.json_response({"locks": grants_json(page.grants), "next_after": page.next_after})


@routes.get(PREFIX + "/lock")
async def get_lock(request: web.Request) -> web.Response:
    key = bodies.key(request.query.get("key"), "key query parameter")
    state = await request.app[RUNTIME].backend.key_state(key, max_waiting=100)
    return web.json_response(
        {
            "key": key,
            "held": state.grant is not None,
            "lock": state.grant.to_json() if state.grant else None,
            "waiting": [
                {
                    "request_id": r.id,
                    "owner": r.owner.to_json(),
                    "priority": r.priority.label,
                    "enqueued_at": r.enqueued_at,
                    "position": i + 1,
                }
                for i, r in enumerate(state.waiting)
            ],
            "last_token": state.last_token,
        }
    )


@routes.get(PREFIX + "/requests/{request_id}")
async def request_status(request: web.Request) -> web.Response:
    rid = bodies.request_id(request.match_info["request_id"])
    state = await request.app[RUNTIME].backend.request_state(rid)
    if state is None:
        raise LockError(
            Code.NOT_FOUND, "unknown request (or finished more than an hour ago)", request_id=rid
        )
    out: dict[str, Any] = {"request_id": rid, "state": state.state}
    if state.request is not None:
        out.update(
            position=state.position,
            positions=state.positions,
            request=state.request.to_json(),
        )
    if state.outcome is not None:
        out["outcome"] = state.outcome.to_json()
    return web.json_response(out)


@routes.delete(PREFIX + "/requests/{request_id}")
async def cancel_request(request: web.Request) -> web.Response:
    require_api_token(request)
    rid = bodies.request_id(request.match_info["request_id"])
    change = await request.app[RUNTIME].engine.cancel(rid, detail="cancelled by the caller")
    if not change.ended:
        raise LockError(Code.NOT_FOUND, "request is not waiting", request_id=rid)
    return web.json_response({"request_id": rid, **change_json(change)})
