"""Reading one setting's value, from TOML or from a string (environment, CLI), and checking it.

Every function here raises ValueError whose text is the problem message, so the loader can
attach the key path and collect it. Messages never repeat a secret's value.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import tomllib
from collections.abc import Mapping
from typing import Any

from sidecar.config import tomltext
from sidecar.config.durations import format_duration, parse_duration
from sidecar.config.schema import KnownNames
from sidecar.config.spec import Kind, Spec

# ${NAME} reads the environment; $${NAME} is a literal "${NAME}".
_REFERENCE = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)\}")
_INT = re.compile(r"[+-]?\d+")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}

_EXPECTED = {
    Kind.BOOL: "true or false",
    Kind.INT: "an integer",
    Kind.FLOAT: "a number",
    Kind.DURATION: "a duration",
    Kind.STRING: "a string",
    Kind.STRING_LIST: "a list of strings",
}


def has_reference(text: str) -> bool:
    return any(not m.group(1) for m in _REFERENCE.finditer(text))


def is_pure_reference(text: str) -> bool:
    match = _REFERENCE.fullmatch(text.strip())
    return match is not None and not match.group(1)


def expand(text: str, env: Mapping[str, str]) -> str:
    missing: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        if match.group(1):
            return match.group(0)[1:]
        name = match.group(2)
        if name not in env:
            missing.append(name)
            return ""
        return env[name]

    result = _REFERENCE.sub(substitute, text)
    if missing:
        names = ", ".join(dict.fromkeys(missing))
        refs = ", ".join("${" + name + "}" for name in dict.fromkeys(missing))
        verb = "is" if len(set(missing)) == 1 else "are"
        noun = "variable" if len(set(missing)) == 1 else "variables"
        raise ValueError(f"environment {noun} {names} {verb} not set (referenced as {refs})")
    return result


def describe(item: object, *, secret: bool = False) -> str:
    """How a wrong value is named in a message."""
    if isinstance(item, bool):
        return "a boolean" if secret else f"boolean {str(item).lower()}"
    if isinstance(item, int):
        return "an integer" if secret else f"integer {item}"
    if isinstance(item, float):
        return "a float" if secret else f"float {item!r}"
    if isinstance(item, str):
        return "a string" if secret else f"string {item!r}"
    if isinstance(item, list):
        return "an array"
    if isinstance(item, dict):
        return "a table"
    if isinstance(item, dt.datetime | dt.date | dt.time):
        return "a date/time"
    return type(item).__name__


def from_toml(spec: Spec, item: object, env: Mapping[str, str]) -> Any:
    """TOML already typed the value, so a wrong type is an error here, not something to coerce."""
    kind = spec.kind
    if isinstance(item, str) and (kind is Kind.STRING or has_reference(item)):
        # A quoted "${VAR}" may stand for any type: the variable's text is read like env text.
        return from_text(spec, item, env)
    if kind is Kind.DURATION and isinstance(item, str):
        return parse_duration(item)
    if kind is Kind.BOOL and isinstance(item, bool):
        return item
    if kind is Kind.INT and isinstance(item, int) and not isinstance(item, bool):
        return validate(spec, item)
    if (
        kind in (Kind.FLOAT, Kind.DURATION)
        and isinstance(item, int | float)
        and not isinstance(item, bool)
    ):
        return parse_duration(item) if kind is Kind.DURATION else validate(spec, float(item))
    if kind is Kind.STRING_LIST and isinstance(item, list):
        if not all(isinstance(x, str) for x in item):
            wrong = next(x for x in item if not isinstance(x, str))
            raise ValueError(f"expected a list of strings, got an item that is {describe(wrong)}")
        return validate(spec, tuple(expand(x, env) for x in item))
    raise ValueError(_type_message(spec, item))


def _type_message(spec: Spec, item: object) -> str:
    if spec.kind is Kind.DURATION:
        try:
            parse_duration(item)
        except ValueError as exc:
            return str(exc)
    message = f"expected {_EXPECTED[spec.kind]}, got {describe(item, secret=spec.secret)}"
    if isinstance(item, str) and spec.kind in (Kind.BOOL, Kind.INT, Kind.FLOAT):
        message += " (write it without quotes)"
    elif isinstance(item, str) and spec.kind is Kind.STRING_LIST:
        message += ' (write ["a", "b"])'
    return message


def from_text(spec: Spec, raw: str, env: Mapping[str, str]) -> Any:
    """Env vars, CLI flags and `config set` only have text, so the key's type decides the parse."""
    kind = spec.kind
    if kind is Kind.STRING_LIST:
        stripped = raw.strip()
        if stripped.startswith("["):
            try:
                parsed = tomltext.parse_value(stripped)
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"invalid list {raw!r}: {exc}") from None
            return from_toml(spec, parsed, env)
        text = expand(raw, env)
        return validate(spec, tuple(x.strip() for x in text.split(",") if x.strip()))
    text = expand(raw, env)
    if kind is Kind.STRING:
        return validate(spec, text)
    if kind is Kind.DURATION:
        return parse_duration(text)
    word = text.strip().lower()
    if kind is Kind.BOOL:
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if kind is Kind.INT:
        if not _INT.fullmatch(word):
            raise ValueError(f"expected an integer, got {text!r}")
        return validate(spec, int(word))
    try:
        number = float(word)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None
    return validate(spec, number)


