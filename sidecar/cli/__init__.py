"""The `atlantis-sidecar` command."""
