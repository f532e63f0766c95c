"""The sidecar's HTTP surface: the enhanced-locks API (and, in front of it, the Atlantis proxy)."""
