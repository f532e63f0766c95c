"""`atlantis-sidecar serve`: run the sidecar until SIGTERM, reloading config on SIGHUP."""

from __future__ import annotations

import asyncio
import logging
import signal

import uvloop
from aiohttp import web

from sidecar import __version__
from sidecar.api.app import create_app
from sidecar.api.appkeys import RUNTIME
from sidecar.errors import LockError
from sidecar.runtime import Runtime

log = logging.getLogger("enhanced-locking.serve")

SHUTDOWN_TIMEOUT = 10.0


def serve(runtime: Runtime) -> int:
    app = create_app(runtime)
    app.on_startup.append(_install_sighup)
    s = runtime.settings
    if not s.api_token:
        log.warning("no api-token configured: mutating enhanced-lock endpoints are open")
    log.info(
        "atlantis-sidecar %s listening on %s (backend %s, enabled=%s)",
        __version__,
        s.listen,
        s.backend,
        s.enabled,
    )
    web.run_app(
        app,
        host=s.listen_host,
        port=s.listen_port,
        loop=uvloop.new_event_loop(),
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        access_log=None,
        print=None,
        handle_signals=True,
        # A caller that hangs up while waiting must not be granted a lock nobody will release.
        handler_cancellation=True,
    )
    return 0


async def _install_sighup(app: web.Application) -> None:
    runtime = app[RUNTIME]

    def reload() -> None:
        try:
            runtime.reload(by="SIGHUP")
        except LockError as exc:
            log.error(
                "config reload on SIGHUP refused: %s %s", exc, exc.details.get("problems", "")
            )

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
