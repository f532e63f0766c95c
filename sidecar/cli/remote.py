"""CLI commands that talk to a running sidecar over HTTP."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp

from sidecar import config
from sidecar.plugin.manager import Plugins

TIMEOUT = aiohttp.ClientTimeout(total=30)


class Unreachable(RuntimeError):
    pass


async def call(
    method: str,
    url: str,
    *,
    json_body: Any = None,
    headers: dict[str, str] | None = None,
    session: aiohttp.ClientSession | None = None,
) -> tuple[int, Any]:
    """One HTTP call: (status, JSON or text); Unreachable when it cannot connect."""
    own = session is None
    session = session or aiohttp.ClientSession(timeout=TIMEOUT)
    try:
        async with session.request(method, url, json=json_body, headers=headers) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text
    except (TimeoutError, aiohttp.ClientConnectionError) as exc:
        raise Unreachable(f"cannot reach the sidecar at {url}: {exc}") from exc
    finally:
        if own:
            await session.close()


def health(args: argparse.Namespace) -> int:
    try:
        status, body = asyncio.run(call("GET", f"{args.url}/api/enhanced-locks/health"))
    except Unreachable as exc:
        print(f"unhealthy: {exc} [EL001]")
        return 1
    print(json.dumps(body, indent=2))
    state = body.get("status") if isinstance(body, dict) else None
    return 0 if status == 200 and state in ("healthy", "degraded", "disabled") else 1


def locks_list(args: argparse.Namespace) -> int:
    async def fetch() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        after: str | None = None
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            while True:
                params = {
                    k: v
                    for k, v in (
                        ("owner", args.owner),
                        ("prefix", args.prefix),
                        ("after", after),
                        ("limit", "1000"),
                    )
                    if v
                }
                url = f"{args.url}/api/enhanced-locks/locks"
                async with session.get(url, params=params) as resp:
                    body = await resp.json()
                    if resp.status != 200:
                        raise Unreachable(f"{resp.status}: {body}")
                out += body["locks"]
                after = body["next_after"]
                if after is None:
                    return out

    try:
        grants = asyncio.run(fetch())
    except Unreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(grants, indent=2))
        return 0
    print(f"{'KEY':50} {'OWNER':30} {'TOKEN':>8}  LEASE")
    for g in grants:
        lease = "-" if g["lease_expires_at"] is None else f"{g['lease_expires_at']:.0f}"
        print(f"{g['key']:50} {g['owner']['id']:30} {g['token']:>8}  {lease}")
    print(f"{len(grants)} lock(s)")
    return 0


def locks_test_basic(args: argparse.Namespace) -> int:
    from sidecar.cli.selftest import run_basic

    return asyncio.run(run_basic(args.url))


def config_set(args: argparse.Namespace) -> int:
    dotted, sep, raw = args.assignment.partition("=")
    if not sep:
        print("error: expected enhanced-locking.KEY=VALUE [EL003]", file=sys.stderr)
        return 1
    env = dict(os.environ)
    plugins = Plugins.load(env=env)
    path = (
        getattr(args, "config", None)
        or config.default_config_path(env)
        or Path("atlantis-sidecar.toml")
    )
    result = config.set_value(path, dotted, raw, env=env, known_names=plugins.known_names())
    if not result.ok:
        for problem in result.problems:
            print(problem, file=sys.stderr)
        print(f"not changed: {path} [EL003]", file=sys.stderr)
        return 1
    print(f"enhanced-locking.{result.key}: {result.old} -> {result.new} (written to {result.file})")
    settings = config.load(path, env=env, known_names=plugins.known_names()).settings
    if not settings.admin_token:
        print("no admin-token configured: reload the running sidecar with SIGHUP")
        return 0
    try:
        status, body = asyncio.run(
            call(
                "POST",
                f"{args.url}/api/enhanced-locks/config/reload",
                headers={"Authorization": f"Bearer {settings.admin_token}"},
            )
        )
    except Unreachable:
        print(f"no sidecar answered at {args.url}; the change applies when it starts")
        return 0
    if status != 200:
        print(f"the running sidecar refused the reload ({status}): {body}", file=sys.stderr)
        return 1
    if result.restart_required or body.get("restart_required"):
        print("reloaded; this change takes effect after a restart")
    else:
        print("reloaded; the change is live")
    return 0
