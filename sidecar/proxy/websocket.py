"""WebSocket pass-through (Atlantis's `/jobs/{id}/ws` log streams).

The sidecar completes one handshake with the caller and one with Atlantis, then two pumps copy
frames across: text, binary, ping and pong (with their payloads), and close with its code and
reason. Neither side answers pings or closes on its own (`autoping=False, autoclose=False`), so
whatever one end sends, the other end receives, and the answer comes back from the real peer.
Either side closing (or vanishing) closes the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, hdrs, web
from multidict import CIMultiDict

from sidecar.api.appkeys import PROXY_STATE, RUNTIME, UPSTREAM_SESSION
from sidecar.proxy.headers import (
    ProxiedResponse,
    connection_tokens,
    end_to_end,
    upstream_request_headers,
)
from sidecar.proxy.upstream import classify, failure_response, target

log = logging.getLogger("enhanced-locking.proxy")

# How long a close handshake may take on either side before the connection is simply dropped.
CLOSE_TIMEOUT = 10.0
# When one pump has ended, how long the other gets to finish the close handshake.
DRAIN_TIMEOUT = 5.0


class Socket(Protocol):
    """What the pumps need of either end (aiohttp's server and client WebSocket classes)."""

    @property
    def close_code(self) -> int | None: ...

    @property
    def closed(self) -> bool: ...

    async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage: ...  # noqa: ASYNC109

    async def send_str(self, data: str, compress: int | None = None) -> None: ...

    async def send_bytes(self, data: bytes, compress: int | None = None) -> None: ...

    async def ping(self, message: bytes = b"") -> None: ...

    async def pong(self, message: bytes = b"") -> None: ...

    async def close(self, *, code: int = ..., message: bytes = b"") -> bool: ...


def is_upgrade(request: web.Request) -> bool:
    headers = request.headers
    return headers.get(hdrs.UPGRADE, "").lower() == "websocket" and "upgrade" in connection_tokens(
        headers
    )


def sendable(code: int | None) -> int:
    """A close code that may go on the wire: 1005/1006/1015 only describe a close locally."""
    if code is None or code in (WSCloseCode.ABNORMAL_CLOSURE, 1005, 1015) or code < 1000:
        return WSCloseCode.OK if code == 1005 else WSCloseCode.GOING_AWAY
    return code


async def proxy_websocket(request: web.Request) -> web.StreamResponse:
    settings = request.app[RUNTIME].settings
    session = request.app[UPSTREAM_SESSION]
    protocols = [
        p.strip()
        for value in request.headers.getall(hdrs.SEC_WEBSOCKET_PROTOCOL, ())
        for p in value.split(",")
        if p.strip()
    ]
    try:
        async with asyncio.timeout(settings.proxy.connect_timeout + settings.proxy.read_timeout):
            upstream = await session.ws_connect(
                target(settings, request.raw_path),
                method=request.method,
                headers=upstream_request_headers(request, websocket=True),
                protocols=protocols,
                autoclose=False,
                autoping=False,
                compress=0,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT),
            )
    except aiohttp.WSServerHandshakeError as exc:
        # Atlantis answered without upgrading (401 without credentials, 404 for no such job):
        # pass its status and headers on. aiohttp has dropped that answer's body by now.
        headers = end_to_end(CIMultiDict(exc.headers)) if exc.headers is not None else None
        if headers is not None:
            headers.popall(hdrs.CONTENT_LENGTH, None)
        log.info("proxy websocket %s: Atlantis answered %d", request.path, exc.status)
        refused = ProxiedResponse(status=exc.status, reason=None, headers=headers or CIMultiDict())
        await refused.prepare(request)
        await refused.write_eof()
        return refused
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return failure_response(request, classify(exc, settings))

    client = web.WebSocketResponse(
        protocols=(upstream.protocol,) if upstream.protocol else (),
        autoclose=False,
        autoping=False,
        compress=False,
        timeout=CLOSE_TIMEOUT,
    )
    pair = (client, upstream)
    state = request.app[PROXY_STATE]
    try:
        await client.prepare(request)
        state.websockets.add(pair)
        await _pump_both(client, upstream)
    finally:
        state.websockets.discard(pair)
        if not upstream.closed:
            await upstream.close(code=WSCloseCode.GOING_AWAY)
    return client


async def _pump(source: Socket, sink: Socket) -> None:
    """Copy frames from `source` to `sink` until `source` closes."""
    try:
        while True:
            msg = await source.receive()
            kind = msg.type
            if kind is WSMsgType.TEXT:
                await sink.send_str(msg.data)
            elif kind is WSMsgType.BINARY:
                await sink.send_bytes(msg.data)
            elif kind is WSMsgType.PING:
                await sink.ping(msg.data)
            elif kind is WSMsgType.PONG:
                await sink.pong(msg.data)
            elif kind is WSMsgType.CLOSE:
                # source's peer closes with a code: tell sink's peer the same, then answer
                # source's peer with whatever sink's peer answered.
                reason = (msg.extra or "").encode()
                await sink.close(code=sendable(msg.data), message=reason)
                await source.close(code=sendable(sink.close_code or msg.data))
                return
            else:
                # CLOSING: the other pump is closing `source` and handles both sides.
                # CLOSED/ERROR: source's connection is gone; the peer on the other side must
                # learn that too.
                if kind is not WSMsgType.CLOSING and not sink.closed:
                    await sink.close(code=WSCloseCode.GOING_AWAY)
                return
    except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
        log.debug("websocket pump ended: %r", exc)
        if not sink.closed:
            with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
                await sink.close(code=WSCloseCode.GOING_AWAY)


async def _pump_both(client: Socket, upstream: Socket) -> None:
    up = asyncio.create_task(_pump(client, upstream), name="ws-client-to-atlantis")
    down = asyncio.create_task(_pump(upstream, client), name="ws-atlantis-to-client")
    try:
        _, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if pending:
            # The first pump to end has closed both ends; give the other its close handshake.
            await asyncio.wait(pending, timeout=DRAIN_TIMEOUT)
    finally:
        for task in (up, down):
            task.cancel()
        await asyncio.gather(up, down, return_exceptions=True)


async def close_all(app: web.Application) -> None:
    """`on_shutdown`: close proxied WebSockets (1001, going away) so shutdown is not held up by
    log streams that never end on their own."""
    for client, upstream in list(app[PROXY_STATE].websockets):
        with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
            await asyncio.gather(
                client.close(code=WSCloseCode.GOING_AWAY, message=b"sidecar shutting down"),
                upstream.close(code=WSCloseCode.GOING_AWAY, message=b"sidecar shutting down"),
            )
