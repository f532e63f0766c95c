"""The enhanced-locks HTTP API on a real server on loopback, over every backend."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sidecar.api.app import create_app
from sidecar.api.appkeys import RUNTIME
from sidecar.plugin.manager import Plugins
from sidecar.runtime import ConfigSource, Runtime
from tests.conftest import backend_settings

API = "/api/enhanced-locks"
AiohttpClient = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def make_client(
    aiohttp_client: AiohttpClient, backend_name: str, plugins: Plugins, tmp_path: Path
) -> MakeClient:
    async def make(**changes: Any) -> TestClient[Any, Any]:
        settings = backend_settings(backend_name, tmp_path / "data", **changes)
        runtime = Runtime.build(settings, plugins, ConfigSource(None, {}))
        return await aiohttp_client(create_app(runtime))

    return make


async def acquire(client: TestClient[Any, Any], **body: Any) -> tuple[int, dict[str, Any]]:
    resp = await client.post(f"{API}/acquire", json=body)
    return resp.status, await resp.json()


async def state_of(client: TestClient[Any, Any]) -> tuple[list[Any], int]:
    locks = await (await client.get(f"{API}/locks")).json()
    queue = await (await client.get(f"{API}/queue/status")).json()
    return locks["locks"], queue["depth"]


async def test_acquire_then_release_round_trip(make_client: MakeClient) -> None:
    client = await make_client()
    status, body = await acquire(client, key="ci/deploy", owner="job-1", wait="1s")
    assert status == 200
    assert body["granted"] is True and body["locks"][0]["token"] == 1
    resp = await client.post(f"{API}/release", json={"key": "ci/deploy", "owner": "job-1"})
    assert resp.status == 200
    assert (await resp.json())["released"][0]["key"] == "ci/deploy"
    assert await state_of(client) == ([], 0)


async def test_atlantis_ids_with_slashes_and_dots_work_in_the_key_parameter(
    make_client: MakeClient,
) -> None:
    client = await make_client(migration__active_system="enhanced")
    key = "atlantis:acme/infra/./default/"
    owner = {"repo": "acme/infra", "pull": 12, "user": "alice"}
    status, body = await acquire(client, key=key, owner=owner)
    assert status == 200, body
    resp = await client.get(f"{API}/lock", params={"key": key})
    data = await resp.json()
    assert data["held"] is True
    assert data["lock"]["owner"] == {
        "id": "acme/infra#12",
        "repo": "acme/infra",
        "pull": 12,
        "user": "alice",
    }


async def test_atlantis_key_still_served_by_atlantis_is_refused_with_EL006(
    make_client: MakeClient,
) -> None:
    client = await make_client()  # default: legacy, traffic-percentage 0
    status, body = await acquire(client, key="atlantis:acme/infra/./default/", owner="x")
    assert (status, body["code"]) == (409, "EL006")
    assert await state_of(client) == ([], 0)


async def test_second_owner_waits_and_is_granted_on_release(make_client: MakeClient) -> None:
    client = await make_client()
    await acquire(client, key="k", owner="a")
    waiter = asyncio.create_task(acquire(client, key="k", owner="b", wait="5s"))
    await asyncio.sleep(0.1)
    queue = await (await client.get(f"{API}/queue/status")).json()
    assert queue["depth"] == 1 and queue["by_priority"]["normal"] == 1
    await client.post(f"{API}/release", json={"key": "k", "owner": "a"})
    status, body = await asyncio.wait_for(waiter, 3)
    assert status == 200 and body["locks"][0]["token"] == 2


async def test_stay_queued_request_reports_its_position_and_can_be_cancelled(
    make_client: MakeClient,
) -> None:
    client = await make_client()
    await acquire(client, key="k", owner="a")
    status, body = await acquire(client, key="k", owner="b", wait=0, stay_queued=True)
    assert (status, body["code"], body["queued"], body["position"]) == (409, "EL002", True, 1)
    rid = body["request_id"]
    state = await (await client.get(f"{API}/requests/{rid}")).json()
    assert state["state"] == "waiting" and state["position"] == 1
    resp = await client.delete(f"{API}/requests/{rid}")
    assert resp.status == 200
    state = await (await client.get(f"{API}/requests/{rid}")).json()
    assert state["state"] == "cancelled"
    assert (await client.delete(f"{API}/requests/{rid}")).status == 404


async def test_granted_stay_queued_request_shows_its_tokens(make_client: MakeClient) -> None:
    client = await make_client()
    await acquire(client, key="k", owner="a")
    _, body = await acquire(client, key="k", owner="b", wait=0, stay_queued=True)
    await client.post(f"{API}/release", json={"key": "k", "owner": "a"})
    state = await (await client.get(f"{API}/requests/{body['request_id']}")).json()
    assert state["state"] == "granted" and state["outcome"]["tokens"] == {"k": 2}


BAD_ACQUIRES: list[tuple[str, Any]] = [
    ("not json", b"{nope"),
    ("not an object", b"[1, 2]"),
    ("no owner", {"key": "k"}),
    ("no key", {"owner": "x"}),
    ("key and keys", {"key": "k", "keys": ["k"], "owner": "x"}),
    ("key not a string", {"key": 5, "owner": "x"}),
    ("empty key", {"key": "", "owner": "x"}),
    ("key over 1 KiB", {"key": "k" * 1025, "owner": "x"}),
    ("too many keys", {"keys": [f"k{i}" for i in range(65)], "owner": "x"}),
    ("keys not a list", {"keys": "k", "owner": "x"}),
    ("unknown priority", {"key": "k", "owner": "x", "priority": "urgent"}),
    ("priority wrong type", {"key": "k", "owner": "x", "priority": 3}),
    ("negative wait", {"key": "k", "owner": "x", "wait": -1}),
    ("huge wait", {"key": "k", "owner": "x", "wait": "1000h"}),
    ("wait not a duration", {"key": "k", "owner": "x", "wait": "soon"}),
    ("zero lease", {"key": "k", "owner": "x", "lease": 0}),
    ("bool as wait", {"key": "k", "owner": "x", "wait": True}),
    ("stay_queued not bool", {"key": "k", "owner": "x", "stay_queued": "yes"}),
    ("owner wrong type", {"key": "k", "owner": 7}),
    ("owner pull not int", {"key": "k", "owner": {"repo": "a/b", "pull": "7"}}),
    ("unknown field", {"key": "k", "owner": "x", "priorty": "high"}),
]


@pytest.mark.parametrize(("case", "body"), BAD_ACQUIRES, ids=[c for c, _ in BAD_ACQUIRES])
async def test_bad_acquire_is_refused_with_EL009_and_changes_nothing(
    make_client: MakeClient, case: str, body: Any
) -> None:
    client = await make_client()
    await acquire(client, key="held", owner="someone")
    before = await state_of(client)
    if isinstance(body, bytes):
        resp = await client.post(
            f"{API}/acquire", data=body, headers={"Content-Type": "application/json"}
        )
    else:
        resp = await client.post(f"{API}/acquire", json=body)
    assert resp.status == 400, case
    assert (await resp.json())["code"] == "EL009"
    assert await state_of(client) == before


async def test_oversized_body_is_refused_with_413(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.post(f"{API}/acquire", data=b"x" * (300 * 1024))
    assert resp.status == 413
    assert (await resp.json())["code"] == "EL009"


async def test_malformed_request_id_and_unknown_route_answer_json(
    make_client: MakeClient,
) -> None:
    client = await make_client()
    resp = await client.get(f"{API}/requests/not-an-id")
    assert (resp.status, (await resp.json())["code"]) == (400, "EL009")
    resp = await client.get(f"{API}/requests/{'0' * 32}")
    assert (resp.status, (await resp.json())["code"]) == (404, "EL010")
    resp = await client.get(f"{API}/no-such-thing")
    assert (resp.status, (await resp.json())["code"]) == (404, "EL010")


async def test_releasing_someone_elses_lock_is_refused(make_client: MakeClient) -> None:
    client = await make_client()
    await acquire(client, key="k", owner="a")
    resp = await client.post(f"{API}/release", json={"key": "k", "owner": "b"})
    assert (resp.status, (await resp.json())["code"]) == (403, "EL007")
    locks, _ = await state_of(client)
    assert [lock["owner"]["id"] for lock in locks] == ["a"]


async def test_disabled_system_answers_503_and_health_says_disabled(
    make_client: MakeClient,
) -> None:
    client = await make_client(enabled=False)
    status, body = await acquire(client, key="k", owner="a")
    assert (status, body["error"]) == (503, "enhanced locking system disabled")
    health = await (await client.get(f"{API}/health")).json()
    assert health["status"] == "disabled"


async def test_api_token_guards_mutating_calls(make_client: MakeClient) -> None:
    client = await make_client(api_token="s3cret")
    status, body = await acquire(client, key="k", owner="a")
    assert (status, body["code"]) == (401, "EL007")
    resp = await client.post(
        f"{API}/acquire", json={"key": "k", "owner": "a"}, headers={"X-Atlantis-Token": "s3cret"}
    )
    assert resp.status == 200
    assert (await client.get(f"{API}/locks")).status == 200  # reads stay open, like /api/locks


async def test_admin_endpoints_need_the_admin_token(make_client: MakeClient) -> None:
    client = await make_client(admin_token="adm1n")
    await acquire(client, key="k", owner="a")
    resp = await client.post(f"{API}/admin/force-release", json={"key": "k"})
    assert (resp.status, (await resp.json())["code"]) == (401, "EL007")
    resp = await client.post(
        f"{API}/admin/force-release", json={"key": "k"}, headers={"Authorization": "Bearer wrong"}
    )
    assert resp.status == 401
    resp = await client.post(
        f"{API}/admin/force-release", json={"key": "k"}, headers={"Authorization": "Bearer adm1n"}
    )
    assert resp.status == 200
    assert await state_of(client) == ([], 0)


async def test_health_metrics_and_plugins_report(make_client: MakeClient) -> None:
    client = await make_client()
    await acquire(client, key="k", owner="a")
    health = await (await client.get(f"{API}/health")).json()
    assert health["status"] == "healthy" and health["backend"]["status"] == "ok"
    metrics = await (await client.get(f"{API}/metrics")).json()
    assert metrics["grants_total"] == 1
    assert isinstance(metrics["avg_latency_ms"], int)
    assert {
        "p95_latency_ms",
        "p99_latency_ms",
        "queue_depth",
        "timeouts_total",
        "overflows_total",
    } <= set(metrics)
    plugins = await (await client.get(f"{API}/plugins")).json()
    names = {p["name"] for p in plugins["plugins"]}
    assert "plugins.backends.sqlite" in names
    prom = await client.get("/metrics")
    assert prom.status == 200 and "atlantis_locks_total" in await prom.text()


async def test_concurrent_http_clients_never_hold_one_key_together(
    make_client: MakeClient,
) -> None:
    """Like python-redis-lock's best test: record hold intervals, none may overlap."""
    client = await make_client()
    intervals: list[tuple[float, float, int]] = []

    async def worker(n: int) -> None:
        for _ in range(5):
            status, body = await acquire(client, key="hot", owner=f"w{n}", wait="20s")
            assert status == 200, body
            start = time.monotonic()
            await asyncio.sleep(0.001)
            end = time.monotonic()
            intervals.append((start, end, body["locks"][0]["token"]))
            resp = await client.post(f"{API}/release", json={"key": "hot", "owner": f"w{n}"})
            assert resp.status == 200

    await asyncio.gather(*(worker(n) for n in range(20)))
    intervals.sort()
    assert len(intervals) == 100
    for (_, end, token), (start, _, next_token) in itertools.pairwise(intervals):
        assert end <= start, "two holders at once"
        assert next_token > token, "fencing token went back"


