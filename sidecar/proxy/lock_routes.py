"""Atlantis's lock routes, split by key between Atlantis and the engine.

Each route decodes the lock id exactly as Atlantis does, routes `atlantis:<id>` (design.md
"Routing"), and then either passes the request to Atlantis untouched (legacy keys, anything it
cannot decode, and `enabled = false`) or answers from the engine with Atlantis's own status codes
and texts (atlantis-lock-api.md "Lock routes").

Atlantis stays the judge of who may call it: routes behind its basic auth ask Atlantis first with
the caller's credentials, and a 401/403 from Atlantis is the answer. It also keeps its side
effects: deleting a lock or the apply lock is forwarded, so Atlantis discards the plan, comments
on the pull request and enforces the global apply lock itself. The engine changes only once
Atlantis has accepted the request, so a refused or failed call leaves both as they were.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from sidecar.api.appkeys import PROXY_STATE, RUNTIME
from sidecar.config import Settings
from sidecar.engine.model import Grant, Owner, Priority
from sidecar.errors import Code, LockError
from sidecar.proxy import lock_page
from sidecar.proxy.atlantis_ids import RequestedId, is_valid_id, requested_id
from sidecar.proxy.atlantis_json import merge
from sidecar.proxy.stream import forward
from sidecar.proxy.upstream import (
    Buffered,
    UpstreamFailure,
    failure_response,
    fetch,
    read_body,
)
from sidecar.routing.keys import APPLY_LOCK_KEY, ATLANTIS_PREFIX, System, route

log = logging.getLogger("enhanced-locking.proxy")

routes = web.RouteTableDef()

# Who holds the global apply lock in the engine when it is set from the UI or API: Atlantis's
# apply lock has no owner, only a time.
APPLY_OWNER = Owner("atlantis:global-apply-lock")
# Atlantis's texts (atlantis-lock-api.md "Lock routes").
APPLY_LOCKED = "Apply Lock is acquired on {time}"
APPLY_ALREADY_LOCKED = "creating apply lock failed with: db transaction failed: lock already exists"
APPLY_UNLOCKED = "Deleted apply lock"
APPLY_NOT_LOCKED = "deleting apply lock failed with: db transaction failed: no lock exists"
LOCK_DELETED = "Deleted lock id '{id}'"
# Waiting requests shown on a lock page.
QUEUE_SHOWN = 50
GRANTS_PAGE = 1000


def is_enhanced(settings: Settings, key: str) -> bool:
    """Read per request: a reload may change `enabled` or the traffic split at any time."""
    return (
        route(
            key,
            enabled=settings.enabled,
            active_system=settings.migration.active_system,
            traffic_percentage=settings.migration.traffic_percentage,
        )
        is System.ENHANCED
    )


def no_key_is_enhanced(settings: Settings) -> bool:
    m = settings.migration
    return not settings.enabled or (m.active_system != "enhanced" and m.traffic_percentage == 0)


def raw_query(request: web.Request) -> str:
    return request.raw_path.partition("?")[2]


def atlantis_text(status: int, text: str) -> web.Response:
    """Atlantis answers its lock routes with `fmt.Fprintln`: plain text and a newline."""
    return web.Response(status=status, text=text + "\n", content_type="text/plain")


async def enhanced_grants(request: web.Request) -> list[Grant]:
    """The engine's grants on Atlantis project locks whose keys the engine serves now."""
    runtime = request.app[RUNTIME]
    settings = runtime.settings
    grants: list[Grant] = []
    after: str | None = None
    while True:
        page = await runtime.backend.list_grants(
            prefix=ATLANTIS_PREFIX, after_key=after, limit=GRANTS_PAGE
        )
        grants += [
            g
            for g in page.grants
            if is_valid_id(g.key[len(ATLANTIS_PREFIX) :]) and is_enhanced(settings, g.key)
        ]
        if page.next_after is None:
            return grants
        after = page.next_after


