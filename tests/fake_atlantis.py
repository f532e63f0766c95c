"""A fake Atlantis v0.47 for the tests: the one test double the project allows.

We cannot run the Go server here, so this small aiohttp app behaves the way
`../shared/atlantis-lock-api.md` (read from Atlantis's source) says Atlantis behaves, and each
behaviour cites the fact it follows ("fact: ..."). It is a real HTTP server on 127.0.0.1 with an
in-memory lock table the tests drive directly (`add_lock`, `apply_lock_set`, `ready`).

It keeps its own Go-style decoding (not the sidecar's), so a test that compares the two is not
comparing the sidecar with itself.

Paths under `/_test/` are NOT Atlantis: they are instruments (echo what arrived, stream N bytes,
swallow a body, answer gzip, redirect, set hop-by-hop headers, answer slowly) for the proxy tests.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import json
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus, unquote_to_bytes

from aiohttp import WSMsgType, web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# fact: "Exempt from basic auth: /events, /healthz, /readyz, /status, and every path under /api/"
AUTH_EXEMPT = ("/events", "/healthz", "/readyz", "/status")
BLOB_CHUNK = 64 * 1024


def blob_bytes(size: int, chunk: int = BLOB_CHUNK) -> list[bytes]:
    """The deterministic bytes `/_test/blob` streams, so a test can check what came through."""
    out = []
    sent = 0
    n = 0
    while sent < size:
        piece = hashlib.sha256(str(n).encode()).digest() * (chunk // 32)
        piece = piece[: min(chunk, size - sent)]
        out.append(piece)
        sent += len(piece)
        n += 1
    return out


class GoEscapeError(ValueError):
    pass


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def go_unescape(text: str, *, query: bool) -> str:
    """Go's url.QueryUnescape (`query`) / url.PathUnescape, with Go's error text."""
    bad = _BAD_ESCAPE.search(text)
    if bad:
        raise GoEscapeError(f'invalid URL escape "{text[bad.start() : bad.start() + 3]}"')
    if query:
        text = text.replace("+", " ")
    return unquote_to_bytes(text).decode("utf-8", "surrogateescape")


def mux_query_var(raw_query: str, name: str) -> str | None:
    """How gorilla/mux reads `Queries("id", "{id}")`: the first pair named `name` whose name
    and value decode (pairs split on & and ;), decoded once; the `{id}` pattern is Go's `.*`,
    which does not match a newline. None: the route does not match."""
    for pair in re.split("[&;]", raw_query):
        if not pair:
            continue
        key, _, value = pair.partition("=")
        try:
            if go_unescape(key, query=True) != name:
                continue
            decoded = go_unescape(value, query=True)
        except GoEscapeError:
            continue
        return None if "\n" in decoded else decoded
    return None


@dataclass
class FakeLock:
    repo: str
    path: str
    workspace: str
    project: str
    pull: int
    user: str
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    # fact: "CloneURL embeds the VCS token (https://user:TOKEN@host/...): never log it or
    # return it." The fake stores one so tests can check it never leaks through the sidecar.
    clone_url: str = ""

    @property
    def id(self) -> str:
        # fact: "Since v0.40: {RepoFullName}/{Path}/{Workspace}/{ProjectName}"
        return f"{self.repo}/{self.path}/{self.workspace}/{self.project}"

    @property
    def pull_url(self) -> str:
        return f"https://github.com/{self.repo}/pull/{self.pull}"

    def detail(self) -> dict[str, Any]:
        # fact: /api/locks items have Go names, no JSON tags: Name, ProjectName, ProjectRepo,
        # ProjectRepoPath, PullID (a string), PullURL, User, Workspace, Time (RFC 3339, nanos).
        return {
            "Name": self.id,
            "ProjectName": self.project,
            "ProjectRepo": self.repo,
            "ProjectRepoPath": self.path,
            "PullID": str(self.pull),
            "PullURL": self.pull_url,
            "User": self.user,
            "Workspace": self.workspace,
            "Time": self.time.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z",
        }


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: list[tuple[str, str]]


def go_text(status: int, text: str) -> web.Response:
    # fact: lock routes answer "plain text with a trailing newline" (Go's fmt.Fprintln; net/http
    # sniffs text/plain; charset=utf-8).
    return web.Response(status=status, text=text + "\n", content_type="text/plain")


def go_not_found() -> web.Response:
    # fact: "the router's 404 `404 page not found`" (Go's http.NotFound, via http.Error).
    response = go_text(404, "404 page not found")
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def go_method_not_allowed() -> web.Response:
    # fact: "a wrong method on a known path gets 405 with an empty body".
    return web.Response(status=405, body=b"")


def go_json(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escape)
    return text


class FakeAtlantis:
    def __init__(
        self,
        *,
        basic_auth: tuple[str, str] | None = None,
        api_secret: str = "",
        webhook_secret: str = "",
        disable_global_apply_lock: bool = False,
    ) -> None:
        self.basic_auth = basic_auth
        self.api_secret = api_secret
        self.webhook_secret = webhook_secret
        self.disable_global_apply_lock = disable_global_apply_lock
        self.locks: dict[str, FakeLock] = {}
        self.apply_lock_set: datetime | None = None
        self.ready = True
        self.seen: list[Seen] = []
        self.events: list[dict[str, Any]] = []
        self.comments: list[str] = []
        self.ws_closed_by_client: list[int | None] = []
        self.ws_pongs: list[bytes] = []
        # Seconds to wait before answering a path (Atlantis busy, e.g. deleting a plan).
        self.delays: dict[str, float] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.port = 0

    # -- driving the fake ---------------------------------------------------------------------

    def add_lock(
        self,
        repo: str = "acme/infra",
        path: str = ".",
        workspace: str = "default",
        project: str = "",
        *,
        pull: int = 1,
        user: str = "alice",
    ) -> FakeLock:
        lock = FakeLock(
            repo,
            path,
            workspace,
            project,
            pull,
            user,
            clone_url=f"https://x-access-token:ghs_FAKETOKEN{pull}@github.com/{repo}.git",
        )
        self.locks[lock.id] = lock
        return lock

    def reset(self) -> None:
        self.locks.clear()
        self.apply_lock_set = None
        self.ready = True
        self.seen.clear()
        self.events.clear()
        self.comments.clear()

    async def start(self) -> FakeAtlantis:
        app = web.Application()
        app.router.add_route("*", r"/{tail:[\s\S]*}", self._dispatch)
        app.on_response_prepare.append(_no_server_header)
        # Go's net/http lets a handler run on when its caller hangs up (Atlantis's lock handlers
        # do not watch the request context), so neither does the fake.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- routing, as Atlantis's gorilla/mux router does it ------------------------------------

    def _routes(self) -> list[tuple[re.Pattern[str], set[str], str | None, Handler]]:
        """(path pattern, methods, required query var, handler), in Atlantis's order."""
        r: list[tuple[re.Pattern[str], set[str], str | None, Handler]] = [
            (re.compile(r"/"), {"GET"}, None, self.index),
            (re.compile(r"/healthz"), {"GET"}, None, self.healthz),
            (re.compile(r"/readyz"), {"GET"}, None, self.readyz),
            (re.compile(r"/status"), {"GET"}, None, self.status),
            (re.compile(r"/events"), {"POST"}, None, self.events_route),
            (re.compile(r"/api/locks"), {"GET"}, None, self.api_locks),
            (re.compile(r"/api/plan"), {"POST"}, None, self.api_plan),
            (re.compile(r"/api/apply"), {"POST"}, None, self.api_plan),
            # fact: "A request to /lock or /locks without id gets the router's 404"
            (re.compile(r"/lock"), {"GET"}, "id", self.get_lock),
            (re.compile(r"/locks"), {"DELETE"}, "id", self.delete_lock),
            (re.compile(r"/jobs/[^/]+"), {"GET"}, None, self.job_page),
            (re.compile(r"/jobs/[^/]+/ws"), {"GET"}, None, self.job_ws),
            (re.compile(r"/static/.*"), {"GET"}, None, self.static),
        ]
        # fact: "/apply/lock and /apply/unlock exist only without --disable-global-apply-lock"
        if not self.disable_global_apply_lock:
            r += [
                (re.compile(r"/apply/lock"), {"POST"}, None, self.apply_lock),
                (re.compile(r"/apply/unlock"), {"DELETE"}, None, self.apply_unlock),
            ]
        return r

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw_path, _, raw_query = request.raw_path.partition("?")
        self.seen.append(Seen(request.method, request.raw_path, list(request.headers.items())))
        if raw_path.startswith("/_test/"):
            return await self.instrument(request)
        try:
            path = go_unescape(raw_path, query=False)
        except GoEscapeError:
            return go_text(400, "400 Bad Request")  # Go's server refuses such a request line
        if not self._authorised(request, path):
            # fact: 401 with `WWW-Authenticate: Basic realm="restricted", charset="UTF-8"` and
            # body `Unauthorized` (http.Error adds the newline).
            response = go_text(401, "Unauthorized")
            response.headers["WWW-Authenticate"] = 'Basic realm="restricted", charset="UTF-8"'
            response.headers["X-Content-Type-Options"] = "nosniff"
            return response
        if path in self.delays:
            await asyncio.sleep(self.delays[path])
        method_mismatch = False
        for pattern, methods, query_var, handler in self._routes():
            if not pattern.fullmatch(path):
                continue
            if query_var is not None and mux_query_var(raw_query, query_var) is None:
                continue
            if request.method not in methods:
                method_mismatch = True
                continue
            return await handler(request)
        return go_method_not_allowed() if method_mismatch else go_not_found()

    def _authorised(self, request: web.Request, path: str) -> bool:
        if self.basic_auth is None or path in AUTH_EXEMPT or path.startswith("/api/"):
            return True
        header = request.headers.get("Authorization", "")
        expected = "Basic " + base64.b64encode(":".join(self.basic_auth).encode()).decode()
        return hmac.compare_digest(header, expected)

    # -- Atlantis's routes ----------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        # fact: "The UI index GET / lists locks newest first, each linking to
        # /lock?id=<double-encoded>"
        items = sorted(self.locks.values(), key=lambda lock: lock.time, reverse=True)
        links = "".join(
            f'<a href="/lock?id={quote_plus(quote_plus(lock.id, safe=""), safe="")}">'
            f"{lock.id}</a>\n"
            for lock in items
        )
        return web.Response(text=f"<html><body>\n{links}</body></html>\n", content_type="text/html")

    async def healthz(self, request: web.Request) -> web.Response:
        # fact: GET /healthz -> 200 application/json, body {\n  "status": "ok"\n}
        return web.Response(text='{\n  "status": "ok"\n}', content_type="application/json")

    async def readyz(self, request: web.Request) -> web.Response:
        # fact: GET /readyz -> 200 same body; 503 {"status":"error","error":"..."} when the DB
        # ping fails.
        if self.ready:
            return await self.healthz(request)
        return web.Response(
            status=503,
            text='{"status":"error","error":"database not reachable"}',
            content_type="application/json",
        )

    async def status(self, request: web.Request) -> web.Response:
        # fact: GET /status -> {"shutting_down": bool, "in_progress_operations": int, "version"}
        body = {"shutting_down": False, "in_progress_operations": 0, "version": "0.47.0"}
        return web.Response(text=go_json(body), content_type="application/json")

    async def events_route(self, request: web.Request) -> web.Response:
        # fact: POST /events is validated by the webhook secret over the exact body bytes
        # (GitHub X-Hub-Signature-256). Hashed as it streams in, so 50 MiB costs nothing here.
        mac = hmac.new(self.webhook_secret.encode(), digestmod=hashlib.sha256)
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            mac.update(chunk)
            digest.update(chunk)
            size += len(chunk)
        given = request.headers.get("X-Hub-Signature-256", "")
        valid = hmac.compare_digest(given, "sha256=" + mac.hexdigest())
        self.events.append({"valid": valid, "size": size, "sha256": digest.hexdigest()})
        if not valid:
            return go_text(400, "request did not pass validation: payload signature check failed")
        # fact: "Atlantis answers quickly and runs the command in the background."
        return go_text(200, "Processing...")

    async def api_locks(self, request: web.Request) -> web.Response:
        # fact: 200 application/json {"Locks":[...]}; {"Locks":null} when empty. (Atlantis's
        # order is random; the fake keeps insertion order so answers can be compared.)
        details = [lock.detail() for lock in self.locks.values()] or None
        return web.Response(text=go_json({"Locks": details}), content_type="application/json")

    async def api_plan(self, request: web.Request) -> web.Response:
        # fact: X-Atlantis-Token (compared with --api-secret) guards /api/plan and /api/apply.
        if not self.api_secret or not hmac.compare_digest(
            request.headers.get("X-Atlantis-Token", ""), self.api_secret
        ):
            return web.Response(
                status=401,
                text=go_json({"error": "header X-Atlantis-Token did not match expected secret"}),
                content_type="application/json",
            )
        await request.read()
        return web.Response(text=go_json({"ProjectResults": []}), content_type="application/json")

    async def get_lock(self, request: web.Request) -> web.Response:
        once = mux_query_var(request.raw_path.partition("?")[2], "id")
        assert once is not None
        try:
            # fact: "GET /lock decodes twice (query rules: + becomes space)"
            lock_id = go_unescape(once, query=True)
        except GoEscapeError as exc:
            return go_text(400, f"Invalid lock id: {exc}")
        # fact: ids with fewer than 4 `/` are rejected with `invalid key format` (500).
        if lock_id.count("/") < 4:
            return go_text(500, "Failed getting lock: invalid key format")
        lock = self.locks.get(lock_id)
        if lock is None:
            return go_text(404, f"No lock found at id '{lock_id}'")
        owner, _, name = lock.repo.rpartition("/")
        # fact: the lock page's "Discard Plan & Unlock" sends DELETE /locks?id=<single-encoded>
        html = (
            "<html><body>\n"
            f"<p>{lock.id} Locked</p>\n<p>Repo Owner: {owner}</p>\n<p>Repo Name: {name}</p>\n"
            f'<p>Pull Request Link: <a href="{lock.pull_url}">{lock.pull_url}</a></p>\n'
            f"<p>Locked By: {lock.user}</p>\n<p>Workspace: {lock.workspace}</p>\n"
            f'<button data-url="/locks?id={quote_plus(lock.id, safe="")}">'
            "Discard Plan &amp; Unlock</button>\n</body></html>\n"
        )
        return web.Response(text=html, content_type="text/html")

    async def delete_lock(self, request: web.Request) -> web.Response:
        once = mux_query_var(request.raw_path.partition("?")[2], "id")
        # fact: 400 `No lock id in request`
        if not once:
            return go_text(400, "No lock id in request")
        try:
            # fact: "DELETE /locks decodes once more with path rules"
            lock_id = go_unescape(once, query=False)
        except GoEscapeError as exc:
            # Not in the fact sheet's table; modelled on Atlantis's source.
            return go_text(400, f'Invalid lock id "{once}". Failed with error: {exc}')
        if lock_id.count("/") < 4:
            # fact: 500 `deleting lock failed with: '...'`
            return go_text(500, "deleting lock failed with: 'invalid key format'")
        lock = self.locks.pop(lock_id, None)
        if lock is None:
            return go_text(404, f"No lock found at id '{lock_id}'")
        # fact: "200 Deleted lock id 'ID' (also deletes the plan, comments on the PR)"
        self.comments.append(f"{lock.repo}#{lock.pull}: locks and plans deleted for {lock_id}")
        return go_text(200, f"Deleted lock id '{lock_id}'")

    async def apply_lock(self, request: web.Request) -> web.Response:
        # fact: 200 `Apply Lock is acquired on 2006-01-02 15:04:05`; 500 when already set
        # ("not idempotent").
        if self.apply_lock_set is not None:
            return go_text(
                500,
                "creating apply lock failed with: db transaction failed: lock already exists",
            )
        self.apply_lock_set = datetime.now(UTC)
        stamp = self.apply_lock_set.strftime("%Y-%m-%d %H:%M:%S")
        return go_text(200, f"Apply Lock is acquired on {stamp}")

    async def apply_unlock(self, request: web.Request) -> web.Response:
        # fact: 200 `Deleted apply lock`; 500 `deleting apply lock failed with: db transaction
        # failed: no lock exists` when not set.
        if self.apply_lock_set is None:
            return go_text(
                500, "deleting apply lock failed with: db transaction failed: no lock exists"
            )
        self.apply_lock_set = None
        return go_text(200, "Deleted apply lock")

    async def job_page(self, request: web.Request) -> web.Response:
        return web.Response(text="<html><body>job output</body></html>\n", content_type="text/html")

    async def job_ws(self, request: web.Request) -> web.StreamResponse:
        """fact: GET /jobs/{job-id}/ws streams plan/apply logs to the UI over a WebSocket.

        The fake echoes what it gets, and obeys two commands so tests can drive it:
        `close <code> <reason>` (it closes with that code) and `ping <payload>` (it pings).
        Like gorilla/websocket's default handlers, it answers a ping with a pong carrying the
        same payload and a close with a close carrying the same code."""
        ws = web.WebSocketResponse(protocols=("logs.v1",), autoping=False, autoclose=False)
        await ws.prepare(request)
        await ws.send_str(f"job {request.match_info['tail'].split('/')[1]} log stream")
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                command, _, rest = msg.data.partition(" ")
                if command == "close":
                    code, _, reason = rest.partition(" ")
                    await ws.close(code=int(code), message=reason.encode())
                    break
                if command == "ping":
                    await ws.ping(rest.encode())
                    continue
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type is WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type is WSMsgType.PONG:
                self.ws_pongs.append(msg.data)
            elif msg.type is WSMsgType.CLOSE:
                self.ws_closed_by_client.append(msg.data)
                await ws.close(code=msg.data)
                break
            else:
                break
        return ws

    async def static(self, request: web.Request) -> web.Response:
        if request.path == "/static/css/custom.css":
            return web.Response(text="body { color: #333; }\n", content_type="text/css")
        return go_not_found()

    # -- test instruments (not Atlantis) --------------------------------------------------------

    async def instrument(self, request: web.Request) -> web.StreamResponse:
        name = request.path.split("/")[2]
        q = request.query
        if name == "echo":
            digest = hashlib.sha256()
            size = 0
            async for chunk in request.content.iter_any():
                digest.update(chunk)
                size += len(chunk)
            return web.json_response(
                {
                    "method": request.method,
                    "raw_path": request.raw_path,
                    "headers": [[k, v] for k, v in request.headers.items()],
                    "body_sha256": digest.hexdigest(),
                    "body_length": size,
                    "peer_port": (request.transport.get_extra_info("peername") or ("", 0))[1]
                    if request.transport is not None
                    else 0,
                }
            )
        if name == "blob":
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            await response.prepare(request)
            for piece in blob_bytes(int(q["bytes"])):
                await response.write(piece)
            await response.write_eof()
            return response
        if name == "gzip":
            body = gzip.compress(b"compressed hello " * 100)
            return web.Response(
                body=body,
                headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"},
            )
        if name == "redirect":
            response = web.Response(status=302, text="go elsewhere\n")
            response.headers["Location"] = "/_test/echo/landed"
            response.headers.add("Set-Cookie", "atlantis_session=s1; Path=/; HttpOnly")
            response.headers.add("Set-Cookie", "theme=dark; Path=/")
            return response
        if name == "hop":
            response = web.Response(text="hop\n")
            response.headers["Connection"] = "keep-alive, X-Upstream-Hop"
            response.headers["X-Upstream-Hop"] = "drop me"
            response.headers["Keep-Alive"] = "timeout=5"
            response.headers["Proxy-Authenticate"] = 'Basic realm="proxy"'
            response.headers["Trailer"] = "X-Checksum"
            response.headers["X-End-To-End"] = "keep me"
            return response
        if name == "slow":
            await asyncio.sleep(float(q.get("seconds", "1")))
            return web.Response(text="slow\n")
        if name == "slow-body":
            # Half the body, a pause, then the rest.
            size = int(q.get("bytes", "10"))
            response = web.StreamResponse(headers={"Content-Type": "text/plain"})
            response.content_length = size
            await response.prepare(request)
            await response.write(b"x" * (size // 2))
            await asyncio.sleep(float(q.get("seconds", "1")))
            await response.write(b"y" * (size - size // 2))
            await response.write_eof()
            return response
        if name == "status":
            return web.Response(status=int(q["code"]), text=f"status {q['code']}\n")
        return go_not_found()


async def _no_server_header(request: web.Request, response: web.StreamResponse) -> None:
    # Go's net/http sends no Server header.
    response.headers.popall("Server", None)


def random_lock_ids(n: int, seed: int) -> list[str]:
    """Atlantis-style ids: repos with and without subgroups, nested paths, workspaces, projects
    (sometimes empty, so the id ends in `/`)."""
    rng = random.Random(seed)
    words = ["acme", "infra", "net", "core", "data", "web", "ops", "eu", "us", "prod", "dev"]
    ids = []
    for _ in range(n):
        segments = rng.choice([2, 2, 3])  # GitLab subgroups give repos more than two parts
        repo = "/".join(rng.choice(words) + str(rng.randrange(100)) for _ in range(segments))
        depth = rng.randint(1, 3)
        path = "." if rng.random() < 0.3 else "/".join(rng.choice(words) for _ in range(depth))
        workspace = rng.choice(["default", "staging", "production", f"ws{rng.randrange(50)}"])
        project = "" if rng.random() < 0.4 else f"{rng.choice(words)}-{rng.randrange(1000)}"
        ids.append(f"{repo}/{path}/{workspace}/{project}")
    return ids
