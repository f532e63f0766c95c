"""Atlantis's lock routes through the sidecar: indistinguishable from Atlantis for legacy keys,
the same shapes, texts and codes from the engine for enhanced keys."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, urljoin

import pytest

from sidecar.routing.keys import bucket
from tests import raw_http
from tests.fake_atlantis import FakeAtlantis, FakeLock
from tests.processes import free_port
from tests.proxy_stack import API, Stack, proxy_stack

ALICE = "Basic YWxpY2U6czNjcjN0"  # alice:s3cr3t
VPC = "acme/infra/modules/vpc/default/vpc"  # repo acme/infra, path modules/vpc, project vpc
DNS = "gitlab-group/sub/dns/./production/"  # a GitLab subgroup repo, root path, no project
ATLANTIS_FIELDS = [
    "Name",
    "ProjectName",
    "ProjectRepo",
    "ProjectRepoPath",
    "PullID",
    "PullURL",
    "User",
    "Workspace",
    "Time",
]
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)")


def once(lock_id: str) -> str:
    return quote_plus(lock_id, safe="")


def twice(lock_id: str) -> str:
    return once(once(lock_id))


def pull(n: int, user: str = "bob", repo: str = "acme/infra") -> dict[str, Any]:
    return {"repo": repo, "pull": n, "user": user, "url": f"https://github.com/{repo}/pull/{n}"}


async def engine_lock(s: Stack, lock_id: str) -> dict[str, Any]:
    async with s.http.get(f"{s.url}{API}/lock", params={"key": "atlantis:" + lock_id}) as resp:
        data: dict[str, Any] = await resp.json()
        return data


async def locks_listing(s: Stack) -> tuple[raw_http.RawResponse, list[dict[str, Any]]]:
    answer = await raw_http.request(s.port, "GET", "/api/locks")
    return answer, json.loads(answer.body)["Locks"] or []


# -- legacy keys: Atlantis's own answers, byte for byte ----------------------------------------

LEGACY_SCENARIO: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("GET", "/api/locks", []),
    ("GET", f"/lock?id={twice(VPC)}", []),  # the UI's double-encoded link
    ("GET", f"/lock?id={once(VPC)}", []),
    ("GET", f"/lock?id={VPC}", []),
    ("GET", f"/lock?id={twice(DNS)}&x=1", []),
    ("GET", "/lock?id=acme%252Finfra%252Fnope%252Fdefault%252F", []),  # 404 No lock found
    ("GET", "/lock?id=acme%252Fthree%252Fparts", []),  # 500 invalid key format
    ("GET", "/lock?id=bad%25zz", []),  # 400 Invalid lock id: invalid URL escape
    ("GET", "/lock", []),  # 404 page not found
    ("POST", f"/lock?id={twice(VPC)}", []),  # 405, empty body
    ("HEAD", f"/lock?id={twice(VPC)}", []),  # 405
    ("GET", f"/locks?id={once(VPC)}", []),  # 405
    ("DELETE", f"/locks?id={once(VPC)}", []),  # 200 Deleted lock id
    ("DELETE", f"/locks?id={twice(VPC)}", []),  # 404 now
    ("DELETE", f"/locks?id={DNS}", []),  # raw id
    ("DELETE", "/locks?id=", []),  # 400 No lock id in request
    ("DELETE", "/locks?id=a/b", []),  # 500 deleting lock failed
    ("DELETE", "/locks", []),  # 404 page not found
    ("POST", "/apply/lock", []),  # 200
    ("POST", "/apply/lock", []),  # 500 lock already exists
    ("GET", "/apply/lock", []),  # 405
    ("DELETE", "/apply/unlock", []),  # 200
    ("DELETE", "/apply/unlock", []),  # 500 no lock exists
    ("GET", "/api/locks", []),  # {"Locks":null}
    ("HEAD", "/api/locks", []),  # 405
]


def seed(fake: FakeAtlantis, locks: list[FakeLock]) -> None:
    fake.reset()
    for lock in locks:
        fake.locks[lock.id] = FakeLock(**{**lock.__dict__})


def normalised(answer: raw_http.RawResponse) -> tuple[str, list[tuple[str, str]], bytes]:
    status, headers, body = answer.comparable()
    body = re.sub(rb"acquired on \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", b"acquired on <time>", body)
    return status, headers, body


@pytest.mark.parametrize(
    "settings",
    [
        {},  # traffic-percentage 0: every key is Atlantis's
        {"enabled": False},  # rollback: a pure proxy
        # Some keys are the engine's, but not these (buckets 18, 22, 94 and 2): the routes
        # decode each id and route it, and still pass Atlantis's answers through.
        {"migration__traffic_percentage": 2},
    ],
    ids=["traffic-0", "disabled", "traffic-2"],
)
async def test_every_lock_route_for_a_legacy_key_is_atlantis_own_answer(
    tmp_path: Path, settings: dict[str, Any]
) -> None:
    for lock_id in (VPC, DNS, "apply", "acme/infra/nope/default/"):
        assert bucket(lock_id) >= 2
    async with proxy_stack(tmp_path, **settings) as s:
        locks = [
            s.fake.add_lock("acme/infra", "modules/vpc", "default", "vpc", pull=3),
            s.fake.add_lock("gitlab-group/sub/dns", ".", "production", "", pull=9, user="carol"),
        ]
        direct = []
        for method, target, headers in LEGACY_SCENARIO:
            direct.append(await raw_http.request(s.fake.port, method, target, headers=headers))
        seed(s.fake, locks)
        for (method, target, headers), expected in zip(LEGACY_SCENARIO, direct, strict=True):
            proxied = await raw_http.request(s.port, method, target, headers=headers)
            assert normalised(proxied) == normalised(expected), f"{method} {target}"
    statuses = [a.status for a in direct]
    assert statuses == [200, 200, 200, 200, 200, 404, 500, 400, 404, 405, 405, 405, 200, 404,
                        200, 400, 500, 404, 200, 500, 405, 200, 500, 200, 405]  # fmt: skip
    assert direct[-2].body == b'{"Locks":null}'
    assert direct[7].body == b'Invalid lock id: invalid URL escape "%zz"\n'


# -- enhanced keys: the engine answers in Atlantis's shapes -------------------------------------


async def test_api_locks_lists_engine_grants_in_atlantis_exact_shape(tmp_path: Path) -> None:
    async with proxy_stack(tmp_path, migration__traffic_percentage=100) as s:
        theirs = s.fake.add_lock("acme/web", ".", "default", "", pull=5, user="dave")
        assert (await s.acquire("atlantis:" + VPC, pull(7)))[0] == 200
        assert (await s.acquire("atlantis:" + DNS, pull(9, "erin", "gitlab-group/sub/dns")))[
            0
        ] == 200
        assert (await s.acquire("atlantis:apply", "ci-job"))[0] == 200  # not a project lock
        answer, items = await locks_listing(s)
    assert answer.status == 200
    assert answer.header("Content-Type") == "application/json; charset=utf-8"
    assert answer.body.startswith(b'{"Locks":[{"Name":')  # Go's compact encoding
    assert items[0] == theirs.detail()  # Atlantis's own item, untouched
    vpc, dns = items[1], items[2]
    assert list(vpc) == ATLANTIS_FIELDS
    assert {k: v for k, v in vpc.items() if k != "Time"} == {
        "Name": VPC,
        "ProjectName": "vpc",
        "ProjectRepo": "acme/infra",
        "ProjectRepoPath": "modules/vpc",
        "PullID": "7",  # a string, as Atlantis's
        "PullURL": "https://github.com/acme/infra/pull/7",
        "User": "bob",
        "Workspace": "default",
    }
    assert RFC3339.fullmatch(vpc["Time"])
    assert (dns["ProjectRepo"], dns["ProjectRepoPath"], dns["Workspace"], dns["ProjectName"]) == (
        "gitlab-group/sub/dns",
        ".",
        "production",
        "",
    )
    assert len(items) == 3


async def test_api_locks_is_null_when_nobody_holds_anything(tmp_path: Path) -> None:
    async with proxy_stack(tmp_path, migration__active_system="enhanced") as s:
        answer, _ = await locks_listing(s)
    assert (answer.status, answer.body) == (200, b'{"Locks":null}')


async def test_a_key_both_hold_for_different_owners_lists_the_engine_grant_logs_EL006_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with proxy_stack(tmp_path, migration__traffic_percentage=100) as s:
        s.fake.add_lock("acme/infra", "modules/vpc", "default", "vpc", pull=1, user="alice")
        assert (await s.acquire("atlantis:" + VPC, pull(2)))[0] == 200
        _, first = await locks_listing(s)
        _, second = await locks_listing(s)
        counted = (await s.metrics())["divergences_total"]
    assert [i["PullID"] for i in first] == ["2"] and first == second
    lines = [r.getMessage() for r in caplog.records if "EL006" in r.getMessage()]
    assert len(lines) == 1
    assert "acme/infra#1" in lines[0] and "acme/infra#2" in lines[0]
    assert counted == 1


async def test_lock_page_of_an_engine_held_key_shows_holder_queue_and_token(
    tmp_path: Path,
) -> None:
    async with proxy_stack(tmp_path, migration__traffic_percentage=100) as s:
        await s.acquire("atlantis:" + VPC, pull(7))
        status, body = await s.acquire(
            "atlantis:" + VPC, pull(8, "frank"), stay_queued=True, queue_timeout="1m"
        )
        assert status == 409 and body["queued"] is True
        pages = [
            await raw_http.request(s.port, "GET", f"/lock?id={encoded}")
            for encoded in (twice(VPC), once(VPC), VPC)
        ]
        missing = await raw_http.request(s.port, "GET", f"/lock?id={twice(DNS)}")
    page = pages[0]
    assert page.status == 200
    assert page.header("Content-Type") == "text/html; charset=utf-8"
    html = page.body.decode()
    for shown in [
        VPC,
        "Repo Owner</dt><dd><code>acme</code>",
        "Repo Name</dt><dd><code>infra</code>",
        'href="https://github.com/acme/infra/pull/7"',
        "Locked By</dt><dd><code>bob</code>",
        "Workspace</dt><dd><code>default</code>",
        "Fencing Token</dt><dd><code>1</code>",
        "<td>1</td><td><code>acme/infra#8</code></td><td>normal</td>",
        "Discard Plan &amp; Unlock",
    ]:
        assert shown in html
    assert [p.status for p in pages] == [200, 200, 200]  # raw, single- and double-encoded ids
    # An enhanced key the engine does not hold: Atlantis's own 404.
    assert (missing.status, missing.body) == (404, f"No lock found at id '{DNS}'\n".encode())


async def test_discard_button_releases_in_the_engine_hands_on_and_tells_atlantis(
    tmp_path: Path,
) -> None:
    async with proxy_stack(tmp_path, migration__traffic_percentage=100) as s:
        s.fake.add_lock("acme/infra", "modules/vpc", "default", "vpc", pull=7, user="bob")
        await s.acquire("atlantis:" + VPC, pull(7))
        await s.acquire("atlantis:" + VPC, pull(8, "frank"), stay_queued=True, queue_timeout="1m")
        page_url = f"/lock?id={twice(VPC)}"
        page = await raw_http.request(s.port, "GET", page_url)
        relative = re.search(r'data-unlock-url="([^"]+)"', page.body.decode())
        assert relative is not None
        unlock = urljoin(page_url, relative.group(1).replace("&amp;", "&"))
        assert unlock == f"/locks?id={once(VPC)}"  # what Atlantis's own button sends
        deleted = await raw_http.request(s.port, "DELETE", unlock)
        after = await engine_lock(s, VPC)
    assert (deleted.status, deleted.body) == (200, f"Deleted lock id '{VPC}'\n".encode())
    assert after["lock"]["owner"]["id"] == "acme/infra#8"  # handed to the next waiter
    assert after["lock"]["token"] == 2
    assert ("DELETE", unlock) in [(r.method, r.raw_path) for r in s.fake.seen]
    assert s.fake.comments == [f"acme/infra#7: locks and plans deleted for {VPC}"]


@pytest.mark.parametrize("encoding", ["raw", "once", "twice"])
async def test_delete_of_an_engine_held_key_takes_every_id_encoding_atlantis_takes(
    tmp_path: Path, encoding: str
) -> None:
    encoded = {"raw": DNS, "once": once(DNS), "twice": twice(DNS)}[encoding]
    async with proxy_stack(tmp_path, migration__active_system="enhanced") as s:
        await s.acquire("atlantis:" + DNS, pull(4, repo="gitlab-group/sub/dns"))
        deleted = await raw_http.request(s.port, "DELETE", f"/locks?id={encoded}")
        again = await raw_http.request(s.port, "DELETE", f"/locks?id={encoded}")
        held = (await engine_lock(s, DNS))["held"]
    # Atlantis held no lock, so its 404 to the forwarded DELETE is fine: the engine's was deleted.
    assert (deleted.status, deleted.body) == (200, f"Deleted lock id '{DNS}'\n".encode())
    assert held is False
    # Nobody holds it any more: Atlantis's own answer.
    assert (again.status, again.body) == (404, f"No lock found at id '{DNS}'\n".encode())


async def test_global_apply_lock_held_by_the_engine_keeps_atlantis_texts_and_codes(
    tmp_path: Path,
) -> None:
    async with proxy_stack(tmp_path, migration__active_system="enhanced") as s:
        answers = [
            await raw_http.request(s.port, method, path)
            for method, path in [
                ("POST", "/apply/lock"),
                ("POST", "/apply/lock"),
                ("DELETE", "/apply/unlock"),
                ("DELETE", "/apply/unlock"),
            ]
        ]
        atlantis_after = s.fake.apply_lock_set
        s.fake.apply_lock_set = None
        # A CI job holds the apply lock through the enhanced API: the UI cannot take it too.
        assert (await s.acquire("atlantis:apply", "release-train"))[0] == 200
        taken = await raw_http.request(s.port, "POST", "/apply/lock")
        in_engine = await engine_lock(s, "apply")  # key atlantis:apply
    assert answers[0].status == 200
    assert re.fullmatch(
        rb"Apply Lock is acquired on \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\n", answers[0].body
    )
    assert (answers[1].status, answers[1].body) == (
        500,
        b"creating apply lock failed with: db transaction failed: lock already exists\n",
    )
    assert (answers[2].status, answers[2].body) == (200, b"Deleted apply lock\n")
    assert (answers[3].status, answers[3].body) == (
        500,
        b"deleting apply lock failed with: db transaction failed: no lock exists\n",
    )
    assert atlantis_after is None  # Atlantis was told both times
    assert taken.status == 500
    assert in_engine["lock"]["owner"]["id"] == "release-train"


async def test_engine_served_lock_routes_stay_behind_atlantis_basic_auth(tmp_path: Path) -> None:
    fake = FakeAtlantis(basic_auth=("alice", "s3cr3t"))
    async with proxy_stack(tmp_path, fake=fake, migration__traffic_percentage=100) as s:
        await s.acquire("atlantis:" + VPC, pull(7))
        page = await raw_http.request(s.port, "GET", f"/lock?id={twice(VPC)}")
        delete = await raw_http.request(s.port, "DELETE", f"/locks?id={once(VPC)}")
        still_held = (await engine_lock(s, VPC))["held"]
        apply = await raw_http.request(s.port, "POST", "/apply/lock")
        page_ok = await raw_http.request(
            s.port, "GET", f"/lock?id={twice(VPC)}", headers=[("Authorization", ALICE)]
        )
        delete_ok = await raw_http.request(
            s.port, "DELETE", f"/locks?id={once(VPC)}", headers=[("Authorization", ALICE)]
        )
    for refused in (page, delete, apply):
        assert refused.status == 401
        assert refused.header("WWW-Authenticate") == 'Basic realm="restricted", charset="UTF-8"'
        assert refused.body == b"Unauthorized\n"
    assert still_held is True
    assert page_ok.status == 200 and VPC in page_ok.body.decode()
    assert delete_ok.status == 200


async def test_disabled_passes_every_lock_route_through_and_deletes_no_engine_lock(
    tmp_path: Path,
) -> None:
    async with proxy_stack(tmp_path, migration__traffic_percentage=100) as s:
        await s.acquire("atlantis:" + VPC, pull(7))
        await s.acquire("atlantis:apply", "release-train")
        s.reload(enabled=False)
        listing = await raw_http.request(s.port, "GET", "/api/locks")
        page = await raw_http.request(s.port, "GET", f"/lock?id={twice(VPC)}")
        delete = await raw_http.request(s.port, "DELETE", f"/locks?id={once(VPC)}")
        apply = await raw_http.request(s.port, "POST", "/apply/lock")
        s.reload(enabled=True)
        held = (await engine_lock(s, VPC))["held"], (await engine_lock(s, "apply"))["held"]
        back = await raw_http.request(s.port, "GET", f"/lock?id={twice(VPC)}")
    assert listing.body == b'{"Locks":null}'  # Atlantis's own (empty) listing
    assert page.status == 404 and delete.status == 404  # Atlantis's answers
    assert apply.status == 200 and s.fake.apply_lock_set is not None  # Atlantis's apply lock
    assert held == (True, True)  # the rollback deleted nothing in the engine
    assert back.status == 200 and b"Fencing Token" in back.body


async def test_legacy_health_reports_atlantis_reachability_even_when_disabled(
    tmp_path: Path,
) -> None:
    async with proxy_stack(tmp_path, enabled=False) as s:
        async with s.http.get(f"{s.url}/api/locks/health") as resp:
            healthy = (resp.status, await resp.json())
        s.fake.ready = False
        async with s.http.get(f"{s.url}/api/locks/health") as resp:
            not_ready = (resp.status, await resp.json())
    nowhere = f"http://127.0.0.1:{free_port()}"
    async with (
        proxy_stack(tmp_path, upstream=nowhere) as s,
        s.http.get(f"{s.url}/api/locks/health") as resp,
    ):
        down = (resp.status, await resp.json())
    assert healthy[0] == 200 and healthy[1]["status"] == "healthy"
    assert healthy[1]["legacy"]["healthz"]["status_code"] == 200
    assert healthy[1]["legacy"]["healthz"]["latency_ms"] >= 0
    assert (
        healthy[1]["lock_routes"] == "atlantis"
        and healthy[1]["enhanced_locking"]["enabled"] is False
    )
    assert not_ready[0] == 503 and not_ready[1]["legacy"]["readyz"]["status_code"] == 503
    assert down[0] == 503 and down[1]["legacy"]["healthz"]["reachable"] is False


async def test_no_answer_or_log_line_carries_atlantis_clone_url_tokens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bodies = []
    async with proxy_stack(tmp_path, migration__traffic_percentage=100) as s:
        s.fake.add_lock("acme/infra", "modules/vpc", "default", "vpc", pull=1)
        s.fake.add_lock("acme/web", ".", "default", "", pull=2)
        await s.acquire("atlantis:" + VPC, pull(3))  # a divergence, logged
        await s.acquire("atlantis:" + DNS, pull(4, repo="gitlab-group/sub/dns"))
        for method, target in [
            ("GET", "/api/locks"),
            ("GET", f"/lock?id={twice(VPC)}"),
            ("GET", "/lock?id=" + twice("acme/web/./default/")),
            ("DELETE", f"/locks?id={once(VPC)}"),
            ("GET", "/"),
        ]:
            bodies.append((await raw_http.request(s.port, method, target)).body)
    assert all(b"ghs_FAKETOKEN" not in body for body in bodies)
    assert "ghs_FAKETOKEN" not in caplog.text


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://x-access-token:ghs_secret@github.com/acme/infra/pull/1", "credentials"),
        ("javascript:alert(1)", "http:// or https://"),
        ("", "1 to 2048 characters"),
        (7, "1 to 2048 characters"),
    ],
)
async def test_a_pull_request_url_that_is_not_a_plain_web_link_is_refused(
    tmp_path: Path, url: object, message: str
) -> None:
    async with proxy_stack(tmp_path) as s:
        status, body = await s.acquire("ci/deploy", {"repo": "acme/infra", "pull": 1, "url": url})
    assert status == 400 and body["code"] == "EL009"
    assert message in body["error"] and "ghs_secret" not in json.dumps(body)
