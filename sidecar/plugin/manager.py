"""A typed facade over pluggy: load the plugins once, then ask for what they registered.

Built-ins come from an explicit list; third-party plugins from the `atlantis_sidecar` entry-point
group, loaded one by one so that a broken one stops start-up with its distribution's name rather
than a bare ImportError.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

from sidecar.plugin import spec
from sidecar.plugin.registry import Registry

if TYPE_CHECKING:
    from sidecar.backends.base import Backend
    from sidecar.config import KnownNames
    from sidecar.engine.events import LockEvent
    from sidecar.engine.policies import OverflowPolicy, ResolutionPolicy
    from sidecar.routing.legacy import LegacySourceFactory

log = logging.getLogger("enhanced-locking.plugins")

ENTRY_POINT_GROUP = "atlantis_sidecar"
DISABLE_ENV = "ATLANTIS_SIDECAR_DISABLE_PLUGINS"


class PluginLoadError(RuntimeError):
    """A plugin could not be loaded; start-up must stop."""


@dataclass(frozen=True, slots=True)
class PluginInfo:
    name: str
    version: str
    source: str
    hooks: tuple[str, ...]
    provides: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "source": self.source,
            "hooks": list(self.hooks),
            "provides": list(self.provides),
        }


def disabled_names(env: Mapping[str, str]) -> set[str]:
    return {n.strip() for n in env.get(DISABLE_ENV, "").split(",") if n.strip()}


class Plugins:
    def __init__(self, pm: pluggy.PluginManager, versions: Mapping[str, tuple[str, str]]) -> None:
        self._pm = pm
        self._versions = versions  # plugin name -> (version, source)
        self.backends: Registry[type[Backend]] = Registry("backend")
        self.overflow_policies: Registry[Callable[[], OverflowPolicy]] = Registry("overflow policy")
        self.resolution_policies: Registry[Callable[[], ResolutionPolicy]] = Registry(
            "resolution policy"
        )
        self.legacy_sources: Registry[LegacySourceFactory] = Registry("legacy source")
        self._fill(self.backends, "atlantis_sidecar_register_backends")
        self._fill(self.overflow_policies, "atlantis_sidecar_register_overflow_policies")
        self._fill(self.resolution_policies, "atlantis_sidecar_register_resolution_policies")
        self._fill(self.legacy_sources, "atlantis_sidecar_register_legacy_sources")
        self.event_hooks = tuple(pm.hook.atlantis_sidecar_lock_event.get_hookimpls())

    @classmethod
    def load(
        cls,
        *,
        env: Mapping[str, str],
        builtins: Sequence[str] | None = None,
        entry_points: bool = True,
        extra: Iterable[tuple[str, object]] = (),
    ) -> Plugins:
        """Register built-ins, then entry points, then `extra` (name, plugin) pairs (tests)."""
        if builtins is None:
            from plugins import BUILTIN_PLUGINS

            builtins = BUILTIN_PLUGINS
        pm = pluggy.PluginManager(spec.PROJECT)
        pm.add_hookspecs(spec)
        blocked = disabled_names(env)
        for name in blocked:
            pm.set_blocked(name)
        versions: dict[str, tuple[str, str]] = {}
        from sidecar import __version__

        for module_name in builtins:
            pm.register(importlib.import_module(module_name), name=module_name)
            versions[module_name] = (__version__, "builtin")
        if entry_points:
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                dist = ep.dist.name if ep.dist else "unknown distribution"
                if ep.name in blocked:
                    continue
                if pm.has_plugin(ep.name):
                    raise PluginLoadError(
                        f"two plugins are named {ep.name!r}: {versions[ep.name][1]} and"
                        f" distribution {dist}; uninstall one or block it with {DISABLE_ENV}"
                    )
                version = ep.dist.version if ep.dist else "unknown"
                try:
                    plugin = ep.load()
                except Exception as exc:
                    raise PluginLoadError(
                        f"plugin {ep.name!r} (entry point {ep.value!r} of distribution"
                        f" {dist!r}) failed to load: {type(exc).__name__}: {exc}"
                    ) from exc
                _register(pm, plugin, ep.name, f"distribution {dist}")
                versions[ep.name] = (version, f"distribution {dist}")
        for name, plugin in extra:
            _register(pm, plugin, name, "in-process")
            versions[name] = ("", "in-process")
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin) or repr(exc.plugin)
            unknown = [
                h
                for h in dir(exc.plugin)
                if not h.startswith("_") and getattr(getattr(pm.hook, h, None), "spec", 1) is None
            ]
            where = versions.get(name, ("", "unknown"))[1]
            raise PluginLoadError(
                f"plugin {name!r} ({where}) implements an unknown hook: {', '.join(unknown) or exc}"
            ) from exc
        return cls(pm, versions)

    def _fill(self, registry: Registry[Any], hook_name: str) -> None:
        """Call each implementation on its own so every entry records which plugin added it."""
        for impl in getattr(self._pm.hook, hook_name).get_hookimpls():
            registry.current_plugin = impl.plugin_name
            try:
                impl.function(**{a: registry for a in impl.argnames})
            except ValueError as exc:
                raise PluginLoadError(f"plugin {impl.plugin_name!r}: {exc}") from exc
        registry.current_plugin = ""

    def known_names(self) -> KnownNames:
        from sidecar.config import KnownNames

        return KnownNames(
            backends=self.backends.names(),
            overflow_policies=self.overflow_policies.names(),
            resolution_policies=self.resolution_policies.names(),
        )

    def describe(self) -> list[PluginInfo]:
        registries: list[Registry[Any]] = [
            self.backends,
            self.overflow_policies,
            self.resolution_policies,
            self.legacy_sources,
        ]
        infos = []
        for name, plugin in sorted(self._pm.list_name_plugin(), key=lambda p: p[0]):
            if plugin is None:
                continue
            hooks = tuple(sorted(h.name for h in self._pm.get_hookcallers(plugin) or []))
            provides = tuple(f"{r.kind}:{n}" for r in registries for n in r.by_provider(name))
            version, source = self._versions.get(name, ("", "unknown"))
            infos.append(PluginInfo(name, version, source, hooks, provides))
        return infos

    def blocked(self) -> list[str]:
        return sorted(n for n, p in self._pm.list_name_plugin() if p is None)

    def call_event_hooks(
        self, event: LockEvent, on_error: Callable[[str, BaseException], None]
    ) -> list[Any]:
        """Call every event hook on its own, so one failing plugin does not silence the others.

        Returns what the implementations returned that must still be awaited (coroutines).
        """
        pending = []
        for impl in self.event_hooks:
            try:
                result = impl.function(**({"event": event} if impl.argnames else {}))
            except Exception as exc:
                on_error(impl.plugin_name, exc)
                continue
            if result is not None and hasattr(result, "__await__"):
                pending.append((impl.plugin_name, result))
        return pending


def _register(pm: pluggy.PluginManager, plugin: object, name: str, where: str) -> None:
    try:
        pm.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        raise PluginLoadError(f"plugin {name!r} from {where} is invalid: {exc}") from exc
