"""The OpenAPI document must describe the enhanced-locks API exactly as the app implements it.

The document is hand-written JSON shipped in the package, so nothing keeps it in step with the
code except these tests: the routes must match the router one for one, every `$ref` must resolve,
every error code it names must exist, and real error answers from a real app must carry a status
and a code that the document lists for that operation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterator
from importlib import resources
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sidecar import __version__
from sidecar.api.app import create_app
from sidecar.api.locks import PREFIX
from sidecar.config import Settings
from sidecar.errors import Code
from sidecar.plugin.manager import Plugins
from sidecar.runtime import ConfigSource, Runtime
from tests.conftest import settings_with

AiohttpClient = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
API_TOKEN = "api-secret"
ADMIN_TOKEN = "admin-secret"


def load_document() -> dict[str, Any]:
    text = resources.files("sidecar.api").joinpath("openapi.json").read_text(encoding="utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return load_document()


def make_app(**changes: Any) -> web.Application:
    settings = settings_with(Settings(backend="memory"), **changes)
    runtime = Runtime.build(
        settings, Plugins.load(env={}, entry_points=False), ConfigSource(None, {})
    )
    return create_app(runtime)


def router_pairs(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route, without the HEAD routes aiohttp adds for GETs."""
    pairs = set()
    for route in app.router.routes():
        canonical = route.resource.canonical if route.resource is not None else ""
        if route.method != "HEAD":
            pairs.add((route.method, canonical))
    return pairs


