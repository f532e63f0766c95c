"""Log format: every line names `enhanced-locking`, so the guide's grep patterns find it."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s [enhanced-locking] %(name)s: %(message)s"


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would log every proxied request at info; keep it at warning.
    logging.getLogger("aiohttp.access").setLevel(max(logging.WARNING, root.level))
