"""Commands written as RESP by hand: the arguments every call repeats are encoded only once."""

from __future__ import annotations

from dataclasses import dataclass


def bulk(value: str | int | bytes) -> bytes:
    """One RESP bulk string."""
    data = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)


@dataclass(frozen=True, slots=True)
class Prefix:
    """The leading arguments of a command, encoded once."""

    args: tuple[str | int, ...]
    packed: bytes

    @classmethod
    def of(cls, *args: str | int) -> Prefix:
        return cls(args, b"".join(bulk(a) for a in args))