async def test_lock_list_filters_by_owner_and_prefix_and_pages(make_client: MakeClient) -> None:
    client = await make_client()
    for n in range(5):
        await acquire(client, key=f"team-a/{n}", owner="a")
    await acquire(client, key="team-b/0", owner="b")
    seen: list[str] = []
    after = None
    while True:
        params = {"prefix": "team-a/", "limit": "2", **({"after": after} if after else {})}
        page = await (await client.get(f"{API}/locks", params=params)).json()
        seen += [lock["key"] for lock in page["locks"]]
        after = page["next_after"]
        if after is None:
            break
    assert seen == [f"team-a/{n}" for n in range(5)]
    by_owner = await (await client.get(f"{API}/locks", params={"owner": "b"})).json()
    assert [lock["key"] for lock in by_owner["locks"]] == ["team-b/0"]
    bad = await client.get(f"{API}/locks", params={"limit": "0"})
    assert (bad.status, (await bad.json())["code"]) == (400, "EL009")


@pytest.mark.parametrize("zero", [0, 0.0, "0", "0s", "0ms"])
async def test_any_spelling_of_a_zero_wait_means_try_once(
    make_client: MakeClient, zero: object
) -> None:
    client = await make_client()
    await acquire(client, key="k", owner="a")
    status, body = await acquire(client, key="k", owner="b", wait=zero)
    assert (status, body["code"]) == (409, "EL002")
    assert body["holders"][0]["owner"]["id"] == "a"


async def test_a_disabled_sidecar_can_be_reloaded_back_on(
    make_client: MakeClient, tmp_path: Path
) -> None:
    client = await make_client(enabled=False, admin_token="adm")
    runtime = client.app[RUNTIME]
    path = tmp_path / "on.toml"
    path.write_text('[enhanced-locking]\nenabled = true\nadmin-token = "adm"\nbackend = "memory"\n')
    runtime.source = ConfigSource(path, {})
    resp = await client.post(f"{API}/config/reload", headers={"Authorization": "Bearer adm"})
    assert resp.status == 200, await resp.text()
    status, _ = await acquire(client, key="k", owner="a")
    assert status == 200
