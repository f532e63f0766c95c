"""The LockManager: waiting, policies, events and metrics on top of a backend's atomic operations.

Waiters are asyncio futures keyed by request id, registered before the backend is asked, so a
grant made by a concurrent release can never be missed. Every backend operation returns a
`Change`; `_apply` turns it into woken waiters, events and counters. The sweep only expires leases
and deadlines and promotes long waiters: normal handoff never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from sidecar.backends.base import Backend
from sidecar.engine.events import EventKind, LockEvent
from sidecar.engine.model import (
    AcquireResult,
    Change,
    Ended,
    Ending,
    Grant,
    Handoff,
    Outcome,
    Owner,
    Priority,
    Request,
)
from sidecar.engine.ordering import Ordering
from sidecar.engine.policies import OverflowPolicy
from sidecar.errors import Code, LockError
from sidecar.metrics.stats import EngineStats
from sidecar.plugin.dispatch import EventDispatcher

log = logging.getLogger("enhanced-locking.engine")

OVERFLOW_ATTEMPTS = 3
OUTCOME_RETENTION = 3600.0
QUEUE_WARNING_RATIO = 0.8
HOUSEKEEPING_INTERVAL = 1.0
SLOW_OPERATION_SECONDS = 0.5
#: With a shared backend, how long a waiter waits before the sweep asks about it (and again
#: after each such interval), in case the other replica's notification was lost.
CATCH_UP_AFTER = 1.0


@dataclass(frozen=True, slots=True)
class EngineSettings:
    ordering: Ordering = field(default_factory=Ordering)
    lock_timeout: float = 30.0
    queue_timeout: float = 300.0
    max_queue: int = 1000
    processing_interval: float = 0.1
    batch_size: int = 100
    sweepers: int = 1


@dataclass(frozen=True, slots=True)
class Granted:
    request: Request
    grants: tuple[Grant, ...]
    waited: float


@dataclass(frozen=True, slots=True)
class StillQueued:
    """The caller stopped waiting but asked the request to stay queued (until queue-timeout)."""

    request: Request
    position: int


_ENDING_ERRORS: dict[Ending, tuple[Code, int, str, EventKind]] = {
    Ending.TIMED_OUT: (Code.ACQUIRE_TIMEOUT, 408, "timed_out", EventKind.TIMED_OUT),
    Ending.EVICTED: (Code.QUEUE_OVERFLOW, 429, "overflow", EventKind.OVERFLOW_EVICTED),
    Ending.CANCELLED: (Code.ACQUIRE_TIMEOUT, 409, "cancelled", EventKind.CANCELLED),
    Ending.DEADLOCK: (Code.DEADLOCK_VICTIM, 409, "deadlock", EventKind.DEADLOCK),
}


def _ending_error(ending: Ending, request: Request, detail: str) -> LockError:
    code, status, _, _ = _ENDING_ERRORS[ending]
    message = {
        Ending.TIMED_OUT: "lock acquisition timed out",
        Ending.EVICTED: "queue overflow: request evicted",
        Ending.CANCELLED: "request cancelled",
        Ending.DEADLOCK: "deadlock detected: request chosen as victim",
    }[ending]
    return LockError(
        code,
        message,
        status=status,
        request_id=request.id,
        keys=list(request.keys),
        detail=detail,
    )


class LockManager:
    def __init__(
        self,
        backend: Backend,
        settings: EngineSettings,
        *,
        overflow: OverflowPolicy,
        stats: EngineStats,
        events: EventDispatcher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.overflow = overflow
        self.stats = stats
        self.events = events
        self.clock = clock
        self._waiters: dict[str, asyncio.Future[Handoff]] = {}
        self._staying: set[str] = set()
        self._sweepers: list[asyncio.Task[None]] = []
        #: Called with every request that starts waiting (the deadlock detector's immediate check).
        self.on_wait: Callable[[Request], Awaitable[None]] | None = None
        self._started = False
        self._queue_warned = False
        #: Shared backends: queued local waiters and when the sweep next asks about each.
        self._catch_up_due: dict[str, tuple[Request, float]] = {}
        backend.set_remote_grant_listener(self._on_remote_grant)
        backend.set_remote_end_listener(self._on_remote_end)

    def reconfigure(self, settings: EngineSettings, overflow: OverflowPolicy) -> None:
        """Apply reloaded settings; takes effect for the next request and sweep."""
        self.settings = settings
        self.overflow = overflow
        if self._started:
            self._resize_sweepers()

    # -- acquire ---------------------------------------------------------------------------

    def new_request(
        self,
        keys: Sequence[str],
        owner: Owner,
        priority: Priority = Priority.NORMAL,
        *,
        wait: float | None = None,
        stay_queued: bool = False,
        queue_timeout: float | None = None,
        lease: float | None = None,
    ) -> tuple[Request, float]:
        """Build the request (and how long its caller waits) from what the caller asked."""
        now = self.clock()
        wait = self.settings.lock_timeout if wait is None else wait
        stay = self.settings.queue_timeout if queue_timeout is None else queue_timeout
        request = Request(
            id=uuid.uuid4().hex,
            keys=tuple(sorted(set(keys))),
            owner=owner,
            priority=priority,
            enqueued_at=now,
            score=self.settings.ordering.score(priority, now),
            deadline=now + (max(stay, wait) if stay_queued else wait),
            lease_seconds=lease,
        )
        return request, wait

    async def acquire(
        self, request: Request, wait: float, *, stay_queued: bool = False
    ) -> Granted | StillQueued:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Handoff] = loop.create_future()
        self._waiters[request.id] = waiter
        if stay_queued:
            self._staying.add(request.id)
        try:
            result = await self._try(request, queue_if_busy=wait > 0 or stay_queued)
            if result.status == "granted":
                self._apply(result.change)
                self._emit(
                    EventKind.GRANTED, request, tokens={g.key: g.token for g in result.grants}
                )
                self.stats.acquired(time.perf_counter() - started)
                return Granted(result.request, result.grants, 0.0)
            if result.status == "busy":
                raise LockError(
                    Code.ACQUIRE_TIMEOUT,
                    "lock is held by another owner",
                    status=409,
                    keys=list(request.keys),
                    holders=_holders(result.holders),
                )
            queued = result.request
            self._apply(result.change)
            self._watch_queue_depth(result)
            if self.backend.shared:
                self._catch_up_due[queued.id] = (queued, time.monotonic() + CATCH_UP_AFTER)
            if self.on_wait is not None:
                await self._check_new_wait(queued)
            # asyncio.wait, not wait_for(shield(...)): it leaves the waiter alone on a timeout or
            # a cancellation alike, and wakes this task one event-loop turn sooner.
            await asyncio.wait((waiter,), timeout=wait)
            if stay_queued and not waiter.done():
                state = await self.backend.request_state(queued.id)
                if state is not None and state.state == "waiting":
                    return StillQueued(queued, state.position)
            if not waiter.done():
                self._apply(
                    await self.backend.cancel(
                        queued.id,
                        Ending.TIMED_OUT,
                        now=self.clock(),
                        detail=f"not granted within {wait:g}s",
                    )
                )
            if not waiter.done():  # neither granted nor ended: someone else removed it
                raise _ending_error(Ending.CANCELLED, queued, "request no longer queued")
            handoff = waiter.result()  # raises the waiter's LockError when it was ended
            self.stats.acquired(time.perf_counter() - started)
            return Granted(handoff.request, handoff.grants, time.perf_counter() - started)
        except LockError as exc:
            self.stats.failed(_outcome_of(exc), str(exc.code))
            raise
        except asyncio.CancelledError:
            # The caller went away: nobody will learn of a grant, so do not leave one behind.
            if not stay_queued:
                asyncio.create_task(self._abandon(request, waiter))  # noqa: RUF006
            raise
        finally:
            self._waiters.pop(request.id, None)
            self._staying.discard(request.id)
            self._catch_up_due.pop(request.id, None)

    async def _try(self, request: Request, *, queue_if_busy: bool) -> AcquireResult:
        s = self.settings
        started = time.perf_counter()
        result = await self.backend.acquire(
            request, now=self.clock(), queue_if_busy=queue_if_busy, max_queue=s.max_queue
        )
        _check_slow("backend acquire", started)
        for _ in range(OVERFLOW_ATTEMPTS):
            if result.status != "full":
                return result
            victim = self.overflow.choose_victim(request, result.waiting)
            if victim == request.id:
                break
            evicted = await self.backend.enqueue_evicting(
                request, victim, now=self.clock(), max_queue=s.max_queue
            )
            if evicted is not None:
                return evicted
            result = await self.backend.acquire(
                request, now=self.clock(), queue_if_busy=queue_if_busy, max_queue=s.max_queue
            )
        if result.status != "full":
            return result
        log.warning(
            "queue overflow: request %s of %s rejected (max-queue-size %d) [EL005]",
            request.id,
            request.owner.id,
            s.max_queue,
        )
        raise LockError(
            Code.QUEUE_OVERFLOW,
            "queue overflow: max-queue-size reached",
            max_queue_size=s.max_queue,
            keys=list(request.keys),
        )

    async def _abandon(self, request: Request, waiter: asyncio.Future[Handoff]) -> None:
        # Listen again while cancelling: a shared backend delivers a grant that another replica
        # made just before the cancel during the cancel, and that grant must be released here.
        self._waiters.setdefault(request.id, waiter)
        try:
            self._apply(
                await self.backend.cancel(
                    request.id, Ending.CANCELLED, now=self.clock(), detail="caller disconnected"
                )
            )
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                mine = [g.key for g in waiter.result().grants if g.request_id == request.id]
                if mine:
                    self._apply(
                        await self.backend.release(request.owner.id, mine, now=self.clock())
                    )
        except LockError as exc:
            log.warning("could not clean up abandoned request %s: %s", request.id, exc)
        finally:
            if self._waiters.get(request.id) is waiter:
                del self._waiters[request.id]

    async def _check_new_wait(self, request: Request) -> None:
        assert self.on_wait is not None
        try:
            await self.on_wait(request)
        except LockError as exc:
            log.warning("deadlock check of request %s failed: %s", request.id, exc)
        except Exception:
            log.exception("deadlock check of request %s failed", request.id)

    def _watch_queue_depth(self, result: AcquireResult) -> None:
        limit = self.settings.max_queue
        depth = result.depth
        self.stats.set_queue_depth(depth)
        if depth >= QUEUE_WARNING_RATIO * limit and not self._queue_warned:
            self._queue_warned = True
            log.warning("queue approaching limit: %d of %d requests waiting", depth, limit)
        elif depth < 0.7 * limit:
            self._queue_warned = False

    # -- release, cancel, renew --------------------------------------------------------------

    async def release(self, owner_id: str, keys: Sequence[str]) -> Change:
        started = time.perf_counter()
        change = await self.backend.release(owner_id, keys, now=self.clock())
        _check_slow("backend release", started)
        return self._apply(change)

    async def release_owner(self, owner_id: str) -> Change:
        return self._apply(await self.backend.release_owner(owner_id, now=self.clock()))

    async def force_release(self, keys: Sequence[str]) -> Change:
        return self._apply(await self.backend.force_release(keys, now=self.clock()))

    async def cancel(
        self, request_id: str, ending: Ending = Ending.CANCELLED, detail: str = ""
    ) -> Change:
        return self._apply(
            await self.backend.cancel(request_id, ending, now=self.clock(), detail=detail)
        )

    async def renew(self, owner_id: str, keys: Sequence[str], lease: float) -> list[Grant]:
        return await self.backend.renew(owner_id, keys, lease, now=self.clock())

    # -- applying changes ---------------------------------------------------------------------

    def _apply(self, change: Change) -> Change:
        if not change:
            return change
        now = self.clock()
        if change.released:
            self.stats.released([now - g.acquired_at for g in change.released])
            for g in change.released:
                self._emit_grant(EventKind.RELEASED, g, now)
        if change.expired:
            self.stats.released([now - g.acquired_at for g in change.expired], expired=True)
            for g in change.expired:
                self._emit_grant(EventKind.EXPIRED, g, now)
                log.info("lease expired: key %r of %s released", g.key, g.owner.id)
        for request in change.queued:
            self._emit(EventKind.QUEUED, request)
        for ended in change.ended:
            self._end_waiter(ended.request, ended.ending, ended.detail)
        if change.granted:
            self.stats.handoff(len(change.granted))
        for handoff in change.granted:
            self._wake(handoff)
        return change

    def _wake(self, handoff: Handoff) -> None:
        request = handoff.request
        tokens = {g.key: g.token for g in handoff.grants}
        self._emit(EventKind.DEQUEUED, request)
        self._emit(EventKind.GRANTED, request, tokens=tokens)
        waiter = self._waiters.get(request.id)
        if waiter is not None and not waiter.done():
            waiter.set_result(handoff)

    def _end_waiter(self, request: Request, ending: Ending, detail: str) -> None:
        _, _, outcome, kind = _ENDING_ERRORS[ending]
        self._emit(kind, request, detail=detail)
        waiter = self._waiters.get(request.id)
        if waiter is not None and not waiter.done():
            waiter.set_exception(_ending_error(ending, request, detail))
        elif waiter is None:
            # Nobody waits here (another replica's caller, or a stay-queued request): count it.
            code, _, _, _ = _ENDING_ERRORS[ending]
            self.stats.failed(outcome, str(code))

    async def _on_remote_grant(self, handoff: Handoff) -> None:
        waiter = self._waiters.get(handoff.request.id)
        if waiter is not None and not waiter.done():
            waiter.set_result(handoff)

    async def _on_remote_end(self, ended: Ended) -> None:
        waiter = self._waiters.get(ended.request.id)
        if waiter is not None and not waiter.done():
            waiter.set_exception(_ending_error(ended.ending, ended.request, ended.detail))

    async def _catch_up(self) -> None:
        """Resolve local waiters whose grant or end (by another replica) never reached us.

        A shared backend notifies the waiting replica at once, but a notification can be lost
        (its connection was being re-established). So each waiter older than CATCH_UP_AFTER is
        looked up once per CATCH_UP_AFTER, at most `batch-size` per pass.
        """
        now = time.monotonic()
        due = [r for r, at in self._catch_up_due.values() if at <= now][: self.settings.batch_size]
        for request in due:
            if request.id not in self._catch_up_due:
                continue  # its caller finished while we were asking about another
            self._catch_up_due[request.id] = (request, time.monotonic() + CATCH_UP_AFTER)
            state = await self.backend.request_state(request.id)
            waiter = self._waiters.get(request.id)
            if state is None or state.outcome is None or waiter is None or waiter.done():
                continue
            outcome = state.outcome
            if outcome.ending is Ending.GRANTED:
                waiter.set_result(Handoff(request, _grants_of(request, outcome)))
            else:
                waiter.set_exception(_ending_error(outcome.ending, request, outcome.detail))

    def _emit(
        self,
        kind: EventKind,
        request: Request,
        *,
        tokens: dict[str, int] | None = None,
        detail: str = "",
    ) -> None:
        if self.events is not None and self.events.active:
            self.events.emit(
                LockEvent(
                    kind,
                    request.keys,
                    request.owner.id,
                    request.id,
                    self.clock(),
                    tokens or {},
                    detail,
                )
            )

    def _emit_grant(self, kind: EventKind, grant: Grant, now: float) -> None:
        if self.events is not None and self.events.active:
            self.events.emit(
                LockEvent(
                    kind,
                    (grant.key,),
                    grant.owner.id,
                    grant.request_id,
                    now,
                    {grant.key: grant.token},
                )
            )

    # -- the sweep -------------------------------------------------------------------------------

    async def sweep_once(self) -> Change:
        s = self.settings
        now = self.clock()
        change = await self.backend.sweep(
            now=now,
            promote_enqueued_before=s.ordering.promote_enqueued_before(now),
            batch=s.batch_size,
        )
        for ended in change.ended:
            if ended.ending is Ending.TIMED_OUT:
                log.info(
                    "request %s of %s timed out in the queue [EL002]",
                    ended.request.id,
                    ended.request.owner.id,
                )
        return self._apply(change)

    async def _sweep_forever(self, worker: int) -> None:
        next_housekeeping = 0.0
        while True:
            busy = False
            try:
                change = await self.sweep_once()
                batch = self.settings.batch_size
                busy = max(len(change.expired), len(change.ended), len(change.promoted)) >= batch
                if worker == 0 and time.monotonic() >= next_housekeeping:
                    next_housekeeping = time.monotonic() + HOUSEKEEPING_INTERVAL
                    await self._housekeeping()
                if worker == 0 and self._catch_up_due:
                    await self._catch_up()
            except LockError as exc:
                self.stats.error(str(exc.code))
                log.error("sweep failed: %s", exc)
            except Exception:
                log.exception("sweep failed unexpectedly")
            # A full batch means more is due: go again at once (each pass is bounded by the batch).
            if not busy:
                await asyncio.sleep(self.settings.processing_interval)

    async def _housekeeping(self) -> None:
        summary = await self.backend.queue_summary()
        self.stats.set_queue_depth(summary.depth)
        now = self.clock()
        # Up to a hundred batches a second: far more than requests can finish in one.
        await self.backend.prune_outcomes(
            finished_before=now - OUTCOME_RETENTION, batch=self.settings.batch_size * 100
        )

    def _resize_sweepers(self) -> None:
        """Run `sweepers` sweep tasks; each pass takes its own batch of due work."""
        while len(self._sweepers) > self.settings.sweepers:
            self._sweepers.pop().cancel()
        while len(self._sweepers) < self.settings.sweepers:
            n = len(self._sweepers)
            self._sweepers.append(
                asyncio.create_task(self._sweep_forever(n), name=f"lock-sweeper-{n}")
            )

    async def start(self) -> None:
        self._started = True
        self._resize_sweepers()

    async def stop(self) -> None:
        """Stop sweeping and answer every waiting caller.

        Callers that asked to stay queued keep their request (it survives the restart); the
        others' requests are cancelled so nothing is granted to a caller who is gone.
        """
        self._started = False
        sweepers, self._sweepers = self._sweepers, []
        for task in sweepers:
            task.cancel()
        for task in sweepers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for request_id, waiter in list(self._waiters.items()):
            if waiter.done():
                continue
            if request_id in self._staying:
                waiter.set_exception(
                    LockError(
                        Code.ACQUIRE_TIMEOUT,
                        "sidecar shutting down; the request stays queued",
                        status=409,
                        queued=True,
                        request_id=request_id,
                    )
                )
                continue
            with contextlib.suppress(LockError):
                await self.cancel(request_id, detail="sidecar shutting down")
            if not waiter.done():
                waiter.set_exception(LockError(Code.BACKEND_UNAVAILABLE, "sidecar shutting down"))


def _check_slow(what: str, started: float) -> None:
    elapsed = time.perf_counter() - started
    if elapsed > SLOW_OPERATION_SECONDS:
        log.warning("slow operation detected: %s took %.0f ms", what, elapsed * 1000)


def _grants_of(request: Request, outcome: Outcome) -> tuple[Grant, ...]:
    """The grants a `granted` outcome stands for, rebuilt from its tokens (a catch-up has the
    outcome, not the grant rows): acquired when the outcome was recorded, with its lease."""
    at = outcome.finished_at
    lease = at + request.lease_seconds if request.lease_seconds else None
    return tuple(
        Grant(key, request.owner, token, at, lease, request.id)
        for key, token in sorted(outcome.tokens.items())
    )


def _holders(grants: Sequence[Grant]) -> list[dict[str, object]]:
    return [
        {"key": g.key, "owner": g.owner.to_json(), "acquired_at": g.acquired_at} for g in grants
    ]


def _outcome_of(exc: LockError) -> str:
    if exc.code is Code.ACQUIRE_TIMEOUT and exc.status == 409:
        return "busy"
    return {
        Code.ACQUIRE_TIMEOUT: "timed_out",
        Code.QUEUE_OVERFLOW: "overflow",
        Code.DEADLOCK_VICTIM: "deadlock",
    }.get(exc.code, "error")
