"""Admin operations. Each needs `Authorization: Bearer <admin-token>`, compared in constant time."""

from __future__ import annotations

import hmac

from aiohttp import web

from sidecar.api import bodies
from sidecar.api.appkeys import RUNTIME
from sidecar.api.locks import PREFIX, change_json
from sidecar.errors import Code, LockError

routes = web.RouteTableDef()


def require_admin(request: web.Request) -> None:
    expected = request.app[RUNTIME].settings.admin_token
    if not expected:
        raise LockError(
            Code.PERMISSION_DENIED, "admin operations are off: no admin-token is configured"
        )
    header = request.headers.get("Authorization", "")
    given = header[len("Bearer ") :] if header.startswith("Bearer ") else ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise LockError(Code.PERMISSION_DENIED, "missing or wrong admin token", status=401)


@routes.post(PREFIX + "/config/reload")
async def reload_config(request: web.Request) -> web.Response:
    require_admin(request)
    record = request.app[RUNTIME].reload(by="admin API")
    return web.json_response({"reloaded": True, **record})


@routes.post(PREFIX + "/admin/force-release")
async def force_release(request: web.Request) -> web.Response:
    require_admin(request)
    body = await bodies.json_object(request)
    bodies.only(body, {"key", "keys"})
    change = await request.app[RUNTIME].engine.force_release(bodies.keys(body))
    return web.json_response(change_json(change))
