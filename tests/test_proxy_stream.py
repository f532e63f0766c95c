"""The transparent proxy: what Atlantis and its callers see must be what they sent each other.

Real servers on 127.0.0.1: the fake Atlantis and the sidecar's app; the wire-level checks use a
raw socket client (tests/raw_http.py) so nothing in between normalises the bytes.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar import config
from sidecar.config import Settings
from sidecar.proxy.upstream import classify, target
from tests import raw_http
from tests.conftest import settings_with
from tests.fake_atlantis import FakeAtlantis, blob_bytes
from tests.processes import free_port
from tests.proxy_stack import API, proxy_stack

ODD_TARGETS = [
    # Atlantis's double-encoded lock link: `%252F` must not become `%2F`.
    "/_test/echo/lock?id=owner%252Frepo%252F.%252Fdefault%252F",
    # `+`, lower-case escapes, an invalid escape, empty pairs and `;` exactly as sent.
    "/_test/echo/q?x=1+2&y=%7e&z=%zz&&w;v=%2B",
    # Dot segments, doubled and encoded slashes in the path are not normalised. (A bare `?`
    # with nothing after it is the one thing not kept: yarl drops it, and Go's RawQuery is ""
    # either way.)
    "/_test/echo/a%2Fb/../c//d/./e",
    "/_test/echo/%E2%9C%93?utf8=%E2%9C%93",
]


def json_of(response: raw_http.RawResponse) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(response.body)
    return data


@pytest.mark.parametrize("target", ODD_TARGETS)
async def test_raw_path_and_query_reach_atlantis_byte_for_byte(tmp_path: Path, target: str) -> None:
    async with proxy_stack(tmp_path) as s:
        answer = await raw_http.request(s.port, "GET", target)
        assert answer.status == 200
        assert json_of(answer)["raw_path"] == target


async def test_request_and_response_bodies_are_byte_identical(tmp_path: Path) -> None:
    body = os.urandom(3 * 1024 * 1024 + 7)  # every byte value, an odd length
    async with proxy_stack(tmp_path) as s:
        sized = await raw_http.request(s.port, "POST", "/_test/echo/upload", body=body)
        assert json_of(sized)["body_sha256"] == hashlib.sha256(body).hexdigest()
        assert json_of(sized)["body_length"] == len(body)

        chunks = [body[i : i + 100_000] for i in range(0, len(body), 100_000)]
        chunked = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks) + b"0\r\n\r\n"
        streamed = await raw_http.request(
            s.port,
            "PUT",
            "/_test/echo/chunked",
            headers=[("Transfer-Encoding", "chunked")],
            body=chunked,
        )
        assert json_of(streamed)["body_sha256"] == hashlib.sha256(body).hexdigest()

        size = 5 * 1024 * 1024 + 3
        download = await raw_http.request(s.port, "GET", f"/_test/blob?bytes={size}")
        assert download.body == b"".join(blob_bytes(size))


async def test_webhook_signature_still_verifies_through_the_proxy(tmp_path: Path) -> None:
    fake = FakeAtlantis(webhook_secret="hook-secret")
    # Odd whitespace, escapes and non-ASCII: any re-serialisation would break the signature.
    payload = b'{ "action":"opened" ,\n "pull_request": {"title":"caf\xc3\xa9 \\u00e9"}}  \n'
    signature = "sha256=" + hmac.new(b"hook-secret", payload, hashlib.sha256).hexdigest()
    async with proxy_stack(tmp_path, fake=fake) as s:
        good = await raw_http.request(
            s.port,
            "POST",
            "/events",
            headers=[("X-Hub-Signature-256", signature), ("Content-Type", "application/json")],
            body=payload,
        )
        bad = await raw_http.request(
            s.port,
            "POST",
            "/events",
            headers=[("X-Hub-Signature-256", signature)],
            body=payload + b" ",
        )
    assert (good.status, good.body) == (200, b"Processing...\n")
    assert bad.status == 400  # the fake really checks
    assert [e["valid"] for e in fake.events] == [True, False]
    assert fake.events[0]["sha256"] == hashlib.sha256(payload).hexdigest()


async def test_hop_by_hop_headers_are_removed_in_both_directions(tmp_path: Path) -> None:
    sent = [
        ("Connection", "close, X-Client-Hop"),
        ("X-Client-Hop", "only for the next hop"),
        ("Keep-Alive", "timeout=30"),
        ("Proxy-Connection", "keep-alive"),
        ("Proxy-Authorization", "Basic cHJveHk6cGFzcw=="),
        ("TE", "trailers"),
        ("Upgrade", "h2c"),
        ("Trailer", "X-Sum"),
        ("Authorization", "Basic YWxpY2U6czNjcjN0"),
        ("X-Atlantis-Token", "api-token-value"),
        ("Cookie", "atlantis_session=abc"),
        ("X-Custom", "end to end"),
    ]
    async with proxy_stack(tmp_path) as s:
        port = s.port
        echoed = await raw_http.request(s.port, "GET", "/_test/echo/h", headers=sent)
        arrived = [(k.lower(), v) for k, v in json_of(echoed)["headers"]]
        direct_hop = await raw_http.request(s.fake.port, "GET", "/_test/hop")
        proxied_hop = await raw_http.request(s.port, "GET", "/_test/hop")
    assert arrived == [
        ("host", f"127.0.0.1:{port}"),
        ("authorization", "Basic YWxpY2U6czNjcjN0"),
        ("x-atlantis-token", "api-token-value"),
        ("cookie", "atlantis_session=abc"),
        ("x-custom", "end to end"),
        ("x-forwarded-for", "127.0.0.1"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", f"127.0.0.1:{port}"),
    ], "only end-to-end headers reach Atlantis, plus X-Forwarded-*; nothing added by aiohttp"
    # Atlantis's answer carried hop-by-hop headers; the caller gets all the others unchanged.
    hop = {"connection", "x-upstream-hop", "keep-alive", "proxy-authenticate", "trailer"}
    expected = [(k, v) for k, v in direct_hop.comparable()[1] if k not in hop]
    assert [h for h in proxied_hop.comparable()[1] if h[0] != "connection"] == expected
    assert proxied_hop.header("X-End-To-End") == "keep me"
    assert proxied_hop.header("X-Upstream-Hop") is None
    assert proxied_hop.body == direct_hop.body


async def test_gzip_passes_through_undecoded(tmp_path: Path) -> None:
    async with proxy_stack(tmp_path) as s:
        direct = await raw_http.request(
            s.fake.port, "GET", "/_test/gzip", headers=[("Accept-Encoding", "gzip")]
        )
        proxied = await raw_http.request(
            s.port, "GET", "/_test/gzip", headers=[("Accept-Encoding", "gzip")]
        )
    assert proxied.header("Content-Encoding") == "gzip"
    assert proxied.body == direct.body
    assert gzip.decompress(proxied.body) == b"compressed hello " * 100


async def test_redirects_are_passed_back_not_followed(tmp_path: Path) -> None:
    async with proxy_stack(tmp_path) as s:
        answer = await raw_http.request(s.port, "GET", "/_test/redirect")
        later = await raw_http.request(s.port, "GET", "/_test/echo/next")
    assert answer.status == 302
    assert answer.header("Location") == "/_test/echo/landed"
    assert answer.all("Set-Cookie") == [
        "atlantis_session=s1; Path=/; HttpOnly",
        "theme=dark; Path=/",
    ]
    assert "/_test/echo/landed" not in [seen.raw_path for seen in s.fake.seen]
    # The sidecar keeps no cookie jar: one caller's Atlantis session never reaches the next.
    assert "cookie" not in {k.lower() for k, _ in json_of(later)["headers"]}


async def test_status_codes_heads_and_empty_bodies_pass_through(tmp_path: Path) -> None:
    async with proxy_stack(tmp_path) as s:
        teapot = await raw_http.request(s.port, "GET", "/_test/status?code=418")
        no_content = await raw_http.request(s.port, "GET", "/_test/status?code=204")
        head_direct = await raw_http.request(s.fake.port, "HEAD", "/healthz")
        head = await raw_http.request(s.port, "HEAD", "/healthz")
        not_found = await raw_http.request(s.port, "GET", "/no/such/page")
    assert (teapot.status_line, teapot.body) == ("HTTP/1.1 418 I'm a Teapot", b"status 418\n")
    assert (no_content.status, no_content.body) == (204, b"")
    assert head.comparable() == head_direct.comparable()  # Atlantis: 405 for HEAD on a GET route
    assert (not_found.status, not_found.body) == (404, b"404 page not found\n")


async def test_basic_auth_and_api_token_reach_atlantis_untouched(tmp_path: Path) -> None:
    fake = FakeAtlantis(basic_auth=("alice", "s3cr3t"), api_secret="token-1")
    async with proxy_stack(tmp_path, fake=fake) as s:
        anonymous = await raw_http.request(s.port, "GET", "/")
        alice = await raw_http.request(
            s.port, "GET", "/", headers=[("Authorization", "Basic YWxpY2U6czNjcjN0")]
        )
        plan = await raw_http.request(
            s.port, "POST", "/api/plan", headers=[("X-Atlantis-Token", "token-1")], body=b"{}"
        )
        wrong = await raw_http.request(
            s.port, "POST", "/api/plan", headers=[("X-Atlantis-Token", "nope")], body=b"{}"
        )
    assert anonymous.status == 401
    assert anonymous.header("WWW-Authenticate") == 'Basic realm="restricted", charset="UTF-8"'
    assert alice.status == 200
    assert plan.status == 200
    assert wrong.status == 401 and b"did not match expected secret" in wrong.body


async def test_connections_to_atlantis_are_pooled(tmp_path: Path) -> None:
    async with proxy_stack(tmp_path) as s:
        ports = set()
        for _ in range(20):
            async with s.http.get(f"{s.url}/_test/echo/pool") as resp:
                ports.add((await resp.json())["peer_port"])
    assert len(ports) == 1, "sequential requests should reuse one pooled connection"


async def test_unreachable_atlantis_gives_502_json_EL001_under_api_and_text_elsewhere(
    tmp_path: Path,
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    async with proxy_stack(tmp_path, upstream=nowhere) as s:
        api = await raw_http.request(s.port, "GET", "/api/locks")
        page = await raw_http.request(s.port, "GET", "/jobs/42")
        event = await raw_http.request(s.port, "POST", "/events", body=b"{}")
    assert api.status == 502
    assert api.header("Content-Type") == "application/json; charset=utf-8"
    error = json.loads(api.body)
    assert error["code"] == "EL001" and "cannot connect to Atlantis" in error["error"]
    assert (
        page.status == 502
        and page.header(
            "Content-Type",
        )
        == "text/plain; charset=utf-8"
    )
    assert page.body.startswith(b"502 Bad Gateway: cannot connect to Atlantis at 127.0.0.1:")
    assert event.status == 502


async def test_slow_atlantis_gives_504(tmp_path: Path) -> None:
    async with proxy_stack(tmp_path, proxy__read_timeout=0.3) as s:
        started = asyncio.get_running_loop().time()
        answer = await raw_http.request(s.port, "GET", "/_test/slow?seconds=3")
        waited = asyncio.get_running_loop().time() - started
        s.reload(proxy__read_timeout=5.0)  # a reload applies to the next request
        patient = await raw_http.request(s.port, "GET", "/_test/slow?seconds=0.5")
    assert answer.status == 504
    assert (
        answer.body
        == b"504 Gateway Timeout: Atlantis at "
        + f"127.0.0.1:{s.fake.port}".encode()
        + (b" did not answer within 0.3s\n")
    )
    assert waited < 2.0
    assert patient.status == 200


async def test_atlantis_stalling_mid_body_cuts_the_connection_instead_of_a_short_body(
    tmp_path: Path,
) -> None:
    async with (
        proxy_stack(tmp_path, proxy__read_timeout=0.3) as s,
        s.http.get(f"{s.url}/_test/slow-body?seconds=3&bytes={1024 * 1024}") as resp,
    ):
        # A large answer streams: its headers are out before the stall, so the only honest
        # signal left is a connection cut short of the Content-Length.
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_a_small_answer_stalling_mid_body_is_a_clean_504(tmp_path: Path) -> None:
    # Small sized answers are read whole before anything is sent, so a stall is still a 504.
    async with proxy_stack(tmp_path, proxy__read_timeout=0.3) as s:
        answer = await raw_http.request(s.port, "GET", "/_test/slow-body?seconds=3&bytes=10")
    assert answer.status == 504


async def test_enhanced_api_paths_are_never_passed_to_atlantis(tmp_path: Path) -> None:
    async with proxy_stack(tmp_path) as s:
        unknown = await raw_http.request(s.port, "GET", f"{API}/no-such-thing")
        wrong_method = await raw_http.request(s.port, "GET", f"{API}/acquire")
    assert unknown.status == 404 and json.loads(unknown.body)["code"] == "EL010"
    assert wrong_method.status == 405 and json.loads(wrong_method.body)["code"] == "EL009"
    assert s.fake.seen == []


def test_proxy_settings_are_checked_like_every_other_key() -> None:
    result = config.loads(
        '[enhanced-locking.proxy]\nread-timeout = "0s"\nconnect-timeout = "fast"\n'
        "max-connections = 0\n",
        env={},
    )
    problems = sorted(str(p) for p in result.problems)
    assert [p.split(":")[0] for p in problems] == [
        "enhanced-locking.proxy.connect-timeout",
        "enhanced-locking.proxy.max-connections",
        "enhanced-locking.proxy.read-timeout",
    ]
    assert all(p.endswith("[EL003]") for p in problems)
    ok = config.loads('[enhanced-locking.proxy]\nread-timeout = "15m"\n', env={})
    assert ok.problems == [] and ok.settings.proxy.read_timeout == 900.0


def test_credentials_in_the_upstream_url_never_reach_a_request_or_an_answer() -> None:
    settings = settings_with(Settings(), upstream="http://atlantis:hunter2@127.0.0.1:4142/")
    assert str(target(settings, "/lock?id=a%252Fb")) == "http://127.0.0.1:4142/lock?id=a%252Fb"
    failure = classify(aiohttp.ServerDisconnectedError(), settings)
    assert "hunter2" not in failure.reason and "127.0.0.1:4142" in failure.reason


async def test_metrics_path_is_atlantis_again_while_sidecar_metrics_are_off(
    tmp_path: Path,
) -> None:
    async with proxy_stack(tmp_path, metrics=False) as stack:
        async with stack.http.get(f"{stack.url}/metrics") as resp:
            assert resp.status == 404
            assert await resp.text() == "404 page not found\n"  # the fake Atlantis's answer
        stack.reload(metrics=True)
        async with stack.http.get(f"{stack.url}/metrics") as resp:
            assert resp.status == 200
            assert "atlantis_locks_total" in await resp.text()
