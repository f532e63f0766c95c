"""How each setting is read, checked and documented, attached to the dataclass fields.

Keeping this next to the field (as dataclass metadata) means the loader, the env-var table,
`config set`, redaction and the README reference table cannot drift from the dataclasses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

T = TypeVar("T")

SPEC = "sidecar.config.spec"
TABLE = "sidecar.config.table"


class Kind(Enum):
    BOOL = "bool"
    INT = "int"
    FLOAT = "float"
    DURATION = "duration"
    STRING = "string"
    STRING_LIST = "list of strings"


@dataclass(frozen=True, slots=True, eq=False)
class Spec:
    kind: Kind
    doc: str
    restart: bool = False
    secret: bool = False
    minimum: float | None = None
    maximum: float | None = None
    # Accepted spelling (lower-cased) -> stored value; None means any string.
    choices: Mapping[str, str] | None = None
    # Extra check for a string, or for each item of a list: the problem text or None.
    check: Callable[[str], str | None] | None = None
    # (KnownNames attribute, noun for messages) when the value names a plugin.
    plugin: tuple[str, str] | None = None
    non_empty: bool = False


@dataclass(frozen=True, slots=True, eq=False)
class TableSpec:
    cls: type[Any]
    doc: str
    restart: bool = False
    # A table that may also be written as a bare bool, which then sets this key of it.
    bool_form: str | None = None


def leaf(
    default: T,
    kind: Kind,
    doc: str,
    *,
    restart: bool = False,
    secret: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: Mapping[str, str] | None = None,
    check: Callable[[str], str | None] | None = None,
    plugin: tuple[str, str] | None = None,
    non_empty: bool = False,
) -> T:
    spec = Spec(
        kind,
        doc,
        restart=restart,
        secret=secret,
        minimum=minimum,
        maximum=maximum,
        choices=choices,
        check=check,
        plugin=plugin,
        non_empty=non_empty,
    )
    # Secrets stay out of repr() so that logging a Settings object never leaks them.
    return field(default=default, repr=not secret, metadata={SPEC: spec})


def table_meta(
    cls: type[Any], doc: str, *, restart: bool = False, bool_form: str | None = None
) -> dict[str, TableSpec]:
    """Only the metadata is ours, so type checkers and linters still see a plain factory field."""
    return {TABLE: TableSpec(cls, doc, restart=restart, bool_form=bool_form)}
