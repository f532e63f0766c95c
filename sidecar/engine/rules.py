"""The lock rules, written once, run inside one backend transaction.

A key is grantable to a request when the request's owner already holds it, or when the key is free
and no request waits on it ahead of this one. A request is granted only when every one of its keys
is grantable (all-or-nothing); otherwise it waits in the queue of every key. Whenever a key is
freed or a queue's head changes (release, expiry, cancel, time-out, promotion), the heads of the
affected queues are re-checked: that is the event-driven handoff. Granting never frees a key, so
one pass over the affected keys is enough.

The Redis backend implements the same rules in Lua; this module is their reference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from sidecar.engine.model import (
    AcquireResult,
    Change,
    Ended,
    Ending,
    Grant,
    Handoff,
    KeyState,
    Outcome,
    Request,
    RequestState,
)
from sidecar.engine.ordering import Ordering
from sidecar.engine.policies import WaitEdge
from sidecar.errors import Code, LockError

if TYPE_CHECKING:
    from sidecar.backends.txn import Txn


def _blocking_grant(tx: Txn, key: str, owner_id: str) -> Grant | None:
    grant = tx.grant_of(key)
    return grant if grant is not None and grant.owner.id != owner_id else None


def _grant(tx: Txn, request: Request, now: float) -> tuple[Grant, ...]:
    lease = now + request.lease_seconds if request.lease_seconds else None
    grants = []
    for key in request.keys:
        held = tx.grant_of(key)
        if held is not None:  # re-entrant: the owner keeps its grant and token as they are
            grants.append(held)
            continue
        grant = Grant(key, request.owner, tx.next_token(key), now, lease, request.id)
        tx.put_grant(grant)
        grants.append(grant)
    return tuple(grants)


def _position(tx: Txn, request: Request) -> int:
    return max(tx.queue_rank(k, request.score, request.seq) for k in request.keys) + 1


def acquire(
    tx: Txn, request: Request, *, now: float, queue_if_busy: bool, max_queue: int
) -> AcquireResult:
    holders: list[Grant] = []
    behind_waiter = False
    for key in request.keys:
        grant = _blocking_grant(tx, key, request.owner.id)
        if grant is not None:
            holders.append(grant)
        elif tx.grant_of(key) is None:
            head = tx.queue_head(key)
            # A new request is younger than every waiter, so among equal scores it goes behind.
            if head is not None and head.score <= request.score:
                behind_waiter = True
    if not holders and not behind_waiter:
        return AcquireResult("granted", request, grants=_grant(tx, request, now))
    if not queue_if_busy:
        return AcquireResult("busy", request, holders=tuple(holders))
    if tx.waiting_count() >= max_queue:
        return AcquireResult(
            "full", request, holders=tuple(holders), waiting=tuple(tx.waiting(max_queue))
        )
    queued = _enqueue(tx, request)
    return AcquireResult(
        "queued",
        queued,
        position=_position(tx, queued),
        holders=tuple(holders),
        depth=tx.waiting_count(),
        change=Change(queued=[queued]),
    )


def _enqueue(tx: Txn, request: Request) -> Request:
    queued = Request(
        id=request.id,
        keys=request.keys,
        owner=request.owner,
        priority=request.priority,
        enqueued_at=request.enqueued_at,
        score=request.score,
        deadline=request.deadline,
        lease_seconds=request.lease_seconds,
        seq=tx.next_seq(),
        promoted=request.promoted,
    )
    tx.add_request(queued)
    return queued


def enqueue_evicting(
    tx: Txn, request: Request, victim_id: str, *, now: float, max_queue: int
) -> AcquireResult | None:
    if tx.get_request(victim_id) is None or tx.waiting_count() < max_queue:
        return None
    change = _end(tx, victim_id, Ending.EVICTED, now, "evicted by the queue overflow policy")
    queued = _enqueue(tx, request)
    change.queued.append(queued)
    # The victim may have been at the head of a free key: the new request or another may go now.
    change.granted.extend(_hand_on(tx, set(request.keys) | _keys_of(change), now))
    granted_self = next((h for h in change.granted if h.request.id == request.id), None)
    if granted_self is not None:
        change.queued.remove(queued)
        return AcquireResult("granted", queued, grants=granted_self.grants, change=change)
    return AcquireResult(
        "queued",
        queued,
        position=_position(tx, queued),
        depth=tx.waiting_count(),
        change=change,
    )


def _keys_of(change: Change) -> set[str]:
    keys = {g.key for g in change.released} | {g.key for g in change.expired}
    for ended in change.ended:
        keys.update(ended.request.keys)
    return keys


def _grantable(tx: Txn, request: Request) -> bool:
    for key in request.keys:
        if _blocking_grant(tx, key, request.owner.id) is not None:
            return False
        if tx.grant_of(key) is None:
            head = tx.queue_head(key)
            if head is not None and head.id != request.id:
                return False
    return True


def _hand_on(tx: Txn, keys: Iterable[str], now: float) -> list[Handoff]:
    """Grant the head of each key's queue if every key of that head is now grantable."""
    handoffs: list[Handoff] = []
    for key in sorted(keys):
        if tx.grant_of(key) is not None:
            continue
        head = tx.queue_head(key)
        if head is None or not _grantable(tx, head):
            continue
        tx.remove_request(head.id)
        grants = _grant(tx, head, now)
        tx.record_outcome(
            Outcome(head.id, Ending.GRANTED, now, tokens={g.key: g.token for g in grants})
        )
        handoffs.append(Handoff(head, grants))
    return handoffs


