"""The settings of the `[enhanced-locking]` table, with each key's rules and documentation.

Python attributes are the seed guide's kebab-case keys with `-` turned into `_`. Every class is
frozen: a running sidecar swaps whole Settings objects on reload instead of mutating one that
other tasks are reading.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.config import checks
from sidecar.config.spec import SPEC, TABLE, Kind, Spec, TableSpec, leaf, table_meta

ROOT = "enhanced-locking"
ENV_PREFIX = "ATLANTIS_ENHANCED_LOCKING_"

LOG_LEVELS = {
    "debug": "debug",
    "info": "info",
    # Atlantis spells it "warn"; ATLANTIS_LOG_LEVEL is shared with it, so both must be valid.
    "warn": "warning",
    "warning": "warning",
    "error": "error",
}
SQLITE_SYNCHRONOUS = {"off": "OFF", "normal": "NORMAL", "full": "FULL", "extra": "EXTRA"}
ACTIVE_SYSTEMS = {"legacy": "legacy", "enhanced": "enhanced"}

_BACKEND = ("backends", "backend")
_OVERFLOW = ("overflow_policies", "overflow policy")
_RESOLUTION = ("resolution_policies", "resolution policy")


@dataclass(frozen=True, slots=True)
class PriorityQueueSettings:
    enabled: bool = leaf(True, Kind.BOOL, "Order waiters by priority; false means plain FIFO.")
    heap_optimization: bool = leaf(
        True,
        Kind.BOOL,
        "Keep each queue sorted by a score fixed at enqueue time, so it never needs re-sorting.",
    )
    lazy_evaluation: bool = leaf(
        True, Kind.BOOL, "Work out effective priority only when a lock is handed on."
    )
    anti_starvation: bool = leaf(
        True, Kind.BOOL, "Raise a waiter one priority level per `priority-boost-interval` waited."
    )
    priority_boost_interval: float = leaf(
        30.0, Kind.DURATION, "Waiting time worth one priority level under anti-starvation."
    )
    max_wait_time: float = leaf(
        300.0, Kind.DURATION, "A request waiting longer than this goes to the front of its queue."
    )


@dataclass(frozen=True, slots=True)
class QueueConfigSettings:
    processing_interval: float = leaf(
        0.1,
        Kind.DURATION,
        "Pace of the sweep that expires leases and queue deadlines; hand-offs never wait for it.",
    )
    batch_size: int = leaf(
        100, Kind.INT, "Most expired entries one sweep handles.", minimum=1, maximum=10_000
    )
    max_queue_size: int = leaf(
        1000,
        Kind.INT,
        "Most waiting requests; past it the overflow policy decides (EL005).",
        minimum=1,
        maximum=1_000_000,
    )
    overflow_policy: str = leaf(
        "reject_newest",
        Kind.STRING,
        "Overflow policy plugin: reject_newest, reject_oldest, reject_lowest_priority, ...",
        check=checks.check_name,
        plugin=_OVERFLOW,
    )
    parallel_processing: bool = leaf(
        False,
        Kind.BOOL,
        "Run `workers` sweep tasks at once, each taking its own batch of due work.",
    )
    workers: int = leaf(
        2,
        Kind.INT,
        "Sweep tasks under parallel-processing; ATLANTIS_QUEUE_WORKERS also sets it.",
        minimum=1,
        maximum=64,
    )


@dataclass(frozen=True, slots=True)
class SqliteSettings:
    synchronous: str = leaf(
        "FULL",
        Kind.STRING,
        "SQLite `PRAGMA synchronous`: OFF, NORMAL, FULL or EXTRA; FULL survives power loss.",
        choices=SQLITE_SYNCHRONOUS,
    )
    busy_timeout: float = leaf(
        5.0, Kind.DURATION, "How long a write waits for another process holding the database."
    )


@dataclass(frozen=True, slots=True)
class SentinelSettings:
    master_name: str = leaf("", Kind.STRING, "Sentinel master name; set with `nodes`.")
    nodes: tuple[str, ...] = leaf(
        (),
        Kind.STRING_LIST,
        "Sentinel addresses (host:port); enables Sentinel mode.",
        check=checks.check_node,
    )


@dataclass(frozen=True, slots=True)
class RedisSettings:
    host: str = leaf("127.0.0.1", Kind.STRING, "Redis host (standalone mode).")
    port: int = leaf(6379, Kind.INT, "Redis port (standalone mode).", minimum=1, maximum=65535)
    db: int = leaf(0, Kind.INT, "Redis database number; must be 0 with cluster-nodes.", minimum=0)
    username: str = leaf("", Kind.STRING, "Redis ACL user name; empty for the default user.")
    password: str = leaf(
        "",
        Kind.STRING,
        'Redis password; write "${REDIS_PASSWORD}" to keep it in the environment.',
        secret=True,
    )
    tls: bool = leaf(False, Kind.BOOL, "Connect with TLS.")
    tls_ca_file: str = leaf("", Kind.STRING, "CA bundle for TLS; empty uses the system store.")
    tls_insecure_skip_verify: bool = leaf(
        False, Kind.BOOL, "Skip TLS certificate checks (testing only)."
    )
    pool_size: int = leaf(
        10, Kind.INT, "Connections per sidecar process.", minimum=1, maximum=10_000
    )
    max_retries: int = leaf(
        3, Kind.INT, "Retries of a failed command before EL001.", minimum=0, maximum=100
    )
    retry_delay: float = leaf(0.1, Kind.DURATION, "Pause before the first retry; it doubles.")
    dial_timeout: float = leaf(5.0, Kind.DURATION, "Timeout for opening a connection.")
    read_timeout: float = leaf(3.0, Kind.DURATION, "Timeout for reading a reply.")
    write_timeout: float = leaf(3.0, Kind.DURATION, "Timeout for sending a command.")
    key_prefix: str = leaf(
        "atlantis:enhanced:",
        Kind.STRING,
        "Prefix of every Redis key the sidecar writes.",
        check=checks.check_key_prefix,
    )
    cluster_nodes: tuple[str, ...] = leaf(
        (),
        Kind.STRING_LIST,
        "Redis Cluster seed nodes (host:port); enables cluster mode.",
        check=checks.check_node,
    )
    sentinel: SentinelSettings = field(
        default_factory=SentinelSettings,
        metadata=table_meta(SentinelSettings, "Redis Sentinel (high availability)."),
    )


@dataclass(frozen=True, slots=True)
class DeadlockDetectionSettings:
    enabled: bool = leaf(True, Kind.BOOL, "Detect and resolve deadlocks between waiters.")
    check_interval: float = leaf(
        30.0,
        Kind.DURATION,
        "Period of the full wait-for graph sweep (new waits are checked at once).",
    )
    min_cycle_length: int = leaf(
        2, Kind.INT, "Shortest cycle (in owners) that is reported.", minimum=2, maximum=10_000
    )
    confidence_threshold: float = leaf(
        0.8,
        Kind.FLOAT,
        "Share of a cycle's edges still present on re-read needed to act (0..1).",
        minimum=0.0,
        maximum=1.0,
    )
    resolution_policies: tuple[str, ...] = leaf(
        ("lowest_priority", "youngest_first", "random"),
        Kind.STRING_LIST,
        "Victim policies, tried in order until one picks a victim.",
        check=checks.check_name,
        plugin=_RESOLUTION,
        non_empty=True,
    )
    max_resolution_attempts: int = leaf(
        3,
        Kind.INT,
        "Attempts per cycle before `cascade resolution failed`.",
        minimum=1,
        maximum=1000,
    )


@dataclass(frozen=True, slots=True)
class MetricsConfigSettings:
    endpoint: str = leaf(
        "/metrics",
        Kind.STRING,
        "Path of the Prometheus scrape endpoint.",
        restart=True,
        check=checks.check_endpoint,
    )
    interval: float = leaf(30.0, Kind.DURATION, "Refresh period of gauges computed by polling.")


@dataclass(frozen=True, slots=True)
class ProxySettings:
    connect_timeout: float = leaf(
        5.0,
        Kind.DURATION,
        "How long opening a connection to Atlantis may take; past it the proxy answers 504.",
    )
    read_timeout: float = leaf(
        600.0,
        Kind.DURATION,
        "Longest wait for Atlantis's answer or the next piece of its body (504 before headers);"
        " long, as /api/plan answers after Terraform. WebSockets are exempt.",
    )
    max_connections: int = leaf(
        100,
        Kind.INT,
        "Most pooled connections to Atlantis at once; further requests wait for a free one.",
        minimum=1,
        maximum=100_000,
        restart=True,
    )


@dataclass(frozen=True, slots=True)
class MigrationSettings:
    active_system: str = leaf(
        "legacy",
        Kind.STRING,
        "`legacy` (Atlantis decides) or `enhanced` (every lock goes to the engine).",
        choices=ACTIVE_SYSTEMS,
    )
    traffic_percentage: int = leaf(
        0,
        Kind.INT,
        "Share of lock keys (by hash bucket) served by the engine while legacy is active.",
        minimum=0,
        maximum=100,
    )


@dataclass(frozen=True, slots=True)
class Settings:
    enabled: bool = leaf(
        True, Kind.BOOL, "Master switch; false makes the sidecar a pure proxy (rollback)."
    )
    backend: str = leaf(
        "sqlite",
        Kind.STRING,
        "Backend plugin that stores locks: sqlite, redis, memory, or a plugin's.",
        restart=True,
        check=checks.check_name,
        plugin=_BACKEND,
    )
    data_dir: str = leaf(
        "~/.atlantis-sidecar",
        Kind.STRING,
        "Directory for the SQLite database and local state (`~` is expanded).",
        restart=True,
    )
    listen: str = leaf(
        "0.0.0.0:4141",
        Kind.STRING,
        "Address the sidecar serves on (host:port); Atlantis's public port.",
        restart=True,
        check=checks.check_listen,
    )
    upstream: str = leaf(
        "http://127.0.0.1:4142",
        Kind.STRING,
        "Atlantis's own URL; everything not about locks is proxied there.",
        check=checks.check_http_url,
    )
    proxy: ProxySettings = field(
        default_factory=ProxySettings,
        metadata=table_meta(ProxySettings, "The reverse proxy to Atlantis."),
    )
    admin_token: str = leaf(
        "",
        Kind.STRING,
        "Bearer token for admin endpoints; they are refused while it is empty.",
        secret=True,
    )
    api_token: str = leaf(
        "",
        Kind.STRING,
        "`X-Atlantis-Token` required by mutating enhanced endpoints; empty allows anyone.",
        secret=True,
    )
    log_level: str = leaf(
        "info",
        Kind.STRING,
        "debug, info, warning (or warn) or error; ATLANTIS_LOG_LEVEL also sets it.",
        choices=LOG_LEVELS,
    )
    lock_timeout: float = leaf(
        30.0, Kind.DURATION, "How long an acquire waits by default before EL002."
    )
    queue_timeout: float = leaf(
        300.0, Kind.DURATION, "How long a request may stay queued after its caller stops waiting."
    )
    priority_queue: PriorityQueueSettings = field(
        default_factory=PriorityQueueSettings,
        metadata=table_meta(
            PriorityQueueSettings,
            "true/false, or a table: priority ordering of waiters.",
            bool_form="enabled",
        ),
    )
    queue_config: QueueConfigSettings = field(
        default_factory=QueueConfigSettings,
        metadata=table_meta(QueueConfigSettings, "Queue processing."),
    )
    batch_processing: bool = leaf(
        False,
        Kind.BOOL,
        "Group commit: writes arriving during a commit share the next transaction (one fsync).",
        restart=True,
    )
    batch_size: int = leaf(
        20,
        Kind.INT,
        "Most writes sharing one transaction under batch-processing.",
        minimum=1,
        maximum=10_000,
        restart=True,
    )
    sqlite: SqliteSettings = field(
        default_factory=SqliteSettings,
        metadata=table_meta(SqliteSettings, "SQLite backend.", restart=True),
    )
    redis: RedisSettings = field(
        default_factory=RedisSettings,
        metadata=table_meta(RedisSettings, "Redis backend.", restart=True),
    )
    deadlock_detection: DeadlockDetectionSettings = field(
        default_factory=DeadlockDetectionSettings,
        metadata=table_meta(DeadlockDetectionSettings, "Deadlock detection."),
    )
    metrics: bool = leaf(True, Kind.BOOL, "Serve Prometheus metrics at `metrics-config.endpoint`.")
    enhanced_metrics: bool = leaf(
        True, Kind.BOOL, "Also collect per-queue and deadlock detail (costs a little CPU)."
    )
    metrics_config: MetricsConfigSettings = field(
        default_factory=MetricsConfigSettings,
        metadata=table_meta(MetricsConfigSettings, "Metrics."),
    )
    migration: MigrationSettings = field(
        default_factory=MigrationSettings,
        metadata=table_meta(MigrationSettings, "Migration from Atlantis's locks."),
    )

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def listen_host(self) -> str:
        host, _ = checks.split_host_port(self.listen, allow_empty_host=True)
        # Go's ":4141" means every interface, and so does it here.
        return host or "0.0.0.0"

    @property
    def listen_port(self) -> int:
        return checks.split_host_port(self.listen, allow_empty_host=True)[1]


@dataclass(frozen=True, slots=True)
class KnownNames:
    """What the plugin manager registered, passed in because plugins import config, not the
    other way round. None leaves that kind unchecked (e.g. before plugins are loaded)."""

    backends: Collection[str] | None = None
    overflow_policies: Collection[str] | None = None
    resolution_policies: Collection[str] | None = None


# ---- the index of keys, built once from the dataclasses above ----------------------------------


@dataclass(frozen=True, slots=True)
class Leaf:
    path: str
    attrs: tuple[str, ...]
    spec: Spec
    restart: bool
    default: Any


@dataclass(frozen=True, slots=True)
class TableInfo:
    path: str
    attrs: tuple[str, ...]
    spec: TableSpec | None
    keys: dict[str, str]  # kebab key -> full dotted path of a leaf or sub-table


def kebab(attr: str) -> str:
    return attr.replace("_", "-")


def join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def env_var_name(path: str) -> str:
    return ENV_PREFIX + path.upper().replace("-", "_").replace(".", "_")


def _index() -> tuple[dict[str, Leaf], dict[str, TableInfo]]:
    leaves: dict[str, Leaf] = {}
    tables: dict[str, TableInfo] = {}

    def walk(
        cls: type[Any], prefix: str, attrs: tuple[str, ...], spec: TableSpec | None, restart: bool
    ) -> None:
        info = TableInfo(prefix, attrs, spec, {})
        tables[prefix] = info
        for f in dataclasses.fields(cls):
            key = kebab(f.name)
            path = join(prefix, key)
            info.keys[key] = path
            if TABLE in f.metadata:
                sub: TableSpec = f.metadata[TABLE]
                walk(sub.cls, path, (*attrs, f.name), sub, restart or sub.restart)
            else:
                leaf_spec: Spec = f.metadata[SPEC]
                leaves[path] = Leaf(
                    path, (*attrs, f.name), leaf_spec, restart or leaf_spec.restart, f.default
                )

    walk(Settings, "", (), None, False)
    return leaves, tables


LEAVES, TABLES = _index()

# Tables that may be written as a bare bool: "priority-queue" -> "priority-queue.enabled".
BOOL_FORMS: dict[str, str] = {
    path: join(path, info.spec.bool_form)
    for path, info in TABLES.items()
    if info.spec is not None and info.spec.bool_form
}


def resolve_key(path: str) -> str | None:
    """The leaf a dotted key sets (a bool-form table stands for its switch), or None."""
    path = path.removeprefix(ROOT + ".")
    if path in LEAVES:
        return path
    return BOOL_FORMS.get(path)


def _env_table() -> dict[str, str]:
    names: dict[str, str] = {}
    for path in [*LEAVES, *BOOL_FORMS]:
        name = env_var_name(path)
        if name in names:
            raise RuntimeError(f"{path} and {names[name]} both map to environment variable {name}")
        names[name] = path
    return names


# ATLANTIS_ENHANCED_LOCKING_<PATH> -> dotted key (a leaf or a bool-form table).
ENV_VARS: dict[str, str] = _env_table()

# Atlantis's own variables that the seed guide tells operators to set; weaker than ours.
ATLANTIS_ENV_VARS: dict[str, str] = {
    "ATLANTIS_LOG_LEVEL": "log-level",
    "ATLANTIS_QUEUE_WORKERS": "queue-config.workers",
}


def get_value(settings: Settings, path: str) -> Any:
    value: Any = settings
    for attr in LEAVES[path].attrs:
        value = getattr(value, attr)
    return value


def iter_leaves() -> Iterator[Leaf]:
    return iter(LEAVES.values())
