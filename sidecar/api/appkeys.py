"""Every key under which the app keeps state (aiohttp's typed AppKeys, all in one place)."""

from __future__ import annotations

from aiohttp import web

from sidecar.runtime import Runtime

RUNTIME = web.AppKey("runtime", Runtime)
