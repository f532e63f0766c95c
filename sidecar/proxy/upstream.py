"""The connection to Atlantis: one pooled client session, upstream URLs, failures as 502/504.

The session is a resource of the app (its own cleanup context), so connections to Atlantis are
pooled across requests and closed only after in-flight requests drained at shutdown. It never
decompresses (`Content-Encoding` passes through), never follows redirects, keeps no cookies
(a cookie jar would hand one user's Atlantis session to the next caller) and adds no headers of
its own (`Accept`, `Accept-Encoding`, `User-Agent`, `Content-Type` are the caller's or absent).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict
from yarl import URL

from sidecar.api.appkeys import RUNTIME, UPSTREAM_SESSION
from sidecar.config import Settings
from sidecar.errors import Code, LockError
from sidecar.proxy.headers import ProxiedResponse, end_to_end, upstream_request_headers

log = logging.getLogger("enhanced-locking.proxy")

SKIP_AUTO_HEADERS = frozenset(
    {hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.USER_AGENT, hdrs.CONTENT_TYPE}
)
# Go's server accepts 1 MiB of headers; aiohttp's client would refuse a field over 8 KiB.
MAX_HEADER_FIELD = 64 * 1024
# Most of an Atlantis answer that a lock route reads whole (the /api/locks listing).
MAX_BUFFERED = 64 * 1024 * 1024


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    """One pooled session to Atlantis for the app's lifetime."""
    settings = app[RUNTIME].settings
    connector = aiohttp.TCPConnector(limit=settings.proxy.max_connections, limit_per_host=0)
    session = aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=SKIP_AUTO_HEADERS,
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=False,
        max_line_size=MAX_HEADER_FIELD,
        max_field_size=MAX_HEADER_FIELD,
    )
    app[UPSTREAM_SESSION] = session
    try:
        yield
    finally:
        await session.close()


@functools.lru_cache(maxsize=16)
def _base(upstream: str) -> tuple[str, str]:
    """(base for request URLs, host:port for messages). Credentials in `upstream` are dropped:
    they would clash with the caller's own `Authorization` and must never appear in answers."""
    url = URL(upstream)
    clean = url.with_user(None).with_query(None).with_fragment(None)
    return str(clean).rstrip("/"), f"{url.host}:{url.port}"


def target(settings: Settings, raw_path: str) -> URL:
    """The upstream URL for a request, with the caller's raw path and query kept byte for byte."""
    if not raw_path.startswith("/"):  # absolute-form request target
        raw_path = URL(raw_path, encoded=True).raw_path_qs
    return URL(_base(settings.upstream)[0] + raw_path, encoded=True)


def upstream_host(settings: Settings) -> str:
    return _base(settings.upstream)[1]


@functools.lru_cache(maxsize=16)
def _timeout(connect: float, read: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read)


def timeouts(settings: Settings) -> aiohttp.ClientTimeout:
    """Per request, so a reloaded `proxy.*-timeout` applies at once."""
    return _timeout(settings.proxy.connect_timeout, settings.proxy.read_timeout)


class UpstreamFailure(Exception):
    """Atlantis could not be asked or did not answer in time: 502 or 504 to the caller."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def classify(exc: BaseException, settings: Settings) -> UpstreamFailure:
    """Name what went wrong without echoing exception texts (they can carry URLs)."""
    host = upstream_host(settings)
    p = settings.proxy
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamFailure(
            504, f"no connection to Atlantis at {host} within {p.connect_timeout:g}s"
        )
    if isinstance(exc, TimeoutError):
        return UpstreamFailure(504, f"Atlantis at {host} did not answer within {p.read_timeout:g}s")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamFailure(502, f"cannot connect to Atlantis at {host}")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamFailure(502, f"Atlantis at {host} closed the connection without answering")
    return UpstreamFailure(502, f"request to Atlantis at {host} failed ({type(exc).__name__})")


def failure_response(request: web.Request, failure: UpstreamFailure) -> web.Response:
    """502/504 with a short body: JSON with EL001 under /api/ (API clients parse it), else text."""
    log.warning(
        "proxy %s %s: %s, answering %d [EL001]",
        request.method,
        request.path,
        failure.reason,
        failure.status,
    )
    if request.path.startswith("/api/"):
        error = LockError(Code.BACKEND_UNAVAILABLE, failure.reason, status=failure.status)
        return web.json_response(error.to_json(), status=failure.status)
    title = "Bad Gateway" if failure.status == 502 else "Gateway Timeout"
    return web.Response(status=failure.status, text=f"{failure.status} {title}: {failure.reason}\n")


@dataclass(frozen=True, slots=True)
class Buffered:
    """A whole (small) answer of Atlantis, for the lock routes that look at it before replying."""

    status: int
    reason: str | None
    headers: CIMultiDict[str]
    body: bytes

    async def relay(self, request: web.Request, body: bytes | None = None) -> web.StreamResponse:
        """Send this answer to the caller as Atlantis gave it (or with a replaced body)."""
        headers = self.headers
        if body is not None:
            headers = headers.copy()
            if hdrs.CONTENT_LENGTH in headers:
                headers[hdrs.CONTENT_LENGTH] = str(len(body))
        response = ProxiedResponse(
            status=self.status, reason=self.reason, headers=headers, coalesce=True
        )
        await response.prepare(request)
        await response.write_eof(self.body if body is None else body)
        return response


async def fetch(
    request: web.Request,
    *,
    body: bytes | None,
    limit: int = MAX_BUFFERED,
) -> Buffered:
    """Ask Atlantis the caller's request (same method, raw path, headers) and read the answer.

    Raises UpstreamFailure when Atlantis cannot be reached, is too slow or answers too much.
    """
    settings = request.app[RUNTIME].settings
    session = request.app[UPSTREAM_SESSION]
    headers = upstream_request_headers(request)
    if body is None:
        headers.popall(hdrs.CONTENT_LENGTH, None)  # nothing follows, whatever the caller said
    try:
        async with session.request(
            request.method,
            target(settings, request.raw_path),
            headers=headers,
            data=body,
            allow_redirects=False,
            timeout=timeouts(settings),
        ) as answer:
            chunks: list[bytes] = []
            size = 0
            async for chunk in answer.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise UpstreamFailure(502, f"Atlantis's answer is larger than {limit} bytes")
                chunks.append(chunk)
            kept = end_to_end(answer.headers)
            return Buffered(answer.status, answer.reason, kept, b"".join(chunks))
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise classify(exc, settings) from None


async def read_body(request: web.Request) -> bytes | None:
    """The caller's (small) body for a lock route, to forward as is; None when there is none."""
    if not request.body_exists:
        return None
    return await request.read()
