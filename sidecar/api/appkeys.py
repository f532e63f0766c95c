"""Every key under which the app keeps state (aiohttp's typed AppKeys, all in one place)."""

from __future__ import annotations

from aiohttp import ClientSession, web

from sidecar.proxy.state import ProxyState
from sidecar.runtime import Runtime

RUNTIME = web.AppKey("runtime", Runtime)
# The pooled connection to Atlantis, opened and closed by the proxy's cleanup context.
UPSTREAM_SESSION = web.AppKey("upstream_session", ClientSession)
# Open proxied WebSockets and reported divergences.
PROXY_STATE = web.AppKey("proxy_state", ProxyState)
