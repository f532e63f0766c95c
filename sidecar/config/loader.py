"""Building the effective Settings from defaults, the file, the environment and CLI overrides.

Precedence, weakest first: defaults, the TOML file, Atlantis's own ATLANTIS_LOG_LEVEL and
ATLANTIS_QUEUE_WORKERS, ATLANTIS_ENHANCED_LOCKING_<PATH>, then overrides (CLI flags). A bad value
is reported and skipped, so the next weaker layer (at worst the default) stays in force; every
problem is collected so that `config validate` can show them all in one go.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sidecar.config import values
from sidecar.config.problems import PERMISSION_DENIED, Problem
from sidecar.config.schema import (
    ATLANTIS_ENV_VARS,
    BOOL_FORMS,
    ENV_PREFIX,
    ENV_VARS,
    LEAVES,
    ROOT,
    TABLES,
    KnownNames,
    Settings,
    join,
    kebab,
    resolve_key,
)

CONFIG_ENV_VAR = "ATLANTIS_SIDECAR_CONFIG"
DEFAULT_FILE_NAME = "atlantis-sidecar.toml"

_NO_OVERRIDES: Mapping[str, str] = MappingProxyType({})
FILE = "file"
OVERRIDE = "override"


@dataclass(frozen=True, slots=True)
class LoadResult:
    settings: Settings
    problems: list[Problem]
    path: Path | None = None
    # Where each value that is not a default came from: "file", an env var name, or "override".
    origins: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def default_config_path(env: Mapping[str, str]) -> Path | None:
    """$ATLANTIS_SIDECAR_CONFIG wins so a container can mount the file anywhere; a file in the
    working directory is picked up for local runs; otherwise defaults and env alone apply."""
    configured = env.get(CONFIG_ENV_VAR, "")
    if configured:
        return Path(configured).expanduser()
    local = Path.cwd() / DEFAULT_FILE_NAME
    return local if local.exists() else None


def load(
    path: Path | None,
    *,
    env: Mapping[str, str],
    overrides: Mapping[str, str] = _NO_OVERRIDES,
    known_names: KnownNames | None = None,
) -> LoadResult:
    builder = _Builder(env, known_names)
    if path is not None:
        text = builder.read(path)
        if text is not None:
            builder.document(text, str(path))
    return builder.finish(overrides, path=path, read_env_vars=True)


def loads(
    text: str,
    *,
    env: Mapping[str, str],
    overrides: Mapping[str, str] = _NO_OVERRIDES,
    known_names: KnownNames | None = None,
    source: str = "<config>",
    read_env_vars: bool = True,
) -> LoadResult:
    """load() for text. read_env_vars=False is how `config set` checks an edit: an env override
    must neither mask the new value nor make a valid file edit fail."""
    builder = _Builder(env, known_names)
    builder.document(text, source)
    return builder.finish(overrides, path=None, read_env_vars=read_env_vars)


def suggest(word: str, candidates: list[str]) -> str:
    """' (did you mean ...?)' for a mistyped key, or ''."""
    dashed = word.replace("_", "-").lower()
    if dashed in candidates and dashed != word:
        return f" (did you mean {dashed!r}? keys use dashes)"
    probe = word
    matches = difflib.get_close_matches(word, candidates, n=3, cutoff=0.6)
    if not matches:
        probe = dashed
        matches = difflib.get_close_matches(dashed, candidates, n=3, cutoff=0.6)
    if not matches:
        return ""
    # Name only the clear winner(s), not every key that shares a long common prefix.
    scores = [difflib.SequenceMatcher(None, probe, m).ratio() for m in matches]
    matches = [m for m, score in zip(matches, scores, strict=True) if score >= scores[0] - 0.05]
    return " (did you mean " + " or ".join(repr(m) for m in matches) + "?)"


def unknown_key(shown: str) -> str:
    """The message for a dotted key (CLI override, `config set`) that names no setting."""
    if shown in TABLES:
        first = next(iter(TABLES[shown].keys.values()))
        return f"is a table; name one of its keys, e.g. {first}"
    return "unknown key" + suggest(shown, [*LEAVES, *BOOL_FORMS])


class _Builder:
    def __init__(self, env: Mapping[str, str], known: KnownNames | None) -> None:
        self.env = env
        self.known = known
        self.values: dict[str, Any] = {}
        self.origins: dict[str, str] = {}
        self.problems: list[Problem] = []

    def problem(self, path: str, message: str, code: str | None = None) -> None:
        if code is None:
            self.problems.append(Problem(path, message))
        else:
            self.problems.append(Problem(path, message, code))

    # ---- the file ----------------------------------------------------------------------------

    def read(self, path: Path) -> str | None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            self.problem("", f"cannot read config file {path}: {reason}", PERMISSION_DENIED)
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.problem(str(path), f"config file is not UTF-8 text: {exc}")
            return None

    def document(self, text: str, source: str) -> None:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            self.problem(source, f"invalid TOML: {exc}")
            return
        for key in data:
            if key == ROOT:
                continue
            if key.replace("_", "-").lower() == ROOT:
                self.problem(key, f"unknown table {key!r} (did you mean {ROOT!r}?)")
            elif "-" in key and key in TABLES[""].keys:
                # Kebab names this specific are ours: most likely a missing table header.
                self.problem(key, f"{key!r} must be inside the [{ROOT}] table; it is ignored here")
        root = data.get(ROOT)
        if root is None:
            return
        if not isinstance(root, dict):
            self.problem(ROOT, f"expected a table, got {values.describe(root)}")
            return
        self.table(root, "")

    def table(self, data: dict[str, Any], prefix: str) -> None:
        keys = TABLES[prefix].keys
        for key, item in data.items():
            path = keys.get(key)
            if path is None:
                where = join(prefix, key)
                self.problem(f"{ROOT}.{where}", "unknown key" + suggest(key, list(keys)))
            elif path in TABLES:
                if isinstance(item, dict):
                    self.table(item, path)
                elif path in BOOL_FORMS and isinstance(item, bool):
                    self.set_from_toml(BOOL_FORMS[path], item, path)
                else:
                    wanted = "true, false or a table" if path in BOOL_FORMS else "a table"
                    got = values.describe(item)
                    self.problem(f"{ROOT}.{path}", f"expected {wanted}, got {got}")
            else:
                self.set_from_toml(path, item, path)

    def set_from_toml(self, path: str, item: object, shown: str) -> None:
        try:
            parsed = values.from_toml(LEAVES[path].spec, item, self.env)
        except ValueError as exc:
            self.problem(f"{ROOT}.{shown}", str(exc))
            return
        self.values[path] = parsed
        self.origins[path] = FILE

    # ---- text layers -------------------------------------------------------------------------

    def set_from_text(self, path: str, raw: str, origin: str, shown: str) -> None:
        try:
            parsed = values.from_text(LEAVES[path].spec, raw, self.env)
        except ValueError as exc:
            self.problem(f"{ROOT}.{shown}", f"{exc} {_from(origin)}")
            return
        self.values[path] = parsed
        self.origins[path] = origin

    def env_vars(self) -> None:
        for name, path in ATLANTIS_ENV_VARS.items():
            raw = self.env.get(name, "")
            if raw:  # like Atlantis (viper), an empty variable counts as unset
                self.set_from_text(path, raw, name, path)
        for name in sorted(self.env):
            if not name.startswith(ENV_PREFIX):
                continue
            raw = self.env[name]
            shown = ENV_VARS.get(name)
            if shown is None:
                hint = suggest(name, list(ENV_VARS))
                self.problem(name, "unknown environment variable" + hint)
            elif raw:
                self.set_from_text(BOOL_FORMS.get(shown, shown), raw, name, shown)

    def overrides(self, overrides: Mapping[str, str]) -> None:
        for key, raw in overrides.items():
            path = resolve_key(key)
            shown = key.removeprefix(ROOT + ".")
            if path is None:
                self.problem(f"{ROOT}.{shown}", unknown_key(shown))
            else:
                self.set_from_text(path, raw, OVERRIDE, shown)

    # ---- whole-config checks -----------------------------------------------------------------

    def effective(self, path: str) -> Any:
        return self.values.get(path, LEAVES[path].default)

    def reject(self, path: str, message: str) -> None:
        """Report a value that passed its own checks but not the whole config's; drop it."""
        origin = self.origins.get(path)
        suffix = f" {_from(origin)}" if origin not in (None, FILE) else ""
        self.problem(f"{ROOT}.{path}", message + suffix)
        self.values.pop(path, None)
        self.origins.pop(path, None)

    def cross_checks(self) -> None:
        for path, leaf in LEAVES.items():
            message = values.unknown_plugin(leaf.spec, self.effective(path), self.known)
            if message is not None:
                self.reject(path, message)
        cluster = self.effective("redis.cluster-nodes")
        sentinels = self.effective("redis.sentinel.nodes")
        master = self.effective("redis.sentinel.master-name")
        db = self.effective("redis.db")
        if cluster and db != 0:
            self.reject(
                "redis.db",
                f"must be 0 when redis.cluster-nodes is set (Redis Cluster has only database 0),"
                f" got {db}",
            )
        if cluster and sentinels:
            self.reject(
                "redis.sentinel.nodes",
                "cannot be combined with redis.cluster-nodes: choose Cluster or Sentinel",
            )
        elif sentinels and not master:
            # Only this direction: a name without nodes is inert, and allowing it lets
            # `config set` reach Sentinel mode one key at a time.
            self.reject(
                "redis.sentinel.master-name", "must be set when redis.sentinel.nodes is set"
            )

    def finish(
        self, overrides: Mapping[str, str], *, path: Path | None, read_env_vars: bool
    ) -> LoadResult:
        if read_env_vars:
            self.env_vars()
        self.overrides(overrides)
        self.cross_checks()
        return LoadResult(build(self.values), self.problems, path, dict(self.origins))


def _from(origin: str | None) -> str:
    if origin == OVERRIDE:
        return "(from command-line override)"
    return f"(from {origin})"


def build(assigned: Mapping[str, Any]) -> Settings:
    """Settings from dotted keys, for callers (reload, tests) that have values but no file."""

    def make(prefix: str) -> Any:
        info = TABLES[prefix]
        cls = info.spec.cls if info.spec is not None else Settings
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            path = join(prefix, kebab(f.name))
            if path in TABLES:
                kwargs[f.name] = make(path)
            elif path in assigned:
                kwargs[f.name] = assigned[path]
        return cls(**kwargs)

    settings: Settings = make("")
    return settings
