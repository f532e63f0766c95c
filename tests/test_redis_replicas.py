"""Several sidecar replicas on one Redis: three real `serve` subprocesses, many HTTP clients.

The safety checks are the strongest we can make from outside: every client runs in this one
process and enters a shared "resource" when its acquire answers 200 and leaves it before it
sends its release. The resource refuses a second holder of a key and a fencing token that is
not larger than the last one it saw, so an overlap of two grants of one key, at any replica,
fails the test (python-redis-lock's best test, over HTTP and across replicas).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.processes import Sidecar
from tests.redis_servers import Deployment, sidecar_env
from tests.sidecar_http import API, call

KEYS = ("deploy/prod", "deploy/stage", "network/state")
PRIORITIES = ("low", "normal", "high", "critical")
RANK = {p: i for i, p in enumerate(PRIORITIES)}


@contextlib.contextmanager
def replicas(
    count: int, deployment: Deployment, tmp_path: Path, **settings: str
) -> Iterator[list[Sidecar]]:
    env = sidecar_env(deployment, f"replicas:{tmp_path.name}:", **settings)
    started = [
        Sidecar(["--data-dir", str(tmp_path / f"data{n}")], tmp_path / f"replica{n}.log", env)
        for n in range(count)
    ]
    try:
        for sidecar in started:
            sidecar.wait_healthy()
        yield started
    finally:
        for sidecar in started:
            sidecar.stop()


@dataclass
class Resource:
    """What the locks protect: at most one holder per key, fencing tokens only ever grow."""

    holders: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    holds: dict[str, list[tuple[float, float, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    def enter(self, key: str, owner: str, token: int) -> float:
        if key in self.holders:
            self.violations.append(f"{owner} got {key} while {self.holders[key]} held it")
        if token <= self.tokens.get(key, 0):
            self.violations.append(f"{owner} got {key} with stale token {token}")
        self.tokens[key] = token
        self.holders[key] = owner
        return time.monotonic()

    def leave(self, key: str, owner: str, entered: float, token: int) -> None:
        self.holds[key].append((entered, time.monotonic(), token))
        if self.holders.get(key) == owner:
            del self.holders[key]


@dataclass
class Run:
    resource: Resource = field(default_factory=Resource)
    outcomes: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    grants_after: Counter[str] = field(default_factory=Counter)


async def client(
    n: int,
    session: aiohttp.ClientSession,
    urls: list[str],
    run: Run,
    stop_at: float,
    *,
    waits: tuple[float, float] = (0.3, 2.5),
    lease: str | None = None,
    mark: float | None = None,
) -> None:
    """One client: acquire a random key at a random priority, hold briefly, release.

    It always asks its own replica (`urls[n % len(urls)]`) and stops when that one is gone; it
    releases through any replica, its own last.
    """
    rng = random.Random(n)
    home = urls[n % len(urls)]
    owner = f"client-{n}-of-{home.rsplit(':', 1)[1]}"
    while time.monotonic() < stop_at:
        key = rng.choice(KEYS)
        body: dict[str, Any] = {
            "key": key,
            "owner": owner,
            "priority": rng.choice(PRIORITIES),
            "wait": round(rng.uniform(*waits), 2),
        }
        if lease is not None:
            body["lease"] = lease
        try:
            async with session.post(home + API + "/acquire", json=body) as resp:
                status, answer = resp.status, await resp.json()
        except aiohttp.ClientError:
            run.outcomes["replica gone"] += 1
            return  # this client's replica died
        code = answer.get("code", "")
        run.outcomes[f"{status} {code}".strip()] += 1
        if status != 200:
            if (status, code) not in ((408, "EL002"), (429, "EL005")):
                run.unexpected.append(f"{status} {answer}")
            await asyncio.sleep(rng.uniform(0, 0.02))
            continue
        grant = answer["locks"][0]
        entered = run.resource.enter(key, owner, grant["token"])
        if mark is not None and entered > mark:
            run.grants_after[key] += 1
        await asyncio.sleep(rng.uniform(0, 0.01))
        run.resource.leave(key, owner, entered, grant["token"])
        for releaser in dict.fromkeys([rng.choice(urls), *rng.sample(urls, len(urls))]):
            try:
                async with session.post(
                    releaser + API + "/release", json={"key": key, "owner": owner}
                ) as resp:
                    if resp.status != 200:
                        run.unexpected.append(f"release {resp.status} {await resp.text()}")
                break
            except aiohttp.ClientError:
                continue  # that replica is gone: another one releases it
        else:
            run.unexpected.append(f"no replica could release {key} of {owner}")


async def queue_depth_reaches(url: str, depth: int) -> None:
    """Until `depth` requests wait (so the next one is surely queued behind them)."""
    for _ in range(500):
        if call(url, "GET", "/queue/status")[1]["depth"] >= depth:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"queue never reached depth {depth}")


def assert_no_overlap(resource: Resource) -> None:
    assert resource.violations == []
    for key, holds in resource.holds.items():
        holds.sort()
        for (_, end, token), (start, _, later) in itertools.pairwise(holds):
            assert end <= start, f"two holds of {key} overlap"
            assert later > token, f"tokens of {key} went back: {token} then {later}"


async def test_three_replicas_and_64_clients_never_grant_one_key_twice(
    redis_standalone: Deployment, tmp_path: Path
) -> None:
    with replicas(3, redis_standalone, tmp_path, QUEUE_CONFIG_MAX_QUEUE_SIZE="40") as sidecars:
        urls = [s.url for s in sidecars]
        run = Run()
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            stop_at = time.monotonic() + 8.0
            await asyncio.gather(*(client(n, session, urls, run, stop_at) for n in range(64)))
            for url in urls:
                _, queue = call(url, "GET", "/queue/status")
                assert queue["depth"] == 0
                _, locks = call(url, "GET", "/locks")
                assert locks["locks"] == []
    assert run.unexpected == []
    assert_no_overlap(run.resource)
    granted = run.outcomes["200"]
    # Every request ended one of these ways; none was lost or answered otherwise.
    assert set(run.outcomes) <= {"200", "408 EL002", "429 EL005"}
    assert granted > 100 and run.outcomes["408 EL002"] > 0
    assert sum(len(h) for h in run.resource.holds.values()) == granted


async def test_queue_order_across_replicas_follows_priority_then_arrival(
    redis_standalone: Deployment, tmp_path: Path
) -> None:
    rng = random.Random(7)
    with replicas(3, redis_standalone, tmp_path) as sidecars:
        urls = [s.url for s in sidecars]
        status, _ = call(urls[0], "POST", "/acquire", {"key": "k", "owner": "first"})
        assert status == 200
        async with aiohttp.ClientSession() as session:

            async def wait_for_lock(owner: str, priority: str, url: str) -> str:
                body = {"key": "k", "owner": owner, "priority": priority, "wait": 60}
                async with session.post(url + API + "/acquire", json=body) as resp:
                    assert resp.status == 200, await resp.text()
                    return owner

            waiting: dict[asyncio.Task[str], tuple[int, str]] = {}
            for arrival in range(12):
                owner, priority = f"w{arrival}", rng.choice(PRIORITIES)
                url = urls[arrival % 3]
                task = asyncio.create_task(wait_for_lock(owner, priority, url))
                waiting[task] = (arrival, priority)
                await queue_depth_reaches(urls[(arrival + 1) % 3], arrival + 1)
            expected = [
                f"w{arrival}"
                for arrival, priority in sorted(waiting.values(), key=lambda w: (-RANK[w[1]], w[0]))
            ]
            _, listed = call(urls[1], "GET", "/lock?key=k")
            assert [w["owner"]["id"] for w in listed["waiting"]] == expected

            order, current = [], "first"
            pending = set(waiting)
            while pending:
                status, _ = call(
                    rng.choice(urls), "POST", "/release", {"key": "k", "owner": current}
                )
                assert status == 200
                done, pending = await asyncio.wait(
                    pending, timeout=10, return_when=asyncio.FIRST_COMPLETED
                )
                assert len(done) == 1, "a release woke no waiter, or more than one"
                current = done.pop().result()
                order.append(current)
    assert order == expected


async def test_killing_one_replica_mid_run_leaves_the_others_serving(
    redis_standalone: Deployment, tmp_path: Path
) -> None:
    with replicas(3, redis_standalone, tmp_path) as sidecars:
        urls = [s.url for s in sidecars]
        victim = sidecars[2]
        run = Run()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            start = time.monotonic()
            killed_at = start + 2.0
            survivors_until = start + 14.0
            clients = [
                asyncio.create_task(
                    client(
                        n,
                        session,
                        urls,
                        run,
                        survivors_until,
                        # The victim's callers wait long: at the kill their requests are still
                        # queued, get handed on, are never claimed and must be revoked. Their
                        # leases free what the victim granted but never got to answer.
                        waits=(20.0, 20.0) if n % 3 == 2 else (0.3, 2.5),
                        lease="8s" if n % 3 == 2 else None,
                        mark=killed_at + 9.0,
                    )
                )
                for n in range(48)
            ]
            await asyncio.sleep(killed_at - time.monotonic())
            victim.kill9()
            await asyncio.gather(*clients)
            deadline = time.monotonic() + 10
            while True:
                _, locks = call(urls[0], "GET", "/locks")
                _, queue = call(urls[1], "GET", "/queue/status")
                if (locks["locks"], queue["depth"]) == ([], 0) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert locks["locks"] == [] and queue["depth"] == 0
        survivors = sidecars[0].output() + sidecars[1].output()
    assert run.unexpected == []
    assert_no_overlap(run.resource)
    assert run.outcomes["replica gone"] == 16  # each of the victim's clients, once
    assert "did not claim a grant" in survivors
    # Well after the kill, the survivors still hand out every key.
    assert set(run.grants_after) == set(KEYS), run.grants_after
