"""Showing settings to people: `config show`, the API's config view, the README reference table.

Secrets are shown as "***" when set and "" when not, so an operator can tell a missing token
from a configured one without the value ever reaching a terminal, a log or an API answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sidecar.config import tomltext, values
from sidecar.config.schema import (
    BOOL_FORMS,
    LEAVES,
    ROOT,
    TABLES,
    Settings,
    env_var_name,
    get_value,
)

REDACTED = "***"


@dataclass(frozen=True, slots=True)
class FieldInfo:
    path: str  # dotted kebab key under [enhanced-locking], e.g. "queue-config.max-queue-size"
    type_label: str
    default: str  # as TOML text
    doc: str
    restart: bool
    secret: bool
    env_var: str


def iter_fields() -> Iterator[FieldInfo]:
    """Every key an operator can set, in file order; a bool-or-table key precedes its keys."""
    for path, leaf in LEAVES.items():
        parent = path.rpartition(".")[0]
        if parent in BOOL_FORMS and BOOL_FORMS[parent] == path:
            table = TABLES[parent].spec
            assert table is not None
            yield FieldInfo(
                parent,
                "bool or table",
                values.render(leaf.spec, leaf.default),
                table.doc,
                leaf.restart,
                False,
                env_var_name(parent),
            )
        yield FieldInfo(
            path,
            leaf.spec.kind.value,
            values.render(leaf.spec, leaf.default),
            leaf.spec.doc,
            leaf.restart,
            leaf.spec.secret,
            env_var_name(path),
        )


def reference_table_markdown() -> str:
    """The README's key reference, generated so that it cannot disagree with the code."""
    lines = [
        f"Keys of the `[{ROOT}]` table. Environment variables override the file; "
        "`restart` marks keys that take effect only after a restart.",
        "",
        "| Key | Type | Default | Restart | Environment variable | Description |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for info in iter_fields():
        doc = info.doc + (" Secret: shown as `***`." if info.secret else "")
        cells = [
            f"`{info.path}`",
            info.type_label,
            f"`{info.default}`",
            "yes" if info.restart else "",
            f"`{info.env_var}`",
            doc,
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _shown(path: str, item: Any) -> Any:
    spec = LEAVES[path].spec
    if spec.secret:
        return REDACTED if item else ""
    return values.plain(spec, item)


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective config as nested kebab-case tables; durations as "30s"-style strings."""
    root: dict[str, Any] = {}
    for path in LEAVES:
        *parents, key = path.split(".")
        node = root
        for part in parents:
            node = node.setdefault(part, {})
        node[key] = _shown(path, get_value(settings, path))
    return root


def to_toml(settings: Settings) -> str:
    """`config show`: a TOML document that loads back to the same settings, secrets aside."""
    lines = ['# Effective configuration; secrets are shown as "***".']

    def emit(table: dict[str, Any], header: tuple[str, ...]) -> None:
        lines.append("")
        lines.append(f"[{tomltext.dotted(header)}]")
        subtables = []
        for key, item in table.items():
            if isinstance(item, dict):
                subtables.append((key, item))
            else:
                lines.append(f"{tomltext.key(key)} = {tomltext.value(item)}")
        for key, item in subtables:
            emit(item, (*header, key))

    emit(redacted(settings), (ROOT,))
    return "\n".join(lines) + "\n"


def diff_restart_required(old: Settings, new: Settings) -> list[str]:
    """Keys whose change a reload cannot apply (they are read once at start-up)."""
    return [
        path
        for path, leaf in LEAVES.items()
        if leaf.restart and get_value(old, path) != get_value(new, path)
    ]


def diff(old: Settings, new: Settings) -> list[str]:
    """Every key whose effective value differs, for reload logs and the migration history."""
    return [path for path in LEAVES if get_value(old, path) != get_value(new, path)]


def display(path: str, item: Any) -> str:
    """One value as TOML text for messages, "***" for a set secret."""
    spec = LEAVES[path].spec
    if spec.secret:
        return tomltext.string(REDACTED if item else "")
    return values.render(spec, item)
