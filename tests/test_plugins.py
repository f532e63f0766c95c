"""Plugins (design.md "Plugins (pluggy)"): documented hooks, loud loading failures, registries that
config picks from by name, and event hooks that never slow lock traffic.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from sidecar import config
from sidecar.config import Settings
from sidecar.engine.events import EventKind, LockEvent
from sidecar.engine.manager import Granted, LockManager
from sidecar.engine.model import Owner, Request
from sidecar.engine.policies import OverflowPolicy
from sidecar.metrics.stats import EngineStats
from sidecar.plugin import hookimpl, spec
from sidecar.plugin.dispatch import EventDispatcher
from sidecar.plugin.manager import DISABLE_ENV, PluginLoadError, Plugins
from sidecar.plugin.registry import Registry
from sidecar.runtime import engine_settings, overflow_policy
from tests.conftest import settings_with
from tests.processes import free_port, running_sidecar

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"

HOOKS = sorted(
    name for name, fn in vars(spec).items()
    if name.startswith("atlantis_sidecar_") and inspect.isfunction(fn)
)

# -- the hooks are the plugin API: specified, typed, documented ------------------------------------


def test_spec_module_defines_the_hooks() -> None:
    # Guards the parametrized tests below against silently testing nothing.
    assert "atlantis_sidecar_lock_event" in HOOKS
    assert "atlantis_sidecar_register_overflow_policies" in HOOKS


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_a_typed_and_documented_hookspec(hook: str) -> None:
    fn = getattr(spec, hook)
    assert getattr(fn, f"{spec.PROJECT}_spec", None) is not None, f"{hook} is not a @hookspec"
    assert inspect.getdoc(fn), f"{hook} has no docstring"
    signature = inspect.signature(fn)
    assert signature.return_annotation is not inspect.Signature.empty
    for param in signature.parameters.values():
        assert param.annotation is not inspect.Parameter.empty, f"{hook}({param.name}) untyped"


def markdown_sections(text: str, heading_contains: str) -> str:
    """The text under every heading containing `heading_contains`, subsections included.

    Lines inside fenced code blocks are never headings (`# comment` in a shell example).
    """
    out: list[str] = []
    inside_level: int | None = None
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        heading = None if fenced else re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if heading is not None:
            level = len(heading.group(1))
            if inside_level is not None and level <= inside_level:
                inside_level = None
            if inside_level is None and heading_contains in heading.group(2):
                inside_level = level
        if inside_level is not None:
            out.append(line)
    return "\n".join(out)


def test_markdown_sections_ignores_code_fences_and_stops_at_the_next_heading() -> None:
    text = "# Top\n## Plugins\nA\n```sh\n# not a heading\n```\n### Sub\nB\n## Other\nC\n"
    section = markdown_sections(text, "Plugins")
    assert "A" in section and "# not a heading" in section and "B" in section
    assert "C" not in section


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_in_readme_plugins_section(hook: str) -> None:
    # Modelled on datasette's test_plugin_hooks_are_documented: a hook nobody can read about is
    # not part of the API. The README is the lead's; this test only reads it.
    assert README.exists(), f"{README} is missing"
    section = markdown_sections(README.read_text(encoding="utf-8"), "Plugins")
    assert section, "README.md has no heading containing 'Plugins'"
    assert re.search(rf"\b{hook}\b", section), (
        f"hook {hook} is not documented under README.md's Plugins heading"
    )


# -- a broken third-party plugin stops start-up, naming its distribution ---------------------------


@pytest.fixture
def broken_dist(tmp_path: Path) -> Path:
    """A real installed distribution `fake-dist` whose entry point names a missing module."""
    site = tmp_path / "site"
    info = site / "fake_dist-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-dist\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[atlantis_sidecar]\nbroken = no_such_module_xyz\n")
    (tmp_path / "empty.toml").write_text("[enhanced-locking]\n")
    return site


def sidecar_env(site: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLANTIS_")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)])
    env.update(extra)
    return env


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args], env=env, cwd=cwd, capture_output=True,
        text=True, timeout=60, check=False,
    )


def assert_names_broken_plugin(message: str) -> None:
    assert "broken" in message, message
    assert "fake-dist" in message or "fake_dist" in message, message
    assert "no_such_module_xyz" in message, message


def test_plugins_command_fails_naming_entry_point_and_distribution_of_broken_plugin(
    broken_dist: Path, tmp_path: Path
) -> None:
    result = run_cli(["plugins"], sidecar_env(broken_dist), tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert_names_broken_plugin(result.stderr)
    assert "Traceback" not in result.stderr


def test_serve_refuses_to_start_naming_entry_point_and_distribution_of_broken_plugin(
    broken_dist: Path, tmp_path: Path
) -> None:
    args = [
        "serve", "--listen", f"127.0.0.1:{free_port()}", "--backend", "memory",
        "--config", str(tmp_path / "empty.toml"),
    ]
    # A serve that started anyway would run until the timeout: run() kills it and raises.
    result = run_cli(args, sidecar_env(broken_dist), tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert_names_broken_plugin(result.stderr)


def test_disabling_broken_plugin_by_name_lets_plugins_command_list_the_rest(
    broken_dist: Path, tmp_path: Path
) -> None:
    env = sidecar_env(broken_dist, **{DISABLE_ENV: "broken"})
    result = run_cli(["plugins", "--json"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert listing["blocked"] == ["broken"]
    assert "plugins.overflow" in {p["name"] for p in listing["plugins"]}
    text = run_cli(["plugins"], env, tmp_path)
    assert text.returncode == 0, text.stderr
    assert "broken (blocked by ATLANTIS_SIDECAR_DISABLE_PLUGINS)" in text.stdout


def test_disabling_broken_plugin_by_name_lets_the_sidecar_serve(
    broken_dist: Path, tmp_path: Path
) -> None:
    env = sidecar_env(broken_dist, **{DISABLE_ENV: "broken"})
    args = ["--backend", "memory", "--config", str(tmp_path / "empty.toml")]
    log = tmp_path / "sidecar.log"
    with running_sidecar(args, log, env) as sidecar:  # waits for health, then stops it
        assert sidecar.proc.poll() is None
    assert "no_such_module_xyz" not in log.read_text(errors="replace")


# -- registration errors ---------------------------------------------------------------------------


class MisspelledHook:
    @hookimpl
    def atlantis_sidecar_lock_evnt(self, event: LockEvent) -> None:
        """Meant to be atlantis_sidecar_lock_event."""


def test_plugin_implementing_an_unknown_hook_fails_loading_naming_plugin_and_hook() -> None:
    with pytest.raises(PluginLoadError) as info:
        Plugins.load(env={}, entry_points=False, extra=[("bad", MisspelledHook())])
    message = str(info.value)
    assert "atlantis_sidecar_lock_evnt" in message
    assert "unknown hook" in message
    # The name the plugin was registered (and can be disabled) under, not an object's repr.
    assert "'bad'" in message, message


class WrongArgument:
    @hookimpl
    def atlantis_sidecar_lock_event(self, evnt: LockEvent) -> None:
        """Takes an argument the hook spec does not have."""


def test_plugin_taking_an_argument_the_hook_lacks_fails_loading_naming_plugin() -> None:
    with pytest.raises(PluginLoadError, match=r"(?s)'wrong'.*evnt"):
        Plugins.load(env={}, entry_points=False, extra=[("wrong", WrongArgument())])


class RegistersPolicy:
    def __init__(self, policy_name: str) -> None:
        self.policy_name = policy_name

    @hookimpl
    def atlantis_sidecar_register_overflow_policies(
        self, registry: Registry[Callable[[], OverflowPolicy]]
    ) -> None:
        registry.register(self.policy_name, NewcomerLoses)


class NewcomerLoses:
    def choose_victim(self, incoming: Request, waiting: Sequence[Request]) -> str:
        return incoming.id


def test_policy_name_registered_by_two_plugins_is_an_error_naming_both() -> None:
    extra = [("first_plugin", RegistersPolicy("dup")), ("second_plugin", RegistersPolicy("dup"))]
    with pytest.raises(PluginLoadError) as info:
        Plugins.load(env={}, entry_points=False, extra=extra)
    message = str(info.value)
    assert "'dup'" in message and "twice" in message
    assert "'first_plugin'" in message and "'second_plugin'" in message


def test_plugin_reusing_a_builtin_policy_name_is_an_error_naming_the_builtin() -> None:
    with pytest.raises(PluginLoadError) as info:
        Plugins.load(
            env={}, entry_points=False, extra=[("shadow", RegistersPolicy("reject_newest"))]
        )
    message = str(info.value)
    assert "'reject_newest'" in message
    assert "'plugins.overflow'" in message and "'shadow'" in message


def test_plugin_registered_policy_is_listed_with_its_provider() -> None:
    plugins = Plugins.load(env={}, entry_points=False, extra=[("mine", RegistersPolicy("mine"))])
    assert "mine" in plugins.overflow_policies.names()
    info = {i.name: i for i in plugins.describe()}["mine"]
    assert info.source == "in-process"
    assert info.provides == ("overflow policy:mine",)


# -- config picks plugins by name ------------------------------------------------------------------


def test_unknown_overflow_policy_in_config_is_el003_listing_the_known_names(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sidecar.toml"
    path.write_text('[enhanced-locking]\nqueue-config.overflow-policy = "fair_shair"\n')
    plugins = Plugins.load(env={}, entry_points=False, extra=[("mine", RegistersPolicy("mine"))])
    result = config.load(path, env={}, known_names=plugins.known_names())
    [problem] = [p for p in result.problems if "overflow-policy" in p.path]
    assert problem.code == "EL003"
    assert "fair_shair" in problem.message
    # Every name a loaded plugin registered, built-in or not, is offered.
    for name in ("reject_newest", "reject_oldest", "reject_lowest_priority", "mine"):
        assert name in problem.message, problem.message


def test_overflow_policy_registered_by_a_plugin_is_valid_config(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.toml"
    path.write_text('[enhanced-locking]\nqueue-config.overflow-policy = "mine"\n')
    plugins = Plugins.load(env={}, entry_points=False, extra=[("mine", RegistersPolicy("mine"))])
    result = config.load(path, env={}, known_names=plugins.known_names())
    assert result.problems == []
    assert result.settings.queue_config.overflow_policy == "mine"
    assert isinstance(overflow_policy(plugins, result.settings), NewcomerLoses)


# -- event hooks stay off the hot path -------------------------------------------------------------


class FailingObserver:
    @hookimpl
    def atlantis_sidecar_lock_event(self, event: LockEvent) -> None:
        raise RuntimeError(f"observer broke on {event.kind}")


class SleepingObserver:
    """Blocks its thread for 0.5 s per event while `slow` is set (a synchronous HTTP call, say)."""

    SECONDS = 0.5

    def __init__(self) -> None:
        self.slow = True
        self.sleeping = threading.Event()

    @hookimpl
    def atlantis_sidecar_lock_event(self, event: LockEvent) -> None:
        if self.slow:
            self.sleeping.set()
            time.sleep(self.SECONDS)
            self.sleeping.clear()


class RecordingObserver:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[LockEvent] = []

    @hookimpl
    def atlantis_sidecar_lock_event(self, event: LockEvent) -> None:
        with self._lock:
            self._events.append(event)

    @property
    def events(self) -> list[LockEvent]:
        with self._lock:
            return list(self._events)


async def eventually(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"condition not met within {within}s"
        await asyncio.sleep(0.01)


async def pair(engine: LockManager, key: str, owner: str) -> None:
    request, wait = engine.new_request([key], Owner(owner), wait=1)
    result = await engine.acquire(request, wait)
    assert isinstance(result, Granted)
    await engine.release(owner, [key])


async def test_slow_and_failing_event_hooks_neither_slow_nor_break_lock_traffic(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="enhanced-locking.plugins")
    sleeper, recorder = SleepingObserver(), RecordingObserver()
    plugins = Plugins.load(
        env={}, entry_points=False,
        extra=[("failing", FailingObserver()), ("sleeper", sleeper), ("recorder", recorder)],
    )
    settings = settings_with(Settings(), backend="memory")
    stats = EngineStats()
    backend = plugins.backends.get("memory").from_settings(settings)
    events = EventDispatcher(plugins, stats)  # wired as Runtime.build does
    engine = LockManager(
        backend, engine_settings(settings), overflow=overflow_policy(plugins, settings),
        stats=stats, events=events,
    )
    await backend.start()
    await events.start()
    try:
        # The first event puts the sleeper to sleep in the plugin thread.
        await pair(engine, "warm-up", "job-0")
        await eventually(sleeper.sleeping.is_set, within=5)

        started = time.perf_counter()
        for i in range(20):
            await pair(engine, "hot", f"job-{i}")
        elapsed = time.perf_counter() - started
        still_sleeping = sleeper.sleeping.is_set()
        sleeper.slow = False

        # 20 pairs (40 events) were done while one hook call was still blocked: had any lock
        # operation waited for the hooks, one pair alone would have taken 0.5 s.
        assert elapsed < SleepingObserver.SECONDS / 2, f"20 pairs took {elapsed:.3f}s"
        assert still_sleeping, "the sleeping hook finished before the traffic did"
        assert len(recorder.events) <= 1  # the recorder is stuck behind the sleeper

        # A waiter, so the recorder also sees queued and dequeued.
        request, wait = engine.new_request(["q"], Owner("holder"), wait=1)
        assert isinstance(await engine.acquire(request, wait), Granted)
        waiting, wait = engine.new_request(["q"], Owner("waiter"), wait=5)
        waiter = asyncio.create_task(engine.acquire(waiting, wait))

        async def queued() -> bool:
            state = await backend.request_state(waiting.id)
            return state is not None and state.state == "waiting"

        deadline = time.monotonic() + 5
        while not await queued():
            assert time.monotonic() < deadline, "the waiter never queued"
            await asyncio.sleep(0.01)
        await engine.release("holder", ["q"])
        assert isinstance(await asyncio.wait_for(waiter, 5), Granted)
        await engine.release("waiter", ["q"])

        def seen_on_q() -> list[tuple[str, str]]:
            return [(str(e.kind), e.owner_id) for e in recorder.events if e.keys == ("q",)]

        expected = [
            ("granted", "holder"), ("queued", "waiter"), ("released", "holder"),
            ("dequeued", "waiter"), ("granted", "waiter"), ("released", "waiter"),
        ]
        await eventually(lambda: len(seen_on_q()) >= len(expected))
        assert seen_on_q() == expected

        hot = [e for e in recorder.events if e.keys == ("hot",)]
        assert [str(e.kind) for e in hot] == ["granted", "released"] * 20
        kinds = {e.kind for e in recorder.events}
        wanted = {EventKind.GRANTED, EventKind.RELEASED, EventKind.QUEUED, EventKind.DEQUEUED}
        assert wanted <= kinds
    finally:
        await events.stop()
        await engine.stop()
        await backend.close()

    # The failing hook raised on every event; each one was counted and logged, and it kept
    # neither the traffic nor the other plugins from their work.
    delivered = len(recorder.events)
    assert delivered == 2 + 40 + 6
    assert stats.counts["plugin_errors_total"] == delivered
    failures = [
        r for r in caplog.records
        if r.name == "enhanced-locking.plugins" and r.levelno == logging.ERROR
        and "failing" in r.getMessage()
    ]
    assert len(failures) == delivered
    assert "observer broke on" in failures[0].getMessage()
