"""`atlantis-sidecar locks test --basic`: prove a running sidecar grants, queues and hands off.

The troubleshooting guide tells operators to run this first when locks misbehave, so it talks
to the sidecar exactly as a client would (over HTTP, through the same port Atlantis's clients
use) and checks the promises that matter: one holder per key, a fencing token that grows, a
waiter that queues instead of failing, and a release that wakes the waiter at once. It prints
one line per step, `PASS <step>` or `FAIL <step>: <why>` (`SKIP` for steps that cannot run
after a failure), and exits 0 only when every step passed.

Keys and owners carry the prefix `selftest:` plus a random run id, so the test never touches a
real lock and two runs at once do not meet. Whatever a failed run took is released before it
returns (the owners are unique to the run, so `release-owner` frees exactly the run's locks and
cancels its waiting request).

When the sidecar has an `api-token`, set `ATLANTIS_SIDECAR_API_TOKEN` to it: its value is sent
as `X-Atlantis-Token` on every call (the lock calls need it; read-only calls ignore it).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

API = "/api/enhanced-locks"
TOKEN_ENV = "ATLANTIS_SIDECAR_API_TOKEN"
STEPS = ("health", "acquire", "contend", "queue", "handoff", "release")

# Every call is bounded, so a hung sidecar makes the test fail instead of hang.
CALL_TIMEOUT = 10.0
# How long the queued owner waits in the `queue` step (the brief of the step: "wait 10s").
QUEUE_WAIT_SECONDS = 10
# How long the queued request may take to show up in the key's queue.
QUEUE_VISIBLE_WITHIN = 5.0
# Handoff is event-driven (no polling interval in the way): a waiter that is not answered this
# soon after the release means handoff is broken, not slow.
HANDOFF_WITHIN = 2.0
CLEANUP_TIMEOUT = 5.0
# Answers the API gives before any lock state moves (bad body, no token, too large): after one
# of these to the first acquire there is nothing to clean up.
REFUSED_BEFORE_STATE_MOVES = frozenset({400, 401, 403, 413})


class StepFailed(Exception):
    """A step's check did not hold; the message says what was expected and what came back."""


class Unreachable(Exception):
    """No HTTP answer at all: the sidecar is down, the URL is wrong, or it hung."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: Any  # decoded JSON, or the raw text when the answer is not JSON

    def field(self, name: str) -> Any:
        return self.body.get(name) if isinstance(self.body, dict) else None

    def describe(self) -> str:
        """`409 EL002: lock is held by another owner`, with a hint for a missing token."""
        code, error = self.field("code"), self.field("error")
        if code is None:
            text = self.body if isinstance(self.body, str) else json.dumps(self.body)
            return f"HTTP {self.status}: {text[:300]}"
        hint = ""
        if code == "EL007" and self.status == 401 and "Token" in str(error):
            hint = f" (set {TOKEN_ENV} to the sidecar's api-token)"
        return f"HTTP {self.status} {code}: {error}{hint}"


class Api:
    """The few calls the test makes; every failure to get an answer becomes `Unreachable`."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url

    async def call(
        self, method: str, path: str, *, body: Any = None, params: dict[str, str] | None = None,
        within: float = CALL_TIMEOUT,
    ) -> Answer:
        url = self.base_url + API + path
        try:
            async with self.session.request(
                method, url, json=body, params=params,
                timeout=aiohttp.ClientTimeout(total=within),
            ) as resp:
                text = await resp.text()
                status = resp.status
        except TimeoutError as exc:
            raise Unreachable(
                f"no answer from the sidecar at {self.base_url} within {within:g}s "
                f"({method} {API}{path}) [EL001]"
            ) from exc
        except aiohttp.ClientError as exc:
            raise Unreachable(
                f"cannot reach the sidecar at {self.base_url}: {exc or type(exc).__name__} "
                "[EL001]"
            ) from exc
        try:
            return Answer(status, json.loads(text))
        except ValueError:
            return Answer(status, text)


def _owner_id(value: Any) -> Any:
    return value.get("id") if isinstance(value, dict) else None


