"""`GET /api/locks/health`: is the legacy lock path (Atlantis itself) up?

The operators' guide checks this right after a rollback (`enabled = false`), so it is the
sidecar's own route and answers whatever `enabled` says. It asks Atlantis's `/healthz` and
`/readyz` (exempt from Atlantis's basic auth; `/readyz` exists since v0.44, so its 404 only means
an older Atlantis) and reports reachability and latency: 200 when Atlantis is healthy, 503 when
not. The upstream URL is shown without credentials.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from sidecar.api.appkeys import RUNTIME, UPSTREAM_SESSION
from sidecar.proxy.upstream import target

routes = web.RouteTableDef()

PROBE_TIMEOUT = 2.0


async def _probe(session: aiohttp.ClientSession, url: URL) -> dict[str, Any]:
    started = time.perf_counter()
    result: dict[str, Any] = {}
    try:
        async with session.get(
            url, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
        ) as answer:
            await answer.read()
            result = {"reachable": True, "status_code": answer.status, "ok": answer.status == 200}
    except TimeoutError:
        result = {"reachable": False, "ok": False, "error": f"no answer within {PROBE_TIMEOUT:g}s"}
    except (aiohttp.ClientError, OSError) as exc:
        result = {"reachable": False, "ok": False, "error": f"unreachable ({type(exc).__name__})"}
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
    return result


@routes.get("/api/locks/health", allow_head=False)
async def legacy_health(request: web.Request) -> web.Response:
    settings = request.app[RUNTIME].settings
    session = request.app[UPSTREAM_SESSION]
    healthz, readyz = await asyncio.gather(
        _probe(session, target(settings, "/healthz")),
        _probe(session, target(settings, "/readyz")),
    )
    if readyz.get("status_code") == 404:
        readyz["note"] = "not served by this Atlantis (added in v0.44)"
    ready = readyz["ok"] or readyz.get("status_code") == 404
    healthy = bool(healthz["ok"]) and ready
    m = settings.migration
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "legacy": {
            "upstream": str(target(settings, "/")).rstrip("/"),
            "healthz": healthz,
            "readyz": readyz,
        },
        "enhanced_locking": {
            "enabled": settings.enabled,
            "active_system": m.active_system,
            "traffic_percentage": m.traffic_percentage,
        },
        # Who answers Atlantis's lock routes right now.
        "lock_routes": (
            "atlantis"
            if not settings.enabled or (m.active_system != "enhanced" and m.traffic_percentage == 0)
            else "split by key between atlantis and the engine"
        ),
    }
    return web.json_response(body, status=200 if healthy else 503)
