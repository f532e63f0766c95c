"""atlantis-lock-sidecar: queued, fenced, deadlock-aware locks beside Atlantis."""

__version__ = "0.1.0"
