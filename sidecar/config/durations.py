"""Durations as operators write them, stored as float seconds.

The seed guide writes durations Go-style (`30s`, `5m`, `100ms`) because Atlantis is a Go program,
so we read that syntax (plus `d`, which Go lacks and operators still reach for) and also a bare
number of seconds, which is what a TOML number or a quick `export` naturally holds.
Zero and negative durations are refused everywhere: a zero lease or timeout silently deletes or
never waits (redis-py bug 4279), which is never what anyone meant.
"""

from __future__ import annotations

import math
import re

# Longer than anyone waits for a Terraform lock; anything above is a typo (`30d` for `30s`).
MAX_SECONDS = 30 * 24 * 3600.0

_UNITS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PART = re.compile(rf"({_NUMBER})(ns|us|µs|ms|s|m|h|d)")
_WHOLE = re.compile(rf"(?:{_NUMBER}(?:ns|us|µs|ms|s|m|h|d))+")
_BARE = re.compile(_NUMBER)

HINT = "use seconds or a string like '100ms', '30s', '5m', '1h' or '1m30s'"


def parse_duration(value: object, *, allow_zero: bool = False) -> float:
    """Seconds from a TOML number or a `1m30s` string; ValueError text is shown to operators.

    `allow_zero` is for an API caller's `wait`, where 0 means "try once", never for config.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration ({HINT}), got boolean {str(value).lower()}")
    if isinstance(value, int | float):
        return check_seconds(float(value), allow_zero=allow_zero)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration ({HINT})")
    text = value.strip()
    if text.startswith("-"):
        raise ValueError(f"duration must be positive, got {value!r}")
    if text.startswith("+"):
        text = text[1:]
    if _BARE.fullmatch(text):
        return check_seconds(float(text), allow_zero=allow_zero)
    if not _WHOLE.fullmatch(text):
        raise ValueError(f"invalid duration {value!r} ({HINT})")
    seconds = sum(float(number) * _UNITS[unit] for number, unit in _PART.findall(text))
    return check_seconds(seconds, value, allow_zero=allow_zero)


def check_seconds(seconds: float, original: object = None, *, allow_zero: bool = False) -> float:
    """One set of bounds for every duration: no setting here has a use for zero or a month."""
    shown = repr(original) if original is not None else _plain(seconds)
    if math.isnan(seconds):
        raise ValueError("duration must be a number, got nan")
    if seconds < 0:
        raise ValueError(f"duration must be positive, got {shown}")
    if seconds == 0 and not allow_zero:
        raise ValueError(f"duration must be greater than zero, got {shown}")
    if seconds > MAX_SECONDS:
        raise ValueError(f"duration must be at most 30 days (720h), got {shown}")
    return seconds


def format_duration(seconds: float) -> str:
    """Write seconds back in the notation operators use, so `config show` output can be pasted."""
    if seconds <= 0 or not math.isfinite(seconds):
        return _plain(seconds) + "s"
    millis = seconds * 1000
    if seconds < 1:
        if abs(millis - round(millis)) < 1e-6:
            return f"{round(millis)}ms"
        return _plain(seconds) + "s"
    whole = int(seconds)
    fraction = seconds - whole
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = []
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if secs or fraction > 1e-9:
        parts.append(_plain(secs + fraction) + "s")
    return "".join(parts)


def _plain(number: float) -> str:
    text = f"{number:.6f}".rstrip("0").rstrip(".")
    return text or "0"
