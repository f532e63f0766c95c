"""Which headers cross the proxy, in each direction, and the ones the proxy adds.

Hop-by-hop headers describe one connection, not the message, so a proxy must drop them both ways
(RFC 9110 section 7.6.1): `Connection`, every header `Connection` names, and the fixed list below.
Everything else passes untouched: `Authorization` (Atlantis's basic auth), `X-Atlantis-Token`,
cookies, `Content-Encoding`, `Location`.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "trailer",
    }
)
# `Expect: 100-continue` is answered by the sidecar's own server for its hop; forwarding it would
# make the upstream request wait a round trip for a second 100 that nobody needs.
REQUEST_DROP = HOP_BY_HOP | {"expect"}
# The WebSocket handshake is made afresh on each side (new key, own extensions), so the client's
# Sec-WebSocket-* headers must not reach Atlantis.
WEBSOCKET_PREFIX = "sec-websocket-"

# Headers aiohttp's server adds by default. A proxied answer must carry Atlantis's headers only,
# so `drop_server_defaults` takes these back off when Atlantis did not send them.
SERVER_DEFAULTS = (hdrs.SERVER, hdrs.CONTENT_TYPE, hdrs.DATE)


def connection_tokens(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    """The header names listed in (every) `Connection` header, lower-cased."""
    tokens: set[str] = set()
    for value in headers.getall(hdrs.CONNECTION, ()):
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def end_to_end(
    headers: CIMultiDictProxy[str] | CIMultiDict[str],
    drop: frozenset[str] = HOP_BY_HOP,
    *,
    websocket: bool = False,
) -> CIMultiDict[str]:
    """A copy of `headers` without hop-by-hop ones (and the ones `Connection` names), in order."""
    named = connection_tokens(headers) if hdrs.CONNECTION in headers else ()
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower in drop or lower in named:
            continue
        if websocket and lower.startswith(WEBSOCKET_PREFIX):
            continue
        out.add(name, value)
    return out


def upstream_request_headers(request: web.Request, *, websocket: bool = False) -> CIMultiDict[str]:
    """What Atlantis receives: the caller's end-to-end headers plus `X-Forwarded-*`.

    `Host` stays the caller's, so Atlantis sees the name users typed. An `X-Forwarded-For` chain
    from a proxy in front of us is extended; `X-Forwarded-Proto`/`-Host` set by such a proxy (a
    TLS-terminating ingress) are kept, since it knows the original scheme and host better.
    """
    headers = end_to_end(request.headers, REQUEST_DROP, websocket=websocket)
    peer = request.remote or ""
    prior = ", ".join(headers.popall(hdrs.X_FORWARDED_FOR, ()))
    headers[hdrs.X_FORWARDED_FOR] = f"{prior}, {peer}" if prior else peer
    if hdrs.X_FORWARDED_PROTO not in headers:
        headers[hdrs.X_FORWARDED_PROTO] = request.scheme
    host = request.headers.get(hdrs.HOST)
    if host and hdrs.X_FORWARDED_HOST not in headers:
        headers[hdrs.X_FORWARDED_HOST] = host
    return headers


class ProxiedResponse(web.StreamResponse):
    """An answer whose status, reason and headers are Atlantis's, not aiohttp's defaults.

    `coalesce`: hold the headers back until the first piece of body, so a small answer leaves
    in one write (one syscall, one packet) instead of two. Only for answers whose body is
    already at hand: a stream must show its headers at once.
    """

    def __init__(
        self,
        *,
        status: int,
        reason: str | None,
        headers: CIMultiDict[str],
        coalesce: bool = False,
    ) -> None:
        super().__init__(status=status, reason=reason, headers=headers)
        self.absent: tuple[str, ...] = tuple(h for h in SERVER_DEFAULTS if h not in headers)
        if coalesce:
            # aiohttp's own switch (web.Response sets it): headers go out with the body.
            self._send_headers_immediately = False


async def drop_server_defaults(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare` hook: remove the headers aiohttp added to a proxied answer."""
    if isinstance(response, ProxiedResponse):
        for name in response.absent:
            response.headers.popall(name, None)


def without(headers: CIMultiDict[str], names: Iterable[str]) -> CIMultiDict[str]:
    out = headers.copy()
    for name in names:
        out.popall(name, None)
    return out