@routes.get("/api/locks", allow_head=False)
async def list_locks(request: web.Request) -> web.StreamResponse:
    """Atlantis's listing, plus the engine's grants on enhanced keys that Atlantis lacks."""
    runtime = request.app[RUNTIME]
    if no_key_is_enhanced(runtime.settings):
        return await forward(request)
    grants = await enhanced_grants(request)
    if not grants:
        return await forward(request)
    try:
        answer = await fetch(request, body=await read_body(request))
    except UpstreamFailure as failure:
        return failure_response(request, failure)
    if answer.status != 200 or "Content-Encoding" in answer.headers:
        return await answer.relay(request)
    try:
        merged = merge(answer.body, grants)
    except (ValueError, UnicodeDecodeError) as exc:
        log.warning("GET /api/locks: Atlantis's answer is not a lock listing (%s); relayed", exc)
        return await answer.relay(request)
    divergences = request.app[PROXY_STATE].divergences
    for d in merged.divergences:
        divergences.report(
            runtime.stats, d.key, d.atlantis_owner, d.engine_owner, "listing the engine's grant"
        )
    return await answer.relay(request, merged.body)


@routes.get("/lock", allow_head=False)
async def lock(request: web.Request) -> web.StreamResponse:
    """The lock page: the engine's, for an enhanced key it holds; Atlantis's otherwise."""
    runtime = request.app[RUNTIME]
    if no_key_is_enhanced(runtime.settings):
        return await forward(request)
    wanted = requested_id(raw_query(request), second_decode="query")
    if wanted is None or not is_enhanced(runtime.settings, wanted.key):
        return await forward(request)
    state = await runtime.backend.key_state(wanted.key, max_waiting=QUEUE_SHOWN)
    if state.grant is None:
        return await forward(request)
    # The page is behind Atlantis's basic auth: Atlantis judges the caller's credentials.
    try:
        answer = await fetch(request, body=await read_body(request))
    except UpstreamFailure as failure:
        return failure_response(request, failure)
    if answer.status in (401, 403):
        return await answer.relay(request)
    html = lock_page.render(wanted.lock_id, state.grant, state)
    return web.Response(text=html, content_type="text/html")


@routes.delete("/locks")
async def delete_lock(request: web.Request) -> web.StreamResponse:
    """Discard Plan & Unlock. For an enhanced key the engine holds: forward the DELETE (Atlantis
    discards the plan and comments on the pull request), then release the lock in the engine
    whoever holds it (Atlantis has no per-user check here) and hand it to the next waiter."""
    runtime = request.app[RUNTIME]
    if no_key_is_enhanced(runtime.settings):
        return await forward(request)
    wanted = requested_id(raw_query(request), second_decode="path")
    if wanted is None or not is_enhanced(runtime.settings, wanted.key):
        return await forward(request)
    state = await runtime.backend.key_state(wanted.key, max_waiting=0)
    if state.grant is None:
        return await forward(request)
    body = await read_body(request)
    return await _answer(request, await settled(_delete_in_both(request, wanted, body)))


async def _delete_in_both(request: web.Request, wanted: RequestedId, body: bytes | None) -> Outcome:
    try:
        answer = await fetch(request, body=body)
    except UpstreamFailure as failure:
        return failure_response(request, failure)
    if answer.status not in (200, 404):
        # Refused (basic auth) or failed in Atlantis: release nothing, so both stay in step.
        return answer
    change = await request.app[RUNTIME].engine.force_release([wanted.key])
    if not change.released:  # released by someone else in the meantime
        return answer
    released = change.released[0]
    handed = [h.request.owner.id for h in change.granted]
    log.info(
        "lock %s deleted through DELETE /locks: released from %s (token %d)%s",
        wanted.key,
        released.owner.id,
        released.token,
        f", handed to {', '.join(handed)}" if handed else "",
    )
    if answer.status == 200:
        return answer
    return atlantis_text(200, LOCK_DELETED.format(id=wanted.lock_id))


