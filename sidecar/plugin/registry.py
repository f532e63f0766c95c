"""Named registries that plugins fill and config picks from.

Plugins register a class or factory under a name (tox's registry model); config names it; an
unknown name is a configuration problem that lists the names we do know.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownName(LookupError):
    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        super().__init__(f"unknown {kind} {name!r} (known: {', '.join(known) or 'none'})")
        self.kind, self.name, self.known = kind, name, known


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._providers: dict[str, str] = {}
        #: The plugin whose hook is running, so every entry knows where it came from.
        self.current_plugin = ""

    def register(self, name: str, item: T) -> None:
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"invalid {self.kind} name {name!r}: use letters, digits, - and _")
        if name in self._items:
            raise ValueError(
                f"{self.kind} {name!r} is registered twice: by {self._providers[name]!r}"
                f" and by {self.current_plugin!r}"
            )
        self._items[name] = item
        self._providers[name] = self.current_plugin

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownName(self.kind, name, self.names()) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def provider(self, name: str) -> str:
        return self._providers[name]

    def by_provider(self, plugin: str) -> list[str]:
        return sorted(n for n, p in self._providers.items() if p == plugin)