def _end(tx: Txn, request_id: str, ending: Ending, now: float, detail: str) -> Change:
    request = tx.remove_request(request_id)
    if request is None:
        return Change()
    tx.record_outcome(Outcome(request_id, ending, now, detail=detail))
    return Change(ended=[Ended(request, ending, detail)])


def _check_holder(tx: Txn, owner_id: str, keys: Sequence[str]) -> list[Grant]:
    grants = []
    for key in keys:
        grant = tx.grant_of(key)
        if grant is None:
            raise LockError(Code.NOT_FOUND, f"no lock held on key {key!r}", key=key)
        if grant.owner.id != owner_id:
            raise LockError(
                Code.PERMISSION_DENIED, f"lock on key {key!r} is held by another owner", key=key
            )
        grants.append(grant)
    return grants


def _free(tx: Txn, grants: Sequence[Grant], now: float, *, expired: bool = False) -> Change:
    for grant in grants:
        tx.delete_grant(grant.key)
    change = Change(expired=list(grants)) if expired else Change(released=list(grants))
    change.granted.extend(_hand_on(tx, (g.key for g in grants), now))
    return change


def release(tx: Txn, owner_id: str, keys: Sequence[str], *, now: float) -> Change:
    return _free(tx, _check_holder(tx, owner_id, keys), now)


def release_owner(tx: Txn, owner_id: str, *, now: float) -> Change:
    change = Change()
    for request in tx.requests_of_owner(owner_id):
        change.merge(_end(tx, request.id, Ending.CANCELLED, now, "owner released all its locks"))
    for grant in tx.grants_of_owner(owner_id):
        tx.delete_grant(grant.key)
        change.released.append(grant)
    change.granted.extend(_hand_on(tx, _keys_of(change), now))
    return change


def force_release(tx: Txn, keys: Sequence[str], *, now: float) -> Change:
    grants = [g for g in (tx.grant_of(k) for k in keys) if g is not None]
    return _free(tx, grants, now)


def cancel(tx: Txn, request_id: str, ending: Ending, *, now: float, detail: str = "") -> Change:
    change = _end(tx, request_id, ending, now, detail)
    change.granted.extend(_hand_on(tx, _keys_of(change), now))
    return change


def renew(
    tx: Txn, owner_id: str, keys: Sequence[str], lease_seconds: float, *, now: float
) -> list[Grant]:
    renewed = []
    for grant in _check_holder(tx, owner_id, keys):
        new = Grant(
            grant.key,
            grant.owner,
            grant.token,
            grant.acquired_at,
            now + lease_seconds,
            grant.request_id,
        )
        tx.put_grant(new)
        renewed.append(new)
    return renewed


def sweep(tx: Txn, *, now: float, promote_enqueued_before: float | None, batch: int) -> Change:
    change = Change()
    expired = tx.expired_leases(now, batch)
    for grant in expired:
        tx.delete_grant(grant.key)
    change.expired.extend(expired)
    for request in tx.expired_requests(now, batch):
        change.merge(_end(tx, request.id, Ending.TIMED_OUT, now, "queue-timeout passed"))
    affected = _keys_of(change)
    if promote_enqueued_before is not None:
        for request in tx.unpromoted_enqueued_before(promote_enqueued_before, batch):
            tx.remove_request(request.id)
            score = Ordering.promoted_score(request.enqueued_at)
            tx.add_request(dataclasses.replace(request, score=score, promoted=True))
            change.promoted.append(request)
            affected.update(request.keys)
    change.granted.extend(_hand_on(tx, affected, now))
    return change


def request_state(tx: Txn, request_id: str) -> RequestState | None:
    request = tx.get_request(request_id)
    if request is not None:
        positions = {k: tx.queue_rank(k, request.score, request.seq) + 1 for k in request.keys}
        return RequestState(
            request_id,
            "waiting",
            request=request,
            position=max(positions.values()),
            positions=positions,
        )
    outcome = tx.get_outcome(request_id)
    if outcome is None:
        return None
    return RequestState(request_id, str(outcome.ending), outcome=outcome)


def key_state(tx: Txn, key: str, max_waiting: int) -> KeyState:
    return KeyState(key, tx.grant_of(key), tuple(tx.queue_of(key, max_waiting)), tx.last_token(key))


def _edges_of_request(tx: Txn, request: Request) -> list[WaitEdge]:
    edges = []
    for key in request.keys:
        grant = tx.grant_of(key)
        if grant is not None and grant.owner.id == request.owner.id:
            continue  # re-entrant: its own key blocks nothing
        if grant is not None:
            edges.append(WaitEdge(request, key, grant.owner, held=True))
        ahead = tx.queue_ahead(key, request.score, request.seq)
        if ahead is not None and ahead.owner.id != request.owner.id:
            edges.append(WaitEdge(request, key, ahead.owner, held=False))
    return edges


def wait_edges_from(tx: Txn, owner_id: str, max_owners: int) -> list[WaitEdge]:
    """The wait-for edges reachable from one owner, walked inside one transaction, bounded."""
    edges: list[WaitEdge] = []
    seen = {owner_id}
    frontier = [owner_id]
    while frontier and len(seen) <= max_owners:
        owner = frontier.pop()
        for request in tx.requests_of_owner(owner):
            for edge in _edges_of_request(tx, request):
                edges.append(edge)
                if edge.blocker.id not in seen:
                    seen.add(edge.blocker.id)
                    frontier.append(edge.blocker.id)
    return edges


def edges_present(tx: Txn, edges: Sequence[WaitEdge]) -> list[bool]:
    """Which of these edges still hold now (the detector's re-read before it acts)."""
    present = []
    for edge in edges:
        request = tx.get_request(edge.waiter.id)
        current = {e.identity for e in _edges_of_request(tx, request)} if request else set()
        present.append(edge.identity in current)
    return present
