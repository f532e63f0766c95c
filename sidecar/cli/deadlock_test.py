"""`atlantis-sidecar locks deadlock-test --users=5 --resources=3`: real deadlocks, resolved.

Through a running sidecar's API, as real clients would: the first min(users, resources) users each
take one resource, then each asks for the next one round the ring, which closes a wait-for cycle.
Users beyond the ring queue for a resource too, outside the cycle. The detector must pick exactly
one victim, whose waiting call fails with EL004; the victim then gives up what it holds (what a
well-behaved client does on EL004), and every other user must be granted. It prints the time from
the cycle closing to the victim's EL004, and exits 0 only when all of that happened.

Keys and owners carry `deadlock-test:` and a random run id; everything taken is released at the
end, also on failure. Set `ATLANTIS_SIDECAR_API_TOKEN` when the sidecar has an api-token.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import aiohttp

from sidecar.cli.selftest import TOKEN_ENV, Answer, Api, Unreachable

WAIT = "30s"
VISIBLE_WITHIN = 5.0
RESOLVED_WITHIN = 10.0


class Failed(Exception):
    pass


class DeadlockTest:
    def __init__(self, api: Api, users: int, resources: int) -> None:
        run = uuid.uuid4().hex[:12]
        self.api = api
        self.users = [f"deadlock-test:{run}:user-{i}" for i in range(users)]
        self.resources = [f"deadlock-test:{run}/resource-{i}" for i in range(resources)]
        self.ring = min(users, resources)

    async def _acquire(self, user: str, key: str, wait: str) -> Answer:
        return await self.api.call(
            "POST", "/acquire", body={"key": key, "owner": user, "wait": wait}, within=60
        )

    async def _use(self, user: str, key: str) -> Answer:
        """Wait for `key`; once granted, finish at once and free everything (a short job)."""
        answer = await self._acquire(user, key, WAIT)
        if answer.status == 200:
            await self.api.call("POST", "/release-owner", body={"owner": user})
        return answer

    async def _waiting_on(self, key: str, user: str) -> None:
        deadline = time.monotonic() + VISIBLE_WITHIN
        while time.monotonic() < deadline:
            answer = await self.api.call("GET", "/lock", params={"key": key})
            waiting = answer.field("waiting") or []
            if any(w.get("owner", {}).get("id") == user for w in waiting):
                return
            await asyncio.sleep(0.01)
        raise Failed(f"{user} never showed up waiting for {key}")

    async def run(self) -> int:
        ring = self.users[: self.ring]
        for user, key in zip(ring, self.resources, strict=False):
            answer = await self._acquire(user, key, "0")
            if answer.status != 200:
                raise Failed(f"{user} could not take {key}: {answer.describe()}")
        print(f"PASS setup: {self.ring} users each hold one of {len(self.resources)} resources")
        calls: dict[str, asyncio.Task[Answer]] = {}
        for extra, user in enumerate(self.users[self.ring :]):
            key = self.resources[extra % len(self.resources)]
            calls[user] = asyncio.create_task(self._use(user, key))
            await self._waiting_on(key, user)
        for i, user in enumerate(ring[:-1]):
            calls[user] = asyncio.create_task(self._use(user, self.resources[i + 1]))
            await self._waiting_on(self.resources[i + 1], user)
        closed_at = time.perf_counter()
        calls[ring[-1]] = asyncio.create_task(self._use(ring[-1], self.resources[0]))
        victim = await self._first_victim(calls)
        elapsed_ms = (time.perf_counter() - closed_at) * 1000
        print(
            f"PASS detected: cycle of {self.ring} users resolved in {elapsed_ms:.1f} ms, "
            f"victim {victim}"
        )
        await self.api.call("POST", "/release-owner", body={"owner": victim})
        outcomes = {
            user: await asyncio.wait_for(task, RESOLVED_WITHIN)
            for user, task in calls.items()
            if user != victim
        }
        return self._check_rest(outcomes)

    async def _first_victim(self, calls: dict[str, asyncio.Task[Answer]]) -> str:
        deadline = time.monotonic() + RESOLVED_WITHIN
        while time.monotonic() < deadline:
            for user, task in calls.items():
                if task.done():
                    answer = task.result()
                    if answer.field("code") == "EL004":
                        return user
                    if answer.status != 200:
                        raise Failed(f"{user} got {answer.describe()} instead of waiting")
            await asyncio.sleep(0.001)
        raise Failed(f"no deadlock victim within {RESOLVED_WITHIN:g}s: detection is not working")

    def _check_rest(self, outcomes: dict[str, Answer]) -> int:
        failed = {u: a for u, a in outcomes.items() if a.status != 200}
        victims = [u for u, a in outcomes.items() if a.field("code") == "EL004"]
        if victims:
            print(f"FAIL resolved: more than one victim for one cycle: {victims}")
            return 1
        if failed:
            for user, answer in failed.items():
                print(f"FAIL resolved: {user}: {answer.describe()}")
            return 1
        print(f"PASS resolved: the other {len(outcomes)} users were granted")
        return 0

    async def cleanup(self) -> None:
        for user in self.users:
            try:
                await self.api.call("POST", "/release-owner", body={"owner": user}, within=5)
            except Unreachable:
                return


async def run_deadlock_test(url: str, users: int, resources: int) -> int:
    if users < 2 or resources < 2:
        print("FAIL setup: a deadlock needs at least 2 users and 2 resources")
        return 2
    token = os.environ.get(TOKEN_ENV, "")
    headers = {"X-Atlantis-Token": token} if token else {}
    async with aiohttp.ClientSession(headers=headers) as session:
        test = DeadlockTest(Api(session, url.rstrip("/")), users, resources)
        try:
            return await test.run()
        except (Failed, Unreachable, TimeoutError) as exc:
            print(f"FAIL {exc or type(exc).__name__}")
            return 1
        finally:
            await test.cleanup()
