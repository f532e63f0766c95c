"""The `redis` backend: locks shared by every sidecar replica that points at one Redis.

Every operation is one call of one Lua library (`scripts/lib.lua` + `scripts/engine.lua`, the
rules of `sidecar.engine.rules` ported line by line), so it is atomic however many replicas run.
The library is sent once: as a Redis Function (FUNCTION LOAD, then FCALL by name) where Redis has
Functions (7.0+), else as a script (then EVALSHA by its SHA). A server that forgot it (a restart,
a fail-over, a flush) answers "Function not found" or NOSCRIPT and gets it again. Functions are
preferred because a script defines the whole library again on every call (~30 us of Redis time
per call here, measured; an FCALL costs ~6 us).

All keys share one hash tag, `<key-prefix>{locks}:`: in Redis Cluster they live in one slot, so
a multi-key acquire, the global queue bound and the deadlock detector's snapshot each stay one
atomic script. (The cluster then gives fail-over and lets the slot move, not sharding of lock
traffic; a lock service's load is small next to one Redis primary's capacity.)

Handoff across replicas: each stored request names the replica whose caller waits for it. When
another replica's script grants or ends it, the script publishes the grant (or end) to that
replica's channel; the replica answers its caller at once and then confirms (*claims*) the grant
with one more call. A grant nobody claims within `PICKUP_SECONDS` (its replica died) is revoked by
whoever sweeps, and that replica's other waiting requests are cancelled, so a dead replica never
keeps a key. A replica that missed a message catches up through the engine's check of long
waiters (`Backend.shared`), which reads `request_state`: reading a grant claims it too.

Retries are safe: a repeated acquire is recognised by its request id, and a repeated release
(release, release-owner, force-release) gets the first attempt's answer, kept two minutes, instead
of freeing keys that were meanwhile handed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import Iterator, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

from plugins.backends.redis import codec
from plugins.backends.redis.resp import Prefix
from plugins.backends.redis.topology import Backoff, describe, mode_of, where
from sidecar.backends.base import (
    Backend,
    GrantPage,
    RemoteEndListener,
    RemoteGrantListener,
)
from sidecar.config import RedisSettings, Settings
from sidecar.engine.model import (
    AcquireResult,
    Change,
    Ended,
    Ending,
    Grant,
    Handoff,
    KeyState,
    Owner,
    QueueSummary,
    Request,
    RequestState,
    Snapshot,
)
from sidecar.engine.ordering import PROMOTED_OFFSET
from sidecar.engine.policies import EdgeRef, WaitEdge
from sidecar.engine.waitgraph import edges_in_queues
from sidecar.errors import Code, LockError

if TYPE_CHECKING:
    from plugins.backends.redis.connection import Connection

log = logging.getLogger("enhanced-locking.redis")

#: Must match PICKUP_SECONDS in scripts/lib.lua.
PICKUP_SECONDS = 5.0
#: How long after answering a handed-on grant's caller the replica confirms it (in a batch).
CONFIRM_DELAY = 0.01
#: How many of its queued requests a replica remembers, so that a grant message need not carry
#: the request (one that is forgotten is read back from Redis when its grant arrives).
REMEMBERED_REQUESTS = 10_000
#: How lib.lua's revoke_unclaimed starts the detail of a revoked grant.
UNCLAIMED = "granted, but replica "
HASH_TAG = "{locks}"
#: The operations a caller waits for that can hand a key to a waiter on another replica.
HANDS_ON = frozenset({"release", "release_owner", "force_release", "cancel"})


def library_source() -> str:
    """The Lua library: lib.lua (the rules) and engine.lua (the operations), defining S.main."""
    scripts = resources.files("plugins.backends.redis").joinpath("scripts")
    return (
        scripts.joinpath("lib.lua").read_text() + "\n" + scripts.joinpath("engine.lua").read_text()
    )


def script_source() -> str:
    """The library as a script: run for EVAL/EVALSHA, it serves the call it is run for."""
    return library_source() + "\nreturn S.main(ARGV)\n"


def function_library(name: str) -> str:
    """The library as a Redis Function library (Redis 7+): loaded once, called with FCALL."""
    return (
        f"#!lua name={name}\n{library_source()}\n"
        f"redis.register_function('{name}', function(keys, args) return S.main(args) end)\n"
    )


def key_base(prefix: str) -> str:
    """Where every key lives: the prefix, then one hash tag (one Cluster slot for all keys)."""
    return prefix + HASH_TAG + ":"


async def _ignore_grant(handoff: Handoff) -> None:
    return None


async def _ignore_end(ended: Ended) -> None:
    return None


class RedisBackend(Backend):
    name = "redis"
    #: As durable as the server's persistence: with `appendonly yes` + `appendfsync always`
    #: every answered grant and token is on disk.
    durable = True
    shared = True

    def __init__(
        self, settings: RedisSettings, *, replica: str | None = None, functions: bool = True
    ) -> None:
        """`functions=False` never uses Redis Functions, as on Redis 6 (the tests cover both)."""
        self.settings = settings
        #: This process among the replicas; requests it queues carry it, so grants find it.
        self.replica = replica or uuid.uuid4().hex[:16]
        self.base = key_base(settings.key_prefix)
        self.anchor = self.base + "seq"  # the key that routes every script call to the slot
        self.channel = self.base + "replica:" + self.replica
        self.source = script_source()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()
        # One name per version of the library, so replicas of two versions can share a Redis.
        self.function = f"atlantis_locks_{self.sha[:16]}"
        #: Whether calls go to the loaded Function (None: not known yet, False: scripts).
        self.functions: bool | None = None if functions else False
        self._fcall = Prefix.of("FCALL", self.function, 1, self.anchor, self.base, self.replica)
        # Every call starts with these: the script, its one key (the slot), ARGV[1..2].
        self._evalsha = Prefix.of("EVALSHA", self.sha, 1, self.anchor, self.base, self.replica)
        self._eval = Prefix.of("EVAL", self.source, 1, self.anchor, self.base, self.replica)
        self._conn: Connection | None = None
        self._on_grant: RemoteGrantListener = _ignore_grant
        self._on_end: RemoteEndListener = _ignore_end
        self._subscriber: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._pubsub_state = "not started"
        self._unconfirmed: list[str] = []
        #: Requests this replica queued and waits to hear about, oldest first (see _remember).
        self._queued: dict[str, Request] = {}
        self._confirmer: asyncio.Task[None] | None = None
        self._ops = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Backend:
        return cls(settings.redis)

    def describe(self) -> dict[str, object]:
        return {
            **super().describe(),
            "mode": mode_of(self.settings),
            "redis": where(self.settings),
            "key_prefix": self.settings.key_prefix,
            "replica": self.replica,
            "calls": {True: "FCALL", False: "EVALSHA", None: "not yet known"}[self.functions],
            "pubsub": self._pubsub_state,
        }

    def set_remote_grant_listener(self, listener: RemoteGrantListener) -> None:
        self._on_grant = listener

    def set_remote_end_listener(self, listener: RemoteEndListener) -> None:
        self._on_end = listener

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, load the script and subscribe.

        Redis being down is not fatal: the sidecar starts, answers EL001 and reports unhealthy
        until Redis answers, then works without a restart. A refused login is fatal: waiting
        cannot fix a wrong password.
        """
        # redis-py is imported only now: a sidecar on another backend never loads it.
        from plugins.backends.redis.connection import Connection

        self._conn = Connection(self.settings, f"atlantis-sidecar:{self.replica}")
        try:
            await self._run("ping")
        except LockError as exc:
            if exc.details.get("reason") in ("authentication", "permission"):
                raise
            log.error("%s; answering EL001 until redis is back (retrying) [EL001]", exc.message)
        self._subscriber = asyncio.create_task(self._subscribe_forever(), name="redis-subscriber")
        # Waiters queued before the subscription would only hear of their grant by catching up.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.dial_timeout):
                await self._subscribed.wait()

    async def close(self) -> None:
        if self._subscriber is not None:
            self._subscriber.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._subscriber
            self._subscriber = None
        if self._confirmer is not None:  # grants already answered: confirm them, do not drop
            await self._confirmer
        self._queued.clear()
        if self._conn is not None:
            # Requests still queued were asked to stay queued: they outlive this replica.
            with contextlib.suppress(LockError):
                await self._run("detach", retries=0)
            await self._conn.close()
            self._conn = None

    async def ping(self) -> None:
        await self._run("ping", retries=0)

    # -- calling the script --------------------------------------------------------------------

    def _op_id(self) -> str:
        """An id no other operation of any replica has: ours, then a counter."""
        self._ops += 1
        return f"{self.replica}:{self._ops}"

    def _connection(self) -> Connection:
        if self._conn is None:
            raise LockError(
                Code.BACKEND_UNAVAILABLE, "backend connection failed: redis not started"
            )
        return self._conn

    async def _run(
        self, op: str, *args: str | int, now: float = 0.0, retries: int | None = None
    ) -> Any:
        """One atomic operation: the script called with `op` and its arguments, JSON answered.

        A retry tells the script so (it then answers what a first attempt whose answer was lost
        already did, instead of doing it twice).
        """
        conn = self._connection()
        now_text = codec.number(now)
        last = op in HANDS_ON  # the waiting replica's grant message goes out first

        async def attempt(n: int) -> Any:
            retry = "1" if n else "0"
            if self.functions is None:
                await self._load_function(conn)
            if self.functions:
                try:
                    return await conn.command(
                        self._fcall, op, now_text, retry, *args, answer_last=last
                    )
                except conn.ResponseError as exc:
                    if "Function not found" not in str(exc):
                        raise
                    await self._load_function(conn)  # a restart or fail-over lost it
                    return await conn.command(
                        self._fcall, op, now_text, retry, *args, answer_last=last
                    )
            try:
                return await conn.command(
                    self._evalsha, op, now_text, retry, *args, answer_last=last
                )
            except conn.NoScriptError:  # a restart or fail-over lost it: send it again
                return await conn.command(self._eval, op, now_text, retry, *args, answer_last=last)

        return json.loads(await conn.call(op, attempt, retries=retries))

    async def _load_function(self, conn: Connection) -> None:
        """Load the library as a Redis Function; on a Redis without Functions (before 7.0, or
        an ACL that forbids FUNCTION), fall back to scripts for good."""
        try:
            await conn.load_function(function_library(self.function))
            self.functions = True
        except conn.ResponseError as exc:
            if isinstance(exc, conn.NoPermissionError) or "unknown" in str(exc).lower():
                log.info("redis has no Functions for us (%s): calling the library as a script", exc)
                self.functions = False
                return
            raise

    # -- the contract --------------------------------------------------------------------------

    async def acquire(
        self, request: Request, *, now: float, queue_if_busy: bool, max_queue: int
    ) -> AcquireResult:
        data = await self._run(
            "acquire",
            codec.encode_request(request, self.replica),
            "1" if queue_if_busy else "0",
            max_queue,
            now=now,
        )
        return self._remember(codec.acquire_result(data, request))

    async def enqueue_evicting(
        self, request: Request, victim_id: str, *, now: float, max_queue: int
    ) -> AcquireResult | None:
        data = await self._run(
            "enqueue_evicting",
            codec.encode_request(request, self.replica),
            victim_id,
            max_queue,
            now=now,
        )
        if data["status"] is None:
            return None
        return self._remember(codec.acquire_result(data, request))

    async def release(self, owner_id: str, keys: Sequence[str], *, now: float) -> Change:
        data = await self._run("release", self._op_id(), owner_id, *keys, now=now)
        _raise_for(data)
        return self._forget(codec.change(data))

    async def release_owner(self, owner_id: str, *, now: float) -> Change:
        data = await self._run("release_owner", self._op_id(), owner_id, now=now)
        return self._forget(codec.change(data))

    async def force_release(self, keys: Sequence[str], *, now: float) -> Change:
        data = await self._run("force_release", self._op_id(), *keys, now=now)
        return self._forget(codec.change(data))

    async def cancel(
        self, request_id: str, ending: Ending, *, now: float, detail: str = ""
    ) -> Change:
        data = await self._run("cancel", request_id, str(ending), detail, now=now)
        self._queued.pop(request_id, None)
        outcome = data["outcome"]
        if isinstance(outcome, dict):
            # It had already been granted or ended elsewhere: tell this replica's waiter now,
            # so that a grant racing with the cancel is taken (and released) by the canceller.
            await self._deliver(outcome)
        return self._forget(codec.change(data["change"]))

    async def renew(
        self, owner_id: str, keys: Sequence[str], lease_seconds: float, *, now: float
    ) -> list[Grant]:
        data = await self._run("renew", owner_id, codec.number(lease_seconds), *keys, now=now)
        _raise_for(data)
        return list(codec.grants(data))

    async def sweep(
        self, *, now: float, promote_enqueued_before: float | None, batch: int
    ) -> Change:
        promote = "" if promote_enqueued_before is None else codec.number(promote_enqueued_before)
        data = await self._run("sweep", promote, batch, codec.number(PROMOTED_OFFSET), now=now)
        change = self._forget(codec.change(data))
        for ended in change.ended:
            if ended.detail.startswith(UNCLAIMED):
                log.warning(
                    "replica %s did not claim a grant of request %s of %s within %gs: the grant"
                    " is revoked and the keys handed on; the replica's other waits are cancelled",
                    ended.detail.split()[3],
                    ended.request.id,
                    ended.request.owner.id,
                    PICKUP_SECONDS,
                )
        return change

    async def request_state(self, request_id: str) -> RequestState | None:
        data = await self._run("request_state", request_id)
        if data is None:
            return None
        if data["state"] == "waiting":
            positions = data["positions"]
            return RequestState(
                request_id,
                "waiting",
                request=codec.request(data["request"]),
                position=int(data["position"]),
                positions=(
                    {str(k): int(v) for k, v in positions.items()}
                    if isinstance(positions, dict)
                    else {}
                ),
            )
        self._queued.pop(request_id, None)
        return RequestState(request_id, str(data["state"]), outcome=codec.outcome(data["outcome"]))

    async def key_state(self, key: str, *, max_waiting: int) -> KeyState:
        data = await self._run("key_state", key, max_waiting)
        grant = data["grant"]
        return KeyState(
            key,
            codec.grant(grant) if isinstance(grant, dict) else None,
            codec.requests(data["waiting"]),
            int(data["last_token"]),
        )

    async def list_grants(
        self,
        *,
        owner_id: str | None = None,
        prefix: str | None = None,
        after_key: str | None = None,
        limit: int = 100,
    ) -> GrantPage:
        args: list[str | int] = []
        for value in (owner_id, prefix, after_key):
            args += ["0", ""] if value is None else ["1", value]
        rows = list(codec.grants(await self._run("list_grants", *args, limit + 1)))
        return GrantPage.of(rows, limit)

    async def queue_summary(self) -> QueueSummary:
        return codec.queue_summary(await self._run("queue_summary"))

    async def snapshot(self, *, now: float, max_waiting: int) -> Snapshot:
        data = await self._run("snapshot", max_waiting)
        return Snapshot(codec.grants(data["grants"]), codec.requests(data["waiting"]), now)

    async def prune_outcomes(self, *, finished_before: float, batch: int) -> int:
        return int(await self._run("prune_outcomes", codec.number(finished_before), batch))

    async def wait_edges_from(self, owner_id: str, *, max_owners: int) -> list[WaitEdge]:
        data = await self._run("wait_edges_from", owner_id, max_owners)
        return [
            WaitEdge(
                codec.request(e["waiter"]), str(e["key"]), Owner.from_json(e["blocker"]), e["held"]
            )
            for e in data
        ]

    async def wait_graph(self, *, max_waiting: int) -> list[EdgeRef]:
        data = await self._run("wait_graph", max_waiting)
        holders = dict(zip(data["keys"], data["holders"], strict=True))  # False: free
        return edges_in_queues(_waits(data["waits"], holders, data["cutoff"]))

    async def waiting_requests(self, request_ids: Sequence[str]) -> dict[str, Request]:
        if not request_ids:
            return {}
        found = codec.requests(await self._run("waiting_requests", *request_ids))
        return {r.id: r for r in found}

    async def edges_present(self, edges: Sequence[WaitEdge]) -> list[bool]:
        if not edges:
            return []
        wanted = [
            {"request_id": e.waiter.id, "key": e.key, "blocker": e.blocker.id, "held": e.held}
            for e in edges
        ]
        data = await self._run("edges_present", json.dumps(wanted))
        return [bool(p) for p in data]

    # -- notifications from other replicas -----------------------------------------------------

    async def _subscribe_forever(self) -> None:
        """Listen on this replica's channel; reconnect (with backoff) whenever it drops."""
        from redis import exceptions as rex

        conn = self._connection()
        backoff = Backoff(self.settings.retry_delay)
        lost = False
        while True:
            try:
                async with conn.subscription(self.channel) as subscription:
                    self._pubsub_state = "subscribed"
                    self._subscribed.set()
                    if lost:
                        log.info("pub/sub to redis at %s restored", conn.where)
                    lost = False
                    backoff.reset()
                    async for message in subscription.messages():
                        await self._on_message(message)
            except (rex.RedisError, rex.RedisClusterException, OSError, TimeoutError) as exc:
                self._subscribed.clear()
                self._pubsub_state = f"reconnecting: {describe(exc)}"
                lost = True
                delay = backoff.next()
                if backoff.should_log():
                    log.warning(
                        "connection retry: pub/sub to redis at %s lost (%s); retrying every"
                        " %.1fs at most; waiters catch up meanwhile",
                        conn.where,
                        describe(exc),
                        backoff.cap,
                    )
                await asyncio.sleep(delay)

    def _remember(self, result: AcquireResult) -> AcquireResult:
        """Keep a request this replica queued: its grant message then carries only the grants.

        At most REMEMBERED_REQUESTS, the oldest forgotten first; requests left queued on
        purpose (stay-queued) may never hear back, and a forgotten one costs one read when its
        grant comes.
        """
        self._forget(result.change)
        if result.status == "queued":
            if len(self._queued) >= REMEMBERED_REQUESTS:
                del self._queued[next(iter(self._queued))]
            self._queued[result.request.id] = result.request
        return result

    def _forget(self, change: Change) -> Change:
        """Requests granted or ended by this replica's own calls: no message will come."""
        for handoff in change.granted:
            self._queued.pop(handoff.request.id, None)
        for ended in change.ended:
            self._queued.pop(ended.request.id, None)
        return change

    async def _on_message(self, raw: bytes | str) -> None:
        """A grant or an end another replica made for a request waiting here: tell the waiter.

        A grant is answered at once, then confirmed (claimed) with one more call, which keeps
        it from being revoked as the grant of a dead replica. Its message names the request
        and carries the grants: the request is the one this replica queued (a grant of a
        request it no longer remembers is read back from Redis, which claims it too). The
        straight release (lib's S.release_straight) sends `g <token> <acquired_at> <request
        id>` instead of JSON: the grant of the one key, without a lease, of that request.
        """
        try:
            if isinstance(raw, str):
                raw = raw.encode()
            if raw.startswith(b"g "):
                _, token_text, acquired_text, request_id = raw.decode().split(" ", 3)
                token, acquired_at = int(token_text), float(acquired_text)
                request = self._queued.pop(request_id, None)
                if request is None or len(request.keys) != 1:
                    await self._read_back(request_id)
                    return
                grant = Grant(request.keys[0], request.owner, token, acquired_at, None, request_id)
                await self._granted(Handoff(request, (grant,)))
                return
            message = json.loads(raw)
            kind = message.get("t") if isinstance(message, dict) else None
            if kind == "g":
                request_id = str(message["id"])
                request = self._queued.pop(request_id, None)
                if request is None:
                    await self._read_back(request_id)
                    return
                await self._granted(
                    Handoff(request, codec.grants(message["grants"], request.owner))
                )
            elif kind == "e":
                ended = codec.ended(message)
                self._queued.pop(ended.request.id, None)
                await self._on_end(ended)
            else:
                raise ValueError(kind)
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed message on %s", self.channel)

    async def _granted(self, handoff: Handoff) -> None:
        await self._on_grant(handoff)
        self._unconfirmed.append(handoff.request.id)
        if self._confirmer is None or self._confirmer.done():
            self._confirmer = asyncio.create_task(self._confirm())

    async def _read_back(self, request_id: str) -> None:
        """The grant of a request this replica no longer remembers: read (and so claim) it."""
        try:
            data = await self._run("request_state", request_id)
        except LockError as exc:
            log.warning("could not read the grant of request %s: %s", request_id, exc)
            return  # the waiter's catch-up asks again; unclaimed, the grant is revoked
        if isinstance(data, dict) and isinstance(data.get("outcome"), dict):
            await self._deliver(data["outcome"])

    async def _confirm(self) -> None:
        """Claim, in one call, the grants answered in the last moment.

        A moment later rather than at once, so that answering the caller goes first; together,
        so that a burst of handoffs costs one call.
        """
        while self._unconfirmed:  # more may come while a batch is on its way
            await asyncio.sleep(CONFIRM_DELAY)
            ids, self._unconfirmed = self._unconfirmed, []
            try:
                late = await self._run("confirm", *ids)
            except LockError as exc:
                log.warning("could not confirm %d grants: %s", len(ids), exc)
                continue  # if this lasts past the pickup deadline, the grants are revoked
            for request_id in late:
                log.warning(
                    "the grant of request %s was revoked before this replica confirmed it (it"
                    " did not answer for %gs); its caller was told it holds the lock: fencing"
                    " tokens let the protected resource refuse it",
                    request_id,
                    PICKUP_SECONDS,
                )

    async def _deliver(self, outcome: dict[str, Any]) -> None:
        ending = Ending(outcome["ending"])
        if ending is Ending.GRANTED:
            await self._on_grant(codec.handoff_of(outcome))
        else:
            await self._on_end(
                Ended(codec.request(outcome["request"]), ending, str(outcome.get("detail", "")))
            )


def _waits(
    waits: list[list[str]], holders: dict[str, str | bool], cutoff: int | bool
) -> Iterator[tuple[str, str, str, str | None]]:
    """The rows of edges_in_queues from all-waits, which comes by key and in queue order:
    [key, sortable score, seq, request id, owner] each (lib.lua's S.wait_member)."""
    for key, _, seq, request_id, owner in waits:
        if cutoff is False or int(seq) < cutoff:
            holder = holders.get(key)
            yield key, request_id, owner, holder if isinstance(holder, str) else None


def _raise_for(data: Any) -> None:
    """Turn the script's refusal of a release or renew into the engine's errors."""
    if not isinstance(data, dict) or "error" not in data:
        return
    key = data["key"]
    if data["error"] == "not_found":
        raise LockError(Code.NOT_FOUND, f"no lock held on key {key!r}", key=key)
    raise LockError(
        Code.PERMISSION_DENIED, f"lock on key {key!r} is held by another owner", key=key
    )
