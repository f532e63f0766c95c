"""The sidecar's configuration: one `[enhanced-locking]` TOML table, env vars and CLI flags.

Everything else in the sidecar imports from here only; the submodules are the implementation.
"""

from sidecar.config.durations import format_duration, parse_duration
from sidecar.config.loader import (
    CONFIG_ENV_VAR,
    LoadResult,
    build,
    default_config_path,
    load,
    loads,
)
from sidecar.config.problems import Problem
from sidecar.config.render import (
    REDACTED,
    FieldInfo,
    diff,
    diff_restart_required,
    iter_fields,
    redacted,
    reference_table_markdown,
    to_toml,
)
from sidecar.config.schema import (
    ATLANTIS_ENV_VARS,
    ENV_VARS,
    DeadlockDetectionSettings,
    KnownNames,
    MetricsConfigSettings,
    MigrationSettings,
    PriorityQueueSettings,
    QueueConfigSettings,
    RedisSettings,
    SentinelSettings,
    Settings,
    SqliteSettings,
    env_var_name,
)
from sidecar.config.writer import SetResult, set_value

__all__ = [
    "ATLANTIS_ENV_VARS",
    "CONFIG_ENV_VAR",
    "ENV_VARS",
    "REDACTED",
    "DeadlockDetectionSettings",
    "FieldInfo",
    "KnownNames",
    "LoadResult",
    "MetricsConfigSettings",
    "MigrationSettings",
    "PriorityQueueSettings",
    "Problem",
    "QueueConfigSettings",
    "RedisSettings",
    "SentinelSettings",
    "SetResult",
    "Settings",
    "SqliteSettings",
    "build",
    "default_config_path",
    "diff",
    "diff_restart_required",
    "env_var_name",
    "format_duration",
    "iter_fields",
    "load",
    "loads",
    "parse_duration",
    "redacted",
    "reference_table_markdown",
    "set_value",
    "to_toml",
]