def validate(spec: Spec, item: Any) -> Any:
    """Shared by every source, so a value is judged the same wherever it came from."""
    if spec.kind in (Kind.INT, Kind.FLOAT):
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"must be a finite number, got {item!r}")
        low, high = spec.minimum, spec.maximum
        if (low is not None and item < low) or (high is not None and item > high):
            raise ValueError(f"{_range(spec)}, got {item!r}")
        return item
    if spec.kind is Kind.STRING:
        return _check_string(spec, item)
    if spec.kind is Kind.STRING_LIST:
        items = tuple(_check_string(spec, x) for x in item)
        if spec.non_empty and not items:
            raise ValueError("must list at least one name")
        seen: set[str] = set()
        for x in items:
            if x in seen:
                raise ValueError(f"lists {x!r} more than once")
            seen.add(x)
        return items
    return item


def _range(spec: Spec) -> str:
    low, high = spec.minimum, spec.maximum

    def show(bound: float) -> str:
        return f"{bound:g}" if spec.kind is Kind.FLOAT else str(int(bound))

    if low is not None and high is not None:
        return f"must be between {show(low)} and {show(high)}"
    if low is not None:
        return f"must be at least {show(low)}"
    assert high is not None
    return f"must be at most {show(high)}"


def _check_string(spec: Spec, text: str) -> str:
    if spec.choices is not None:
        stored = spec.choices.get(text.strip().lower())
        if stored is None:
            allowed = ", ".join(dict.fromkeys(spec.choices.values()))
            raise ValueError(f"must be one of {allowed}; got {text!r}")
        return stored
    if spec.check is not None and not spec.secret:
        problem = spec.check(text)
        if problem is not None:
            raise ValueError(problem)
    return text


def unknown_plugin(spec: Spec, item: Any, known: KnownNames | None) -> str | None:
    """The problem with a plugin name that no loaded plugin registered, or None."""
    if spec.plugin is None or known is None:
        return None
    attribute, noun = spec.plugin
    names = getattr(known, attribute)
    if names is None:
        return None
    for name in (item,) if isinstance(item, str) else item:
        if name not in names:
            listed = ", ".join(sorted(names)) or "none"
            return f"unknown {noun} {name!r} (known: {listed})"
    return None


def render(spec: Spec, item: Any) -> str:
    """Durations go back to `30s` notation so that shown config can be pasted into a file."""
    if spec.kind is Kind.DURATION:
        return tomltext.string(format_duration(item))
    return tomltext.value(item)


def plain(spec: Spec, item: Any) -> Any:
    """Lists and durations as JSON and TOML can hold them, for `config show` and the API."""
    if spec.kind is Kind.DURATION:
        return format_duration(item)
    if spec.kind is Kind.STRING_LIST:
        return list(item)
    return item
