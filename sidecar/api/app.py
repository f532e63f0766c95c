"""The app factory: routes, middlewares, and one cleanup context per resource."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from sidecar.api import admin, locks, status
from sidecar.api.appkeys import PROXY_STATE, RUNTIME
from sidecar.api.bodies import MAX_BODY_BYTES
from sidecar.api.locks import PREFIX
from sidecar.errors import Code, LockError
from sidecar.proxy import headers, legacy_health, lock_routes, stream, upstream, websocket
from sidecar.proxy.state import ProxyState
from sidecar.runtime import Runtime

log = logging.getLogger("enhanced-locking.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Enhanced endpoints that still answer when `enabled = false`: so operators can see why, and
# so `config set enhanced-locking.enabled=true` can reload a disabled sidecar back on.
ALWAYS_ON = {
    PREFIX + "/health",
    PREFIX + "/plugins",
    PREFIX + "/openapi.json",
    PREFIX + "/config/reload",
}


def error_response(exc: LockError) -> web.Response:
    return web.json_response(exc.to_json(), status=exc.status)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except LockError as exc:
        level = logging.ERROR if exc.status >= 500 else logging.INFO
        if exc.code in (Code.QUEUE_OVERFLOW, Code.DEADLOCK_VICTIM):
            level = logging.WARNING
        log.log(level, "%s %s: %s", request.method, request.path, exc)
        return error_response(exc)
    except web.HTTPException as exc:
        if not request.path.startswith(PREFIX) or exc.status < 400:
            raise
        code = Code.NOT_FOUND if exc.status == 404 else Code.BAD_REQUEST
        return error_response(LockError(code, exc.reason, status=exc.status))


@web.middleware
async def enabled_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    if (
        not runtime.settings.enabled
        and request.path.startswith(PREFIX)
        and request.path not in ALWAYS_ON
    ):
        raise LockError(Code.INVALID_CONFIG, "enhanced locking system disabled", status=503)
    return await handler(request)


def create_app(runtime: Runtime) -> web.Application:
    app = web.Application(
        middlewares=[errors_as_json, enabled_only], client_max_size=MAX_BODY_BYTES
    )
    app[RUNTIME] = runtime
    app.add_routes(locks.routes)
    app.add_routes(status.routes)
    app.add_routes(admin.routes)
    # Always routed: the handler answers 404 while `metrics` is off, so a reload can turn it on.
    app.router.add_get(runtime.settings.metrics_config.endpoint, status.prometheus)
    # Atlantis's lock routes (split by key), then everything else to Atlantis: the catch-all
    # comes last so that every route above wins over it.
    app[PROXY_STATE] = ProxyState()
    app.add_routes(legacy_health.routes)
    app.add_routes(lock_routes.routes)
    app.router.add_route("*", stream.CATCH_ALL, stream.proxy)
    app.on_response_prepare.append(headers.drop_server_defaults)
    app.on_shutdown.append(websocket.close_all)
    app.cleanup_ctx.append(upstream.session_ctx)
    app.cleanup_ctx.append(backend_ctx)
    app.cleanup_ctx.append(events_ctx)
    app.cleanup_ctx.append(engine_ctx)
    app.cleanup_ctx.append(detector_ctx)
    app.on_shutdown.append(stop_waiting)
    return app


async def backend_ctx(app: web.Application) -> AsyncIterator[None]:
    backend = app[RUNTIME].backend
    try:
        await backend.start()
    except BaseException:
        await backend.close()
        raise
    log.info("backend %s ready", backend.name)
    yield
    await backend.close()


async def events_ctx(app: web.Application) -> AsyncIterator[None]:
    events = app[RUNTIME].events
    await events.start()
    yield
    await events.stop()


async def engine_ctx(app: web.Application) -> AsyncIterator[None]:
    engine = app[RUNTIME].engine
    await engine.start()
    yield
    await engine.stop()


async def detector_ctx(app: web.Application) -> AsyncIterator[None]:
    detector = app[RUNTIME].detector
    await detector.start()
    yield
    await detector.stop()


async def stop_waiting(app: web.Application) -> None:
    """On shutdown, answer every waiting caller now instead of holding the shutdown up."""
    await app[RUNTIME].engine.stop()
