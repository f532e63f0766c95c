"""The transparent reverse proxy: every request the sidecar does not serve itself goes to Atlantis.

Bodies stream both ways in the pieces they arrive in, with back-pressure (a write waits until the
other side has taken the previous piece), so a 50 MiB plan upload or log download costs the
sidecar a few buffers, not 50 MiB. The raw request target is forwarded byte for byte: Atlantis's
lock links carry double-encoded ids (`%252F`) that any re-encoding would break. Webhook bodies
reach Atlantis unchanged, so their signatures (computed over the exact bytes) still verify.
"""

from __future__ import annotations

import contextlib
import logging

import aiohttp
from aiohttp import web

from sidecar.api.appkeys import RUNTIME, UPSTREAM_SESSION
from sidecar.api.locks import PREFIX
from sidecar.proxy import websocket
from sidecar.proxy.headers import ProxiedResponse, end_to_end, upstream_request_headers
from sidecar.proxy.upstream import classify, failure_response, target, timeouts

log = logging.getLogger("enhanced-locking.proxy")

# Registered last, so every route of the sidecar wins over it. `[\s\S]` and not `.`: a path with
# an encoded newline must reach Atlantis too, not die in the sidecar's router.
CATCH_ALL = r"/{tail:[\s\S]*}"
# Answers up to this size with a Content-Length are read whole and sent in one write.
SMALL_BODY = 64 * 1024


async def proxy(request: web.Request) -> web.StreamResponse:
    """The catch-all route."""
    path = request.path
    if path == PREFIX or path.startswith(PREFIX + "/"):
        await _not_served(request)
    if websocket.is_upgrade(request):
        return await websocket.proxy_websocket(request)
    return await forward(request)


async def _not_served(request: web.Request) -> None:
    """The enhanced API's namespace is the sidecar's own: unknown paths there are 404 (405 for a
    known path with another method), answered as JSON by the API's error middleware, never
    passed to Atlantis."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource.canonical.startswith(PREFIX):
            _, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


async def forward(request: web.Request) -> web.StreamResponse:
    """Send the request to Atlantis and stream its answer back unchanged."""
    settings = request.app[RUNTIME].settings
    session = request.app[UPSTREAM_SESSION]
    try:
        upstream = await session.request(
            request.method,
            target(settings, request.raw_path),
            headers=upstream_request_headers(request),
            data=request.content if request.body_exists else None,
            allow_redirects=False,
            timeout=timeouts(settings),
        )
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return failure_response(request, classify(exc, settings))
    finished = False
    try:
        headers = end_to_end(upstream.headers)
        if _small(request, upstream):
            # Small and sized: read it whole (bounded), then answer in one write.
            try:
                body = await upstream.content.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                return failure_response(request, classify(exc, settings))
            finished = True
            response = ProxiedResponse(
                status=upstream.status, reason=upstream.reason, headers=headers, coalesce=True
            )
            with contextlib.suppress(ConnectionError):  # the caller went away
                await response.prepare(request)
                await response.write_eof(body)
            return response
        response = ProxiedResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        try:
            await response.prepare(request)
        except ConnectionError:
            return response
        while True:
            try:
                chunk = await upstream.content.readany()
            except (TimeoutError, aiohttp.ClientError) as exc:
                # Too late for a 502/504: the status is sent. Cut the caller's connection so a
                # truncated body can never pass for a whole one.
                log.warning(
                    "proxy %s %s: %s after the answer started; connection closed [EL001]",
                    request.method,
                    request.path,
                    classify(exc, settings).reason,
                )
                _abort(request)
                return response
            if not chunk:
                break
            try:
                await response.write(chunk)
            except ConnectionError:  # the caller went away
                return response
        finished = True
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response
    finally:
        # A connection whose answer was read to the end goes back to the pool; any other is
        # closed, since unread bytes would corrupt the next request on it.
        if finished:
            upstream.release()
        else:
            upstream.close()


def _small(request: web.Request, upstream: aiohttp.ClientResponse) -> bool:
    """A body of known, small length (HEAD answers and 204/304 have none to wait for)."""
    length = upstream.content_length
    return (
        length is not None
        and length <= SMALL_BODY
        and request.method != "HEAD"
        and upstream.status not in (204, 304)
    )


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()
