"""Writing TOML values, and finding statements in TOML text so they can be edited in place.

`config set` must keep the operator's comments and layout, which no TOML writer does, so this
scanner only locates statements (table headers and `key = value` lines with their exact value
span) in text that tomllib has already accepted; it never has to judge validity itself.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def string(text: str) -> str:
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def key(part: str) -> str:
    return part if _BARE_KEY.fullmatch(part) else string(part)


def dotted(parts: Sequence[str]) -> str:
    return ".".join(key(p) for p in parts)


@dataclass(frozen=True, slots=True)
class Raw:
    """TOML text to emit as it is (a value the caller already rendered)."""

    text: str


def value(item: object) -> str:
    """Render a Python value the way tomllib would read it back."""
    if isinstance(item, Raw):
        return item.text
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int):
        return str(item)
    if isinstance(item, float):
        if math.isnan(item):
            return "nan"
        if math.isinf(item):
            return "inf" if item > 0 else "-inf"
        return repr(item)
    if isinstance(item, str):
        return string(item)
    if isinstance(item, dt.datetime | dt.date | dt.time):
        return item.isoformat()
    if isinstance(item, Mapping):
        inner = ", ".join(f"{key(str(k))} = {value(v)}" for k, v in item.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(item, list | tuple):
        return "[" + ", ".join(value(v) for v in item) + "]"
    raise TypeError(f"cannot write {type(item).__name__} as TOML")


def parse_value(text: str) -> object:
    """Read one TOML value written on its own (raises tomllib.TOMLDecodeError)."""
    return tomllib.loads(f"v = {text}")["v"]


# ---- locating statements --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Statement:
    kind: Literal["table", "array-table", "keyval"]
    table: tuple[str, ...]  # the table a keyval sits in; the header's own path for headers
    key: tuple[str, ...]  # the keyval's (possibly dotted) key; () for headers
    in_array: bool  # inside a [[array-of-tables]] element, which `config set` never edits
    start: int  # offset where the statement's line starts (its indentation included)
    end: int  # offset just past the newline that ends the statement (or end of text)
    value_start: int
    value_end: int
    indent: str

    @property
    def path(self) -> tuple[str, ...]:
        return self.table + self.key


def scan(text: str) -> list[Statement]:
    return _Scanner(text).run()


class _Scanner:
    def __init__(self, text: str) -> None:
        self.s = text
        self.n = len(text)

    def run(self) -> list[Statement]:
        s = self.s
        out: list[Statement] = []
        table: tuple[str, ...] = ()
        in_array = False
        i = 0
        while i < self.n:
            line_start = i
            j = self._skip_blank(i)
            if j >= self.n:
                break
            char = s[j]
            if char in "\r\n":
                i = self._newline(j)
                continue
            if char == "#":
                i = self._newline(self._to_eol(j))
                continue
            if char == "[":
                is_array = s.startswith("[[", j)
                parts, k = self._key(j + (2 if is_array else 1))
                k = self._skip_blank(k) + (2 if is_array else 1)
                table, in_array = tuple(parts), is_array
                end = self._finish(k)
                kind: Literal["table", "array-table"] = "array-table" if is_array else "table"
                out.append(Statement(kind, table, (), in_array, line_start, end, k, k, s[i:j]))
                i = end
                continue
            parts, k = self._key(j)
            k = self._skip_blank(self._skip_blank(k) + 1)  # past "="
            value_end = self._value(k)
            end = self._finish(value_end)
            out.append(
                Statement(
                    "keyval",
                    table,
                    tuple(parts),
                    in_array,
                    line_start,
                    end,
                    k,
                    value_end,
                    s[i:j],
                )
            )
            i = end
        return out

    def _skip_blank(self, i: int) -> int:
        while i < self.n and self.s[i] in " \t":
            i += 1
        return i

    def _to_eol(self, i: int) -> int:
        while i < self.n and self.s[i] not in "\r\n":
            i += 1
        return i

    def _newline(self, i: int) -> int:
        if self.s.startswith("\r\n", i):
            return i + 2
        if i < self.n and self.s[i] == "\n":
            return i + 1
        return i

    def _finish(self, i: int) -> int:
        """Past trailing blanks, a comment and the newline after a statement."""
        i = self._skip_blank(i)
        if i < self.n and self.s[i] == "#":
            i = self._to_eol(i)
        return self._newline(i)

    def _key(self, i: int) -> tuple[list[str], int]:
        parts: list[str] = []
        while True:
            i = self._skip_blank(i)
            if self.s[i] in "\"'":
                end = self._string(i)
                parsed = parse_value(self.s[i:end])
                parts.append(str(parsed))
                i = end
            else:
                match = _BARE_KEY.match(self.s, i)
                if match is None:  # pragma: no cover - tomllib accepted the text
                    raise ValueError(f"unexpected character at offset {i}")
                parts.append(match.group())
                i = match.end()
            i = self._skip_blank(i)
            if i < self.n and self.s[i] == ".":
                i += 1
                continue
            return parts, i

    def _string(self, i: int) -> int:
        s = self.s
        for quote in ('"""', "'''"):
            if s.startswith(quote, i):
                j = i + 3
                while True:
                    if quote == '"""' and s[j] == "\\":
                        j += 2
                        continue
                    if s.startswith(quote, j):
                        j += 3
                        # Up to two quotes may end the content right before the delimiter.
                        extra = 0
                        while extra < 2 and j < self.n and s[j] == quote[0]:
                            j += 1
                            extra += 1
                        return j
                    j += 1
        quote = s[i]
        j = i + 1
        while s[j] != quote:
            j += 2 if quote == '"' and s[j] == "\\" else 1
        return j + 1

    def _value(self, i: int) -> int:
        s = self.s
        char = s[i]
        if char in "\"'":
            return self._string(i)
        if char in "[{":
            depth = 0
            while True:
                char = s[i]
                if char in "\"'":
                    i = self._string(i)
                    continue
                if char == "#":
                    i = self._to_eol(i)
                    continue
                if char in "[{":
                    depth += 1
                elif char in "]}":
                    depth -= 1
                    if depth == 0:
                        return i + 1
                i += 1
        end = i
        while end < self.n and s[end] not in "#\r\n":
            end += 1
        while end > i and s[end - 1] in " \t":
            end -= 1
        return end
