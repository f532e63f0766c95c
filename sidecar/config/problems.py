"""One problem found in the configuration.

`config validate` must print every problem at once, so loading never raises on bad input: it
collects these instead. Each names the key path as the operator wrote it (or the environment
variable, or the file) so the fix is obvious without reading our source.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.errors import Code

INVALID_CONFIG = str(Code.INVALID_CONFIG)
PERMISSION_DENIED = str(Code.PERMISSION_DENIED)


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    message: str
    code: str = INVALID_CONFIG

    def __str__(self) -> str:
        prefix = f"{self.path}: " if self.path else ""
        return f"{prefix}{self.message} [{self.code}]"

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message, "code": self.code}
