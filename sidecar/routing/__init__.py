"""Which system owns a lock key: Atlantis (legacy) or the engine (enhanced)."""
