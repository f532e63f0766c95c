"""Divergence: Atlantis and the engine both hold an Atlantis lock, for different owners.

While a key is served by the engine, the engine's grant is the truth, so listings show it; the
disagreement itself is a migration problem (design.md "Routing and migration"), logged with EL006
and counted (`atlantis_lock_divergences_total`). Listings repeat every few seconds in a UI or a
script, so each divergence is logged and counted once, when first seen, not on every listing.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from sidecar.metrics.stats import EngineStats

log = logging.getLogger("enhanced-locking.proxy")

# Divergences remembered (to report each once); the oldest are forgotten past this.
REMEMBERED = 10_000


class DivergenceLog:
    def __init__(self, remembered: int = REMEMBERED) -> None:
        self._seen: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._remembered = remembered

    def report(
        self, stats: EngineStats, key: str, atlantis_owner: str, engine_owner: str, what: str
    ) -> bool:
        """Log and count this divergence unless already reported; True when it is new."""
        seen = (key, atlantis_owner, engine_owner)
        if seen in self._seen:
            self._seen.move_to_end(seen)
            return False
        self._seen[seen] = None
        while len(self._seen) > self._remembered:
            self._seen.popitem(last=False)
        stats.divergence()
        log.warning(
            "divergence on %s: Atlantis says %s, the engine says %s; %s [EL006]",
            key,
            atlantis_owner,
            engine_owner,
            what,
        )
        return True
