"""What the proxy keeps between requests (one per app, under the PROXY_STATE app key)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import ClientWebSocketResponse, web

from sidecar.proxy.divergence import DivergenceLog


@dataclass
class ProxyState:
    # Open proxied WebSockets (caller side, Atlantis side), closed together at shutdown.
    websockets: set[tuple[web.WebSocketResponse, ClientWebSocketResponse]] = field(
        default_factory=set
    )
    divergences: DivergenceLog = field(default_factory=DivergenceLog)