class BasicTest:
    """One run: a fresh key and two owners (A holds first, B contends, queues and inherits)."""

    def __init__(self, api: Api) -> None:
        self.api = api
        run = uuid.uuid4().hex[:12]
        self.key = f"selftest:{run}/basic"
        self.owner_a = f"selftest:{run}:owner-a"
        self.owner_b = f"selftest:{run}:owner-b"
        self.token_a = 0
        self.touched = False  # anything sent that could have taken a lock or queued a request
        self.waiter: asyncio.Task[tuple[Answer, float]] | None = None

    async def run(self) -> int:
        print(f"basic lock test against {self.api.base_url} (key {self.key})", flush=True)
        steps: dict[str, Callable[[], Awaitable[str]]] = {
            "health": self.health, "acquire": self.acquire, "contend": self.contend,
            "queue": self.queue, "handoff": self.handoff, "release": self.release,
        }
        passed = 0
        failed: str | None = None
        try:
            for name in STEPS:
                if failed is not None:
                    print(f"SKIP {name}: not run because {failed} failed", flush=True)
                    continue
                try:
                    detail = await steps[name]()
                except (StepFailed, Unreachable) as exc:
                    print(f"FAIL {name}: {exc}", flush=True)
                    failed = name
                except Exception as exc:  # a bug here must still clean up and say FAIL
                    print(f"FAIL {name}: unexpected {type(exc).__name__}: {exc}", flush=True)
                    failed = name
                else:
                    print(f"PASS {name}: {detail}", flush=True)
                    passed += 1
        finally:
            if passed < len(STEPS) and self.touched:
                await self.cleanup()
        print(f"{passed}/{len(STEPS)} steps passed", flush=True)
        return 0 if passed == len(STEPS) else 1

    # -- the steps ---------------------------------------------------------------------------

    async def health(self) -> str:
        answer = await self.api.call("GET", "/health")
        state = answer.field("status")
        if state is None:
            raise StepFailed(
                f"no enhanced-locks API at {self.api.base_url} ({answer.describe()}); "
                "is this the sidecar's URL?"
            )
        if state == "disabled":
            raise StepFailed("enhanced locking is disabled (enabled = false): the lock API "
                             "answers 503 EL003")
        if answer.status != 200 or state not in ("healthy", "degraded"):
            reasons = "; ".join(str(r) for r in answer.field("reasons") or []) or "no reason given"
            raise StepFailed(f"sidecar is {state} (HTTP {answer.status}): {reasons} [EL001]")
        backend = answer.field("backend") or {}
        return f"{state}, backend {backend.get('name', '?')}, version {answer.field('version')}"

    async def acquire(self) -> str:
        self.touched = True
        answer = await self.api.call("POST", "/acquire", body={
            "key": self.key, "owner": self.owner_a, "wait": "5s",
        })
        if answer.status in REFUSED_BEFORE_STATE_MOVES:
            self.touched = False
        if answer.status != 200 or answer.field("granted") is not True:
            raise StepFailed(f"owner A was not granted a free key: {answer.describe()}")
        locks = answer.field("locks") or []
        grant = next((g for g in locks if isinstance(g, dict) and g.get("key") == self.key), None)
        if grant is None or _owner_id(grant.get("owner")) != self.owner_a:
            raise StepFailed(f"the answer does not show owner A holding the key: {answer.body}")
        token = grant.get("token")
        if not isinstance(token, int) or isinstance(token, bool) or token < 1:
            raise StepFailed(f"no valid fencing token in the grant: {grant}")
        self.token_a = token
        return f"owner A holds the key (fencing token {token})"

    async def contend(self) -> str:
        answer = await self.api.call("POST", "/acquire", body={
            "key": self.key, "owner": self.owner_b, "wait": 0,
        })
        if answer.status == 200:
            raise StepFailed("owner B was granted the key owner A holds: mutual exclusion broken")
        if answer.status != 409 or answer.field("code") != "EL002":
            raise StepFailed(f"expected 409 EL002, got {answer.describe()}")
        holders = {_owner_id(h.get("owner")) for h in answer.field("holders") or []
                   if isinstance(h, dict)}
        if self.owner_a not in holders:
            raise StepFailed(f"409 EL002 does not name owner A as the holder: {answer.body}")
        return "owner B refused at once with 409 EL002, holder owner A"

    async def queue(self) -> str:
        async def wait_for_grant() -> tuple[Answer, float]:
            answer = await self.api.call(
                "POST", "/acquire",
                body={"key": self.key, "owner": self.owner_b, "wait": f"{QUEUE_WAIT_SECONDS}s"},
                within=QUEUE_WAIT_SECONDS + CALL_TIMEOUT,
            )
            return answer, time.perf_counter()

        self.waiter = asyncio.create_task(wait_for_grant(), name="selftest-owner-b")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + QUEUE_VISIBLE_WITHIN
        request_id: str | None = None
        while request_id is None:
            if self.waiter.done():
                answer, _ = self.waiter.result()  # re-raises Unreachable
                raise StepFailed(f"owner B's waiting acquire returned at once: "
                                 f"{answer.describe()}")
            state = await self.api.call("GET", "/lock", params={"key": self.key})
            if state.status != 200:
                raise StepFailed(f"GET {API}/lock?key= failed: {state.describe()}")
            for entry in state.field("waiting") or []:
                if isinstance(entry, dict) and _owner_id(entry.get("owner")) == self.owner_b:
                    request_id = str(entry.get("request_id"))
            if request_id is None:
                if loop.time() > deadline:
                    raise StepFailed(f"owner B's request did not appear in the key's queue "
                                     f"within {QUEUE_VISIBLE_WITHIN:g}s: {state.body}")
                await asyncio.sleep(0.02)
        status = await self.api.call("GET", f"/requests/{request_id}")
        if status.status != 200 or status.field("state") != "waiting":
            raise StepFailed(f"request {request_id} is not shown waiting: {status.describe()}")
        queue = await self.api.call("GET", "/queue/status")
        depth = queue.field("depth")
        if queue.status != 200 or not isinstance(depth, int) or depth < 1:
            raise StepFailed(f"queue status does not count the waiting request: "
                             f"{queue.describe()}")
        return (f"owner B waits (request {request_id}, position {status.field('position')}, "
                f"queue depth {depth})")

    async def handoff(self) -> str:
        waiter = self.waiter
        if waiter is None:
            raise StepFailed("no waiting owner B (the queue step did not start it)")
        started = time.perf_counter()
        released = await self.api.call("POST", "/release", body={
            "key": self.key, "owner": self.owner_a,
        })
        if released.status != 200:
            raise StepFailed(f"owner A could not release: {released.describe()}")
        try:
            answer, finished = await asyncio.wait_for(asyncio.shield(waiter), HANDOFF_WITHIN)
        except TimeoutError:
            raise StepFailed(f"owner B's waiting call was not answered within "
                             f"{HANDOFF_WITHIN:g}s of owner A's release") from None
        latency_ms = (finished - started) * 1000
        if answer.status != 200 or answer.field("granted") is not True:
            raise StepFailed(f"owner B was not granted after the release: {answer.describe()}")
        grant = next((g for g in answer.field("locks") or []
                      if isinstance(g, dict) and g.get("key") == self.key), {})
        token = grant.get("token")
        if _owner_id(grant.get("owner")) != self.owner_b:
            raise StepFailed(f"the grant is not owner B's: {answer.body}")
        if not isinstance(token, int) or token <= self.token_a:
            raise StepFailed(f"fencing token did not grow: owner A had {self.token_a}, "
                             f"owner B got {token!r}")
        return (f"owner B granted {latency_ms:.1f} ms after owner A's release "
                f"(token {token} > {self.token_a})")

    async def release(self) -> str:
        answer = await self.api.call("POST", "/release", body={
            "key": self.key, "owner": self.owner_b,
        })
        if answer.status != 200:
            raise StepFailed(f"owner B could not release: {answer.describe()}")
        state = await self.api.call("GET", "/lock", params={"key": self.key})
        if state.status != 200 or state.field("held") is not False:
            raise StepFailed(f"the key is still held after the release: {state.describe()}")
        return f"the key is free (last token {state.field('last_token')})"

    # -- cleanup -----------------------------------------------------------------------------

    async def cleanup(self) -> None:
        """Release the run's locks and cancel its waiting request, whatever step failed.

        B goes first so that releasing A cannot hand the key to B's waiting request.
        """
        released: list[str] = []
        cancelled = 0
        problems: list[str] = []
        for owner in (self.owner_b, self.owner_a):
            try:
                answer = await self.api.call(
                    "POST", "/release-owner", body={"owner": owner}, within=CLEANUP_TIMEOUT
                )
            except Unreachable as exc:
                problems.append(str(exc))
                continue
            if answer.status != 200:
                problems.append(f"release-owner {owner}: {answer.describe()}")
                continue
            released += [str(g.get("key")) for g in answer.field("released") or []
                         if isinstance(g, dict)]
            cancelled += len(answer.field("cancelled") or [])
        waiter = self.waiter
        if waiter is not None:
            if not waiter.done():
                # Its request was just cancelled, so it answers soon; never wait long for it.
                await asyncio.wait([waiter], timeout=CLEANUP_TIMEOUT)
                waiter.cancel()
                await asyncio.wait([waiter], timeout=1.0)
            if waiter.done() and not waiter.cancelled():
                waiter.exception()  # retrieved, so asyncio does not log it as never retrieved
        if problems:
            print(f"cleanup incomplete: {'; '.join(problems)}; release by hand with POST "
                  f"{API}/release-owner for owners {self.owner_a} and {self.owner_b}",
                  flush=True)
        else:
            print(f"cleanup: released {len(released)} lock(s) and cancelled {cancelled} "
                  "waiting request(s) of this run", flush=True)


async def run_basic(url: str) -> int:
    """Run the basic test against the sidecar at `url`; 0 when every step passed, else 1.

    Sends `ATLANTIS_SIDECAR_API_TOKEN` (when set) as `X-Atlantis-Token`, which a sidecar with an
    `api-token` requires on acquire and release.
    """
    token = os.environ.get(TOKEN_ENV, "")
    headers = {"X-Atlantis-Token": token} if token else {}
    async with aiohttp.ClientSession(headers=headers) as session:
        return await BasicTest(Api(session, url.rstrip("/"))).run()
