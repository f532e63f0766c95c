"""`atlantis-sidecar`: the commands of the operators' troubleshooting guide.

Commands that inspect a running sidecar talk to it over HTTP (`--url`); commands about config and
plugins run locally on the same code the server uses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sidecar import __version__, config
from sidecar.errors import LockError
from sidecar.plugin.manager import PluginLoadError, Plugins

DEFAULT_URL = "http://127.0.0.1:4141"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="TOML config file (default: $ATLANTIS_SIDECAR_CONFIG, else ./atlantis-sidecar.toml)",
    )


def _url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("ATLANTIS_SIDECAR_URL", DEFAULT_URL),
        help=f"URL of a running sidecar (default: $ATLANTIS_SIDECAR_URL, else {DEFAULT_URL})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atlantis-sidecar", description="Queued, fenced, deadlock-aware locks for Atlantis."
    )
    _common(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the sidecar")
    _common(serve)
    serve.add_argument("--listen", help="host:port to listen on (listen)")
    serve.add_argument("--data-dir", help="where the sqlite backend keeps its file (data-dir)")
    serve.add_argument("--backend", help="lock backend plugin name (backend)")
    serve.add_argument("--upstream", help="Atlantis's URL (upstream)")

    cfg = sub.add_parser("config", help="validate, show or change the configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    validate = cfg_sub.add_parser("validate", help="list every configuration problem")
    _common(validate)
    validate.add_argument("section", nargs="?", choices=["enhanced-locking"])
    show = cfg_sub.add_parser("show", help="print the effective configuration (secrets hidden)")
    _common(show)
    setp = cfg_sub.add_parser("set", help="change one key in the file and reload the sidecar")
    _common(setp)
    _url(setp)
    setp.add_argument("assignment", help="enhanced-locking.KEY=VALUE")

    plugins = sub.add_parser("plugins", help="list loaded plugins")
    _common(plugins)
    plugins.add_argument("--json", action="store_true")

    sub.add_parser("version", help="print the version")

    health = sub.add_parser("health", help="health of a running sidecar")
    _url(health)

    lk = sub.add_parser("locks", help="work with locks of a running sidecar")
    lk_sub = lk.add_subparsers(dest="locks_command", required=True)
    ls = lk_sub.add_parser("list", help="list held locks")
    _url(ls)
    ls.add_argument("--owner")
    ls.add_argument("--prefix")
    ls.add_argument("--json", action="store_true")
    test = lk_sub.add_parser("test", help="exercise a running sidecar, PASS/FAIL per step")
    _url(test)
    test.add_argument("--basic", action="store_true", required=True)
    deadlock = lk_sub.add_parser(
        "deadlock-test", help="build real deadlocks through a running sidecar, see them resolved"
    )
    _url(deadlock)
    deadlock.add_argument("--users", type=int, default=5)
    deadlock.add_argument("--resources", type=int, default=3)
    bench = lk_sub.add_parser("benchmark", help="measure the configured backend and its floor")
    _common(bench)
    bench.add_argument("--duration", default="10s", help="per measurement (default 10s)")
    bench.add_argument("--concurrency", type=int, default=8)
    return parser


def _load(
    args: argparse.Namespace, overrides: dict[str, str] | None = None
) -> tuple[config.LoadResult, Plugins, Path | None]:
    env = dict(os.environ)
    plugins = Plugins.load(env=env)
    path = getattr(args, "config", None) or config.default_config_path(env)
    result = config.load(
        path, env=env, overrides=overrides or {}, known_names=plugins.known_names()
    )
    return result, plugins, path


def _print_problems(result: config.LoadResult) -> None:
    for problem in result.problems:
        print(problem, file=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> int:
    from sidecar import logs
    from sidecar.cli.serve import serve
    from sidecar.runtime import ConfigSource, Runtime

    overrides = {
        key: value
        for key, value in (
            ("listen", args.listen),
            ("data-dir", args.data_dir),
            ("backend", args.backend),
            ("upstream", args.upstream),
        )
        if value is not None
    }
    result, plugins, path = _load(args, overrides)
    logs.configure(result.settings.log_level)
    if result.problems:
        _print_problems(result)
        print(f"configuration invalid ({len(result.problems)} problems) [EL003]", file=sys.stderr)
        return 1
    runtime = Runtime.build(
        result.settings, plugins, ConfigSource(path, dict(os.environ), overrides)
    )
    return serve(runtime)


def cmd_config(args: argparse.Namespace) -> int:
    if args.config_command == "set":
        from sidecar.cli.remote import config_set

        return config_set(args)
    result, _, path = _load(args)
    if args.config_command == "validate":
        if result.problems:
            _print_problems(result)
            print(f"configuration invalid: {len(result.problems)} problem(s) [EL003]")
            return 1
        print(f"configuration valid ({path or 'defaults, no config file'})")
        return 0
    print(config.to_toml(result.settings), end="")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    plugins = Plugins.load(env=dict(os.environ))
    infos = plugins.describe()
    if args.json:
        print(
            json.dumps(
                {"plugins": [i.to_json() for i in infos], "blocked": plugins.blocked()}, indent=2
            )
        )
        return 0
    for info in infos:
        print(f"{info.name} {info.version} ({info.source})")
        print(f"  hooks: {', '.join(info.hooks)}")
        if info.provides:
            print(f"  provides: {', '.join(info.provides)}")
    for name in plugins.blocked():
        print(f"{name} (blocked by ATLANTIS_SIDECAR_DISABLE_PLUGINS)")
    return 0


def cmd_locks(args: argparse.Namespace) -> int:
    if args.locks_command == "benchmark":
        from sidecar.cli.benchmark import run_benchmark

        result, plugins, _ = _load(args)
        if result.problems:
            _print_problems(result)
            return 1
        return run_benchmark(result.settings, plugins, args)
    from sidecar.cli import remote

    if args.locks_command == "list":
        return remote.locks_list(args)
    if args.locks_command == "deadlock-test":
        from sidecar.cli.deadlock_test import run_deadlock_test

        return asyncio.run(run_deadlock_test(args.url, args.users, args.resources))
    return remote.locks_test_basic(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "version":
            print(f"atlantis-sidecar {__version__}")
            return 0
        if args.command == "health":
            from sidecar.cli.remote import health

            return health(args)
        handler = {
            "serve": cmd_serve,
            "config": cmd_config,
            "plugins": cmd_plugins,
            "locks": cmd_locks,
        }[args.command]
        return handler(args)
    except PluginLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except LockError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. the listen address is taken
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
