"""Read-only views for operators: health, metrics (JSON and Prometheus), queue, plugins, spec."""

from __future__ import annotations

import asyncio
import json
import time
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidecar import __version__
from sidecar.api.appkeys import RUNTIME
from sidecar.api.locks import PREFIX
from sidecar.errors import LockError
from sidecar.runtime import Runtime

routes = web.RouteTableDef()

HEALTH_CHECK_TIMEOUT = 2.0
SLOW_BACKEND_SECONDS = 0.5
DEGRADED_QUEUE_RATIO = 0.8


async def health_report(runtime: Runtime) -> dict[str, Any]:
    s = runtime.settings
    backend: dict[str, Any] = dict(runtime.backend.describe())
    started = time.perf_counter()
    reasons: list[str] = []
    try:
        await asyncio.wait_for(runtime.backend.ping(), HEALTH_CHECK_TIMEOUT)
        backend["status"] = "ok"
    except (LockError, TimeoutError) as exc:
        backend["status"] = "error"
        backend["error"] = str(exc) or "backend check timed out"
        reasons.append(f"backend: {backend['error']}")
    backend["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
    depth = runtime.stats.queue_depth
    if backend["status"] == "ok" and backend["latency_ms"] > SLOW_BACKEND_SECONDS * 1000:
        reasons.append(
            f"slow operation detected: backend check took {backend['latency_ms']:.0f} ms"
        )
    if depth >= DEGRADED_QUEUE_RATIO * s.queue_config.max_queue_size:
        reasons.append(f"queue approaching limit: {depth} of {s.queue_config.max_queue_size}")
    if not s.enabled:
        status = "disabled"
    elif backend["status"] != "ok":
        status = "unhealthy"
    else:
        status = "degraded" if reasons else "healthy"
    runtime.stats.backend_health.set({"healthy": 1, "degraded": 0.5}.get(status, 0))
    return {
        "status": status,
        "version": __version__,
        "enabled": s.enabled,
        "backend": backend,
        "reasons": reasons,
        "queue": {"depth": depth, "max_queue_size": s.queue_config.max_queue_size},
        "migration": {
            "active_system": s.migration.active_system,
            "traffic_percentage": s.migration.traffic_percentage,
        },
        "uptime_seconds": round(time.time() - runtime.started_at, 3),
    }


@routes.get(PREFIX + "/health")
async def health(request: web.Request) -> web.Response:
    report = await health_report(request.app[RUNTIME])
    return web.json_response(report, status=503 if report["status"] == "unhealthy" else 200)


@routes.get(PREFIX + "/metrics")
async def metrics(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    summary = await runtime.backend.queue_summary()
    runtime.stats.set_queue_depth(summary.depth)
    return web.json_response({**runtime.stats.to_json(), "backend": runtime.settings.backend})


async def queue_report(runtime: Runtime) -> dict[str, Any]:
    summary = await runtime.backend.queue_summary()
    runtime.stats.set_queue_depth(summary.depth)
    oldest = summary.oldest_enqueued_at
    return {
        "depth": summary.depth,
        "by_priority": {
            p: summary.by_priority.get(p, 0) for p in ("low", "normal", "high", "critical")
        },
        "oldest_wait_seconds": round(time.time() - oldest, 3) if oldest is not None else 0,
        "keys_with_waiters": summary.keys_with_waiters,
        "max_queue_size": runtime.settings.queue_config.max_queue_size,
        "overflow_policy": runtime.settings.queue_config.overflow_policy,
    }


@routes.get(PREFIX + "/queue/status")
async def queue_status(request: web.Request) -> web.Response:
    return web.json_response(await queue_report(request.app[RUNTIME]))


@routes.get(PREFIX + "/queue/metrics")
async def queue_metrics(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    counts = runtime.stats.counts
    return web.json_response(
        {
            **await queue_report(runtime),
            **{
                k: counts[k]
                for k in (
                    "timeouts_total",
                    "overflows_total",
                    "cancelled_total",
                    "handoffs_total",
                    "grants_total",
                )
            },
        }
    )


@routes.get(PREFIX + "/deadlock/status")
async def deadlock_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[RUNTIME].detector.status())


@routes.get(PREFIX + "/plugins")
async def plugins(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    return web.json_response(
        {
            "plugins": [p.to_json() for p in runtime.plugins.describe()],
            "blocked": runtime.plugins.blocked(),
        }
    )


def openapi_document() -> dict[str, Any]:
    text = resources.files("sidecar.api").joinpath("openapi.json").read_text()
    doc: dict[str, Any] = json.loads(text)
    doc["info"]["version"] = __version__
    return doc


@routes.get(PREFIX + "/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def prometheus(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    if not runtime.settings.metrics:
        # Off: the path is Atlantis's again (it may serve its own metrics there).
        from sidecar.proxy.stream import forward

        return await forward(request)
    return web.Response(
        body=generate_latest(runtime.stats.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