def document_pairs(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def codes_in(doc: dict[str, Any], node: Any, seen: frozenset[str] = frozenset()) -> set[str]:
    """Every error code a (response or schema) node can answer, following `$ref`s."""
    found: set[str] = set()
    for item in walk(node):
        if not isinstance(item, dict):
            continue
        ref = item.get("$ref")
        if isinstance(ref, str) and ref not in seen:
            found |= codes_in(doc, resolve(doc, ref), seen | {ref})
        code = item.get("properties", {}).get("code") if "properties" in item else None
        if isinstance(code, dict) and isinstance(code.get("enum"), list):
            found |= set(code["enum"])
    return found


def test_document_parses_as_openapi_31(doc: dict[str, Any]) -> None:
    assert doc["openapi"].startswith("3.1.")
    assert doc["info"]["title"]
    assert "never" in doc["info"]["description"] and "`key` query parameter" in doc["info"][
        "description"
    ]
    schemes = doc["components"]["securitySchemes"]
    assert schemes["apiToken"] == {**schemes["apiToken"], "type": "apiKey", "in": "header",
                                   "name": "X-Atlantis-Token"}
    assert schemes["adminToken"]["type"] == "http" and schemes["adminToken"]["scheme"] == "bearer"


def test_every_ref_resolves(doc: dict[str, Any]) -> None:
    refs = {item["$ref"] for item in walk(doc) if isinstance(item, dict) and "$ref" in item}
    assert refs
    for ref in refs:
        assert resolve(doc, ref) is not None, ref


def test_documented_routes_are_exactly_the_routers_routes(doc: dict[str, Any]) -> None:
    app = make_app()
    in_router = {p for p in router_pairs(app) if p[1].startswith(PREFIX)}
    in_doc = {p for p in document_pairs(doc) if p[1].startswith(PREFIX)}
    assert in_router, "the app has no enhanced-locks routes?"
    assert in_doc == in_router, (
        f"undocumented: {sorted(in_router - in_doc)}; not in the app: {sorted(in_doc - in_router)}"
    )


def test_prometheus_endpoint_is_documented_at_its_default_path(doc: dict[str, Any]) -> None:
    app = make_app()
    endpoint = Settings().metrics_config.endpoint
    assert ("GET", endpoint) in router_pairs(app)
    assert ("GET", endpoint) in document_pairs(doc)
    others = {p for p in document_pairs(doc) if not p[1].startswith(PREFIX)}
    assert others == {("GET", endpoint)}


def test_path_parameters_are_declared(doc: dict[str, Any]) -> None:
    for path, item in doc["paths"].items():
        names = set(re.findall(r"\{(\w+)\}", path))
        declared = {
            p["name"] for p in item.get("parameters", []) if p["in"] == "path"
        }
        for method, op in item.items():
            if method in HTTP_METHODS:
                ops = declared | {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
                assert ops == names, (method, path)


def test_no_key_travels_in_a_path_segment(doc: dict[str, Any]) -> None:
    """Atlantis ids hold `/` and `./`: only the request id (32 hex digits) may be in a path."""
    for path in doc["paths"]:
        assert set(re.findall(r"\{(\w+)\}", path)) <= {"request_id"}, path


def test_mutating_routes_declare_their_security(doc: dict[str, Any]) -> None:
    for (method, path) in document_pairs(doc):
        if not path.startswith(PREFIX) or method == "GET":
            continue
        names = {name for req in doc["paths"][path][method.lower()]["security"] for name in req}
        admin = path.startswith((PREFIX + "/admin/", PREFIX + "/config/"))
        assert names == ({"adminToken"} if admin else {"apiToken"}), (method, path)


def test_every_documented_error_code_exists(doc: dict[str, Any]) -> None:
    known = {str(c) for c in Code}
    text = json.dumps(doc)
    mentioned = set(re.findall(r"EL\d{3}", text))
    assert mentioned, "the document names no error code"
    assert mentioned <= known, sorted(mentioned - known)
    assert set(doc["x-error-codes"]) <= known
    assert codes_in(doc, doc["components"]["schemas"]) <= known


async def test_served_with_the_running_version(
    aiohttp_client: AiohttpClient, doc: dict[str, Any]
) -> None:
    client = await aiohttp_client(make_app())
    resp = await client.get(PREFIX + "/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    served = await resp.json()
    assert served["info"]["version"] == __version__
    assert served == {**doc, "info": {**doc["info"], "version": __version__}}


async def test_served_while_disabled(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(make_app(enabled=False))
    resp = await client.get(PREFIX + "/openapi.json")
    assert resp.status == 200
    assert (await resp.json())["openapi"].startswith("3.1.")


def documented(doc: dict[str, Any], method: str, path: str, status: int) -> set[str]:
    op = doc["paths"][path][method.lower()]
    assert str(status) in op["responses"], f"{method} {path} answered undocumented {status}"
    return codes_in(doc, op["responses"][str(status)])


async def test_real_error_answers_are_documented(
    aiohttp_client: AiohttpClient, doc: dict[str, Any]
) -> None:
    """Provoke each error a route can give and check the document lists its status and code."""
    client = await aiohttp_client(make_app(
        api_token=API_TOKEN, admin_token=ADMIN_TOKEN, queue_config__max_queue_size=1,
    ))
    token = {"X-Atlantis-Token": API_TOKEN}
    seen: list[tuple[str, str, int, str]] = []

    async def call(
        method: str, path: str, expect: int, *, json_body: Any = None, data: bytes | None = None,
        headers: dict[str, str] | None = None, params: dict[str, str] | None = None,
        template: str | None = None,
    ) -> dict[str, Any]:
        resp = await client.request(
            method, PREFIX + path, json=json_body, data=data, params=params,
            headers=token if headers is None else headers,
        )
        body: dict[str, Any] = await resp.json()
        assert resp.status == expect, (method, path, resp.status, body)
        route = PREFIX + (template or path)
        if expect >= 400:
            assert set(body) >= {"error", "code"}, body
            assert body["code"] in documented(doc, method, route, expect), (method, path, body)
            seen.append((method, route, expect, body["code"]))
        else:
            documented(doc, method, route, expect)
        return body

    a = {"key": "k/1", "owner": "owner-a"}
    await call("POST", "/acquire", 401, json_body=a, headers={})
    await call("POST", "/acquire", 400, json_body={**a, "ttl": 1})
    await call("POST", "/acquire", 400, json_body={"keys": ["x"] * 65, "owner": "o"})
    await call("POST", "/acquire", 400, json_body={"key": "é" * 600, "owner": "o"})
    await call("POST", "/acquire", 413, data=b" " * (256 * 1024 + 1),
               headers={**token, "Content-Type": "application/json"})
    await call("POST", "/acquire", 200, json_body=a)
    busy = await call("POST", "/acquire", 409, json_body={"key": "k/1", "owner": "b", "wait": 0})
    assert busy["code"] == "EL002" and busy["holders"][0]["owner"]["id"] == "owner-a"
    await call("POST", "/acquire", 408, json_body={"key": "k/1", "owner": "b", "wait": 0.05})
    queued = await call("POST", "/acquire", 409, json_body={
        "key": "k/1", "owner": "b", "wait": 0, "stay_queued": True,
    })
    assert queued["queued"] is True and queued["position"] == 1
    overflow = await call("POST", "/acquire", 429, json_body={"key": "k/1", "owner": "c"})
    assert overflow["code"] == "EL005"
    await call("POST", "/acquire", 409,
               json_body={"key": "atlantis:acme/infra/./default/", "owner": "o"})
    rid = queued["request_id"]
    await call("GET", f"/requests/{rid}", 200, template="/requests/{request_id}")
    await call("GET", "/requests/nope", 400, template="/requests/{request_id}")
    await call("GET", "/requests/" + "0" * 32, 404, template="/requests/{request_id}")
    await call("DELETE", "/requests/" + "0" * 32, 404, template="/requests/{request_id}")
    await call("DELETE", f"/requests/{rid}", 401, headers={}, template="/requests/{request_id}")
    await call("DELETE", f"/requests/{rid}", 200, template="/requests/{request_id}")
    await call("POST", "/release", 403, json_body={"key": "k/1", "owner": "b"})
    await call("POST", "/release", 404, json_body={"key": "k/2", "owner": "b"})
    await call("POST", "/renew", 400, json_body={"key": "k/1", "owner": "owner-a"})
    await call("POST", "/renew", 403, json_body={"key": "k/1", "owner": "b", "lease": "1m"})
    await call("POST", "/renew", 404, json_body={"key": "k/9", "owner": "b", "lease": "1m"})
    await call("POST", "/renew", 200, json_body={**a, "lease": "1m"})
    await call("POST", "/release-owner", 400, json_body={})
    await call("GET", "/lock", 400, params={})
    await call("GET", "/lock", 200, params={"key": "k/1"})
    await call("GET", "/locks", 400, params={"limit": "0"})
    await call("POST", "/config/reload", 401)
    await call("POST", "/admin/force-release", 401, json_body={"key": "k/1"},
               headers={"Authorization": "Bearer wrong"})
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    await call("POST", "/admin/force-release", 400, json_body={"kee": "k/1"}, headers=admin)
    await call("POST", "/admin/force-release", 200, json_body={"key": "k/1"}, headers=admin)

    resp = await client.get(PREFIX + "/no/such/route")
    assert (resp.status, (await resp.json())["code"]) == (404, "EL010")
    assert "404 EL010" in doc["info"]["description"]
    resp = await client.put(PREFIX + "/acquire", headers=token)
    assert (resp.status, (await resp.json())["code"]) == (405, "EL009")
    assert "405 EL009" in doc["info"]["description"]

    disabled = await aiohttp_client(make_app(enabled=False))
    resp = await disabled.get(PREFIX + "/locks")
    body = await resp.json()
    assert (resp.status, body["code"]) == (503, "EL003")
    assert "EL003" in documented(doc, "GET", PREFIX + "/locks", 503)

    no_admin = await aiohttp_client(make_app())
    resp = await no_admin.post(PREFIX + "/config/reload")
    body = await resp.json()
    assert (resp.status, body["code"]) == (403, "EL007")
    assert "EL007" in documented(doc, "POST", PREFIX + "/config/reload", 403)
    assert {code for *_, code in seen} >= {"EL002", "EL005", "EL006", "EL007", "EL009", "EL010"}