@routes.post("/apply/lock")
async def apply_lock(request: web.Request) -> web.StreamResponse:
    """Set the global apply lock: in the engine when it serves `atlantis:apply`, and always in
    Atlantis too, which is what stops applies. Not idempotent, like Atlantis (500 when set)."""
    if not is_enhanced(request.app[RUNTIME].settings, APPLY_LOCK_KEY):
        return await forward(request)
    body = await read_body(request)
    return await _answer(request, await settled(_apply_lock_in_both(request, body)))


async def _apply_lock_in_both(request: web.Request, body: bytes | None) -> Outcome:
    try:
        answer = await fetch(request, body=body)
    except UpstreamFailure as failure:
        return failure_response(request, failure)
    if answer.status not in (200, 500):  # 401 basic auth, 404 apply lock disabled, ...
        return answer
    granted = await _take_apply_lock(request)
    atlantis_set_it = answer.status == 200
    if granted == atlantis_set_it:
        return answer
    _apply_divergence(
        request, atlantis=_set_or_free(not atlantis_set_it), engine=_set_or_free(not granted)
    )
    if granted:
        now = datetime.fromtimestamp(time.time(), tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        return atlantis_text(200, APPLY_LOCKED.format(time=now))
    return atlantis_text(500, APPLY_ALREADY_LOCKED)


async def _take_apply_lock(request: web.Request) -> bool:
    engine = request.app[RUNTIME].engine
    state = await request.app[RUNTIME].backend.key_state(APPLY_LOCK_KEY, max_waiting=0)
    if state.grant is not None:
        return False
    lock_request, _ = engine.new_request([APPLY_LOCK_KEY], APPLY_OWNER, Priority.NORMAL, wait=0)
    try:
        await engine.acquire(lock_request, 0)
    except LockError as exc:
        if exc.code is Code.ACQUIRE_TIMEOUT:
            return False
        raise
    return True


@routes.delete("/apply/unlock")
async def apply_unlock(request: web.Request) -> web.StreamResponse:
    """Release the global apply lock in the engine (whoever holds it) and in Atlantis."""
    if not is_enhanced(request.app[RUNTIME].settings, APPLY_LOCK_KEY):
        return await forward(request)
    body = await read_body(request)
    return await _answer(request, await settled(_apply_unlock_in_both(request, body)))


async def _apply_unlock_in_both(request: web.Request, body: bytes | None) -> Outcome:
    try:
        answer = await fetch(request, body=body)
    except UpstreamFailure as failure:
        return failure_response(request, failure)
    if answer.status not in (200, 500):
        return answer
    change = await request.app[RUNTIME].engine.force_release([APPLY_LOCK_KEY])
    released = bool(change.released)
    atlantis_had_it = answer.status == 200
    if released == atlantis_had_it:
        return answer
    _apply_divergence(
        request, atlantis=_set_or_free(atlantis_had_it), engine=_set_or_free(released)
    )
    if released:
        return atlantis_text(200, APPLY_UNLOCKED)
    return atlantis_text(500, APPLY_NOT_LOCKED)


# What a route answers: Atlantis's own answer (relayed as is), or one the sidecar wrote.
Outcome = Buffered | web.Response


async def settled(change: Coroutine[Any, Any, Outcome]) -> Outcome:
    """Run a change that touches Atlantis and then the engine to its end even if the caller
    hangs up (the server cancels the handler then): stopping between the two would leave them
    out of step, e.g. a lock deleted in Atlantis but still held in the engine."""
    task = asyncio.ensure_future(change)
    task.add_done_callback(_log_failure)
    return await asyncio.shield(task)


def _log_failure(task: asyncio.Future[Outcome]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("lock route change failed: %s", exc)


async def _answer(request: web.Request, outcome: Outcome) -> web.StreamResponse:
    if isinstance(outcome, Buffered):
        return await outcome.relay(request)
    return outcome


def _apply_divergence(request: web.Request, *, atlantis: str, engine: str) -> None:
    request.app[PROXY_STATE].divergences.report(
        request.app[RUNTIME].stats, APPLY_LOCK_KEY, atlantis, engine, "answering as the engine"
    )


def _set_or_free(was_set: bool) -> str:
    return "the apply lock was set" if was_set else "the apply lock was free"
