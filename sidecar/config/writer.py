"""`config set`: change one key in the TOML file, keeping everything else byte for byte.

Operators annotate their config, so the file is edited as text (one value replaced or one line
inserted) rather than re-serialised. The edit is trusted only after the new text loads with no
problems and the key reads back as intended; then it replaces the file atomically, so a crash or
a refused value never leaves a half-written config behind.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.config import tomltext, values
from sidecar.config.durations import format_duration
from sidecar.config.loader import loads, unknown_key
from sidecar.config.problems import PERMISSION_DENIED, Problem
from sidecar.config.render import display
from sidecar.config.schema import (
    ATLANTIS_ENV_VARS,
    BOOL_FORMS,
    LEAVES,
    ROOT,
    KnownNames,
    env_var_name,
    get_value,
    resolve_key,
)
from sidecar.config.spec import Kind, Spec


@dataclass(frozen=True, slots=True)
class SetResult:
    file: Path
    key: str  # dotted kebab key under [enhanced-locking]
    old: str  # TOML text of the file's value before (the default when unset); secrets redacted
    new: str
    restart_required: bool
    changed: bool
    written: bool
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class _EditError(Exception):
    pass


def set_value(
    path: Path,
    dotted: str,
    raw: str,
    *,
    env: Mapping[str, str],
    known_names: KnownNames | None = None,
) -> SetResult:
    shown = dotted.strip().removeprefix(ROOT + ".")
    leaf_path = resolve_key(shown)

    def refuse(*problems: Problem, old: str = "", new: str = "") -> SetResult:
        return SetResult(path, shown, old, new, False, False, False, list(problems))

    if leaf_path is None:
        return refuse(Problem(f"{ROOT}.{shown}", unknown_key(shown)))
    spec = LEAVES[leaf_path].spec
    where = f"{ROOT}.{shown}"
    try:
        new_value = values.from_text(spec, raw, env)
    except ValueError as exc:
        return refuse(Problem(where, str(exc)))
    unknown = values.unknown_plugin(spec, new_value, known_names)
    if unknown is not None:
        return refuse(Problem(where, unknown))

    target = Path(os.path.realpath(path))
    try:
        original: bytes | None = target.read_bytes()
    except FileNotFoundError:
        original = None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return refuse(Problem("", f"cannot read config file {path}: {reason}", PERMISSION_DENIED))
    try:
        text = (original or b"").decode("utf-8")
        tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return refuse(Problem(str(path), f"cannot edit, the file is not valid TOML: {exc}"))

    before = loads(text, env=env, known_names=known_names, source=str(path), read_env_vars=False)
    old_value = get_value(before.settings, leaf_path)
    old_shown = display(leaf_path, old_value)
    new_shown = (
        tomltext.string(raw.strip())
        if (spec.secret and values.is_pure_reference(raw))
        else display(leaf_path, new_value)
    )

    try:
        new_text = _edit(text, leaf_path, _literal(spec, raw, new_value))
    except _EditError as exc:
        return refuse(Problem(where, str(exc)), old=old_shown, new=new_shown)
    after = loads(new_text, env=env, known_names=known_names, source=str(path), read_env_vars=False)
    if after.problems:
        return refuse(*after.problems, old=old_shown, new=new_shown)
    read_back = get_value(after.settings, leaf_path)
    if read_back != new_value:
        got = display(leaf_path, read_back)
        message = f"the edited file would read back {got}, not {new_shown}"
        return refuse(Problem(where, message), old=old_shown, new=new_shown)

    written = False
    if new_text != text or original is None:
        try:
            _atomic_write(target, new_text.encode("utf-8"), original)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            problem = Problem("", f"cannot write config file {path}: {reason}", PERMISSION_DENIED)
            return refuse(problem, old=old_shown, new=new_shown)
        written = True
    changed = old_value != new_value
    return SetResult(
        path,
        shown,
        old_shown,
        new_shown,
        LEAVES[leaf_path].restart and changed,
        changed,
        written,
        [],
        _warnings(target, leaf_path, shown, spec, raw, env),
    )


def _literal(spec: Spec, raw: str, parsed: Any) -> str:
    """The TOML text written for a value: the operator's own text where it carries meaning."""
    if values.has_reference(raw) and not raw.strip().startswith("["):
        # Stored literally, so a secret stays in the environment and is read at each load.
        return tomltext.string(raw if spec.kind is Kind.STRING else raw.strip())
    if spec.kind is Kind.STRING:
        return tomltext.string(parsed if spec.choices is not None else raw)
    if spec.kind is Kind.DURATION:
        text = raw.strip()
        has_unit = any(c.isalpha() for c in text)
        return tomltext.string(text if has_unit else format_duration(parsed))
    if spec.kind is Kind.STRING_LIST and raw.strip().startswith("["):
        items = tomltext.parse_value(raw.strip())
        return tomltext.value(items)
    return tomltext.value(list(parsed) if isinstance(parsed, tuple) else parsed)


