"""What a legacy source is: a reader (and maybe writer) of Atlantis's own lock store.

The migration work mirrors Atlantis's locks into the engine through these (Atlantis's API, its
Redis, a copy of its BoltDB file). The plugin hook to register them exists from the start so
third parties can ship sources for stores we do not read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sidecar.engine.model import Owner

if TYPE_CHECKING:
    from sidecar.config import Settings


@dataclass(frozen=True, slots=True)
class LegacyLock:
    atlantis_id: str
    owner: Owner
    acquired_at: float


class LegacySource(Protocol):
    async def list_locks(self) -> Sequence[LegacyLock]: ...


LegacySourceFactory = Callable[["Settings"], LegacySource]