def _warnings(
    target: Path, leaf_path: str, shown: str, spec: Spec, raw: str, env: Mapping[str, str]
) -> list[str]:
    notes = []
    names = [env_var_name(leaf_path)]
    names += [env_var_name(table) for table, switch in BOOL_FORMS.items() if switch == leaf_path]
    names += [name for name, path in ATLANTIS_ENV_VARS.items() if path == leaf_path]
    for name in names:
        if env.get(name):
            notes.append(f"{name} is set and overrides {shown} from the file")
    if spec.secret and raw and not values.has_reference(raw):
        with contextlib.suppress(OSError):
            if stat.S_IMODE(target.stat().st_mode) & 0o077:
                notes.append(
                    f"{target} can be read by other users and now holds a secret; prefer a"
                    f' reference like "${{REDIS_PASSWORD}}" or chmod 600'
                )
    return notes


# ---- the text edit ------------------------------------------------------------------------------


def _edit(text: str, leaf_path: str, literal: str) -> str:
    target = (ROOT, *leaf_path.split("."))
    # When the operator names a bool-or-table key itself, it is the bare bool they mean to edit.
    switch_of = {switch: (ROOT, *table.split(".")) for table, switch in BOOL_FORMS.items()}
    bool_form = switch_of.get(leaf_path)
    newline = "\r\n" if "\r\n" in text else "\n"
    statements = [s for s in tomltext.scan(text) if not s.in_array]
    keyvals = [s for s in statements if s.kind == "keyval"]

    for stmt in keyvals:
        if stmt.path == target or (stmt.path == bool_form and _is_bool(text, stmt)):
            return text[: stmt.value_start] + literal + text[stmt.value_end :]
    for stmt in keyvals:
        if stmt.path == target[: len(stmt.path)]:
            return _edit_inline(text, stmt, target, literal)

    parent = target[:-1]
    siblings = [s for s in keyvals if s.path[:-1] == parent]
    if siblings:
        last = siblings[-1]
        line = last.indent + tomltext.dotted(target[len(last.table) :]) + " = " + literal
        return _insert_line(text, last.end, line, newline)
    for stmt in statements:
        if stmt.kind == "table" and stmt.table == parent:
            line = tomltext.key(target[-1]) + " = " + literal
            return _insert_line(text, stmt.end, line, newline)

    block = [f"[{tomltext.dotted(parent)}]", f"{tomltext.key(target[-1])} = {literal}"]
    ancestors = [
        i
        for i, s in enumerate(statements)
        if s.kind == "table" and len(s.table) < len(parent) and parent[: len(s.table)] == s.table
    ]
    if ancestors:
        start = max(ancestors, key=lambda i: len(statements[i].table))
        scope = statements[start].table
        last = statements[start]
        for stmt in statements[start + 1 :]:
            if stmt.kind != "keyval" and stmt.table[: len(scope)] != scope:
                break
            last = stmt
        at = last.end
        head = text[:at]
        if head and not head.endswith("\n"):
            head += newline
        rest = text[at:]
        tail = newline if rest and not rest.startswith(("\n", "\r\n")) else ""
        return head + newline + newline.join(block) + newline + tail + rest
    head = text
    if head and not head.endswith("\n"):
        head += newline
    if head.strip():
        head += newline
    return head + newline.join(block) + newline


def _is_bool(text: str, stmt: tomltext.Statement) -> bool:
    return isinstance(tomltext.parse_value(text[stmt.value_start : stmt.value_end]), bool)


def _insert_line(text: str, at: int, line: str, newline: str) -> str:
    head = text[:at]
    if head and not head.endswith("\n"):
        head += newline
    return head + line + newline + text[at:]


def _edit_inline(text: str, stmt: tomltext.Statement, target: tuple[str, ...], literal: str) -> str:
    """Set a key inside `key = { ... }`, or turn `priority-queue = true` into such a table."""
    current = tomltext.parse_value(text[stmt.value_start : stmt.value_end])
    rest = target[len(stmt.path) :]
    table_path = ".".join(stmt.path[1:])
    line = text.count("\n", 0, stmt.start) + 1
    if isinstance(current, bool) and table_path in BOOL_FORMS:
        switch = BOOL_FORMS[table_path].rpartition(".")[2]
        table: dict[str, Any] = {switch: current}
    elif isinstance(current, dict):
        table = current
    else:
        name = tomltext.dotted(stmt.path[1:])
        raise _EditError(f"line {line}: {name} is not a table, so it cannot hold {rest[-1]!r}")
    node = table
    for part in rest[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise _EditError(f"line {line}: {part!r} is not a table")
        node = child
    node[rest[-1]] = tomltext.Raw(literal)
    return text[: stmt.value_start] + tomltext.value(table) + text[stmt.value_end :]


# ---- the atomic write ---------------------------------------------------------------------------


def _umask() -> int:
    # os.umask() can only be read by setting it, which races with other threads creating files.
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def _atomic_write(target: Path, data: bytes, expected: bytes | None) -> None:
    try:
        info = target.stat()
        mode = stat.S_IMODE(info.st_mode)
        owner: tuple[int, int] | None = (info.st_uid, info.st_gid)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
        owner = None
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        if owner is not None and hasattr(os, "chown"):
            # Root editing the service's file must not leave it owned by root.
            with contextlib.suppress(OSError):
                os.chown(temp, *owner)
        try:
            current: bytes | None = target.read_bytes()
        except FileNotFoundError:
            current = None
        if current != expected:
            raise OSError(f"{target} changed while it was being edited; nothing was written")
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    with contextlib.suppress(OSError):
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
