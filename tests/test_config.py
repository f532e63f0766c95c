"""Loading the config: precedence, the seed guide's snippets, and problems reported all at once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sidecar.config import (
    ENV_VARS,
    KnownNames,
    Problem,
    Settings,
    default_config_path,
    env_var_name,
    format_duration,
    iter_fields,
    load,
    loads,
    parse_duration,
)

SEED_NAMES = KnownNames(
    backends={"sqlite", "redis", "memory"},
    overflow_policies={"reject_newest", "reject_oldest", "reject_lowest_priority"},
    resolution_policies={"lowest_priority", "youngest_first", "random"},
)


def write(tmp_path: Path, text: str, name: str = "atlantis-sidecar.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def messages(problems: list[Problem]) -> list[str]:
    return [str(p) for p in problems]


# ---- the seed guide's YAML snippets, written as TOML --------------------------------------------

SEED_SNIPPETS = {
    "connection pool": """
        [enhanced-locking.redis]
        pool-size = 50
        max-retries = 3
        retry-delay = "1s"
        dial-timeout = "5s"
        read-timeout = "3s"
        write-timeout = "3s"
    """,
    "lock acquisition timeouts": """
        [enhanced-locking]
        lock-timeout = "30s"
        queue-timeout = "60s"
        priority-queue = true

        [enhanced-locking.queue-config]
        processing-interval = "10ms"
        batch-size = 10
    """,
    "high cpu": """
        [enhanced-locking.deadlock-detection]
        check-interval = "60s"

        [enhanced-locking.priority-queue]
        heap-optimization = true
        lazy-evaluation = true
    """,
    "false positives": """
        [enhanced-locking.deadlock-detection]
        check-interval = "45s"
        min-cycle-length = 3
        confidence-threshold = 0.8
    """,
    "resolution failures": """
        [enhanced-locking.deadlock-detection]
        resolution-policies = ["lowest_priority", "youngest_first", "random"]
        max-resolution-attempts = 5
    """,
    "queue overflow": """
        [enhanced-locking]
        priority-queue = true
        batch-processing = true
        batch-size = 20

        [enhanced-locking.queue-config]
        max-queue-size = 1000
        overflow-policy = "reject_oldest"
    """,
    "queue starvation": """
        [enhanced-locking.priority-queue]
        anti-starvation = true
        priority-boost-interval = "30s"
        max-wait-time = "300s"
    """,
    "metrics": """
        [enhanced-locking]
        metrics = true
        enhanced-metrics = true

        [enhanced-locking.metrics-config]
        endpoint = "/metrics"
        interval = "30s"
    """,
}


@pytest.mark.parametrize("snippet", SEED_SNIPPETS.values(), ids=SEED_SNIPPETS.keys())
def test_every_seed_guide_snippet_loads_without_problems(tmp_path: Path, snippet: str) -> None:
    text = "\n".join(line.strip() for line in snippet.splitlines())
    result = load(write(tmp_path, text), env={}, known_names=SEED_NAMES)
    assert messages(result.problems) == []


def test_seed_snippet_values_arrive_in_settings(tmp_path: Path) -> None:
    # Three of the snippets above in one file (TOML allows each table header only once).
    text = """
[enhanced-locking]
lock-timeout = "30s"
queue-timeout = "60s"
priority-queue = true
batch-processing = true
batch-size = 20

[enhanced-locking.queue-config]
processing-interval = "10ms"
batch-size = 10
max-queue-size = 1000
overflow-policy = "reject_oldest"

[enhanced-locking.redis]
pool-size = 50
max-retries = 3
retry-delay = "1s"
"""
    result = load(write(tmp_path, text), env={}, known_names=SEED_NAMES)
    assert messages(result.problems) == []
    s = result.settings
    assert s.redis.pool_size == 50
    assert s.redis.retry_delay == 1.0
    assert s.queue_timeout == 60.0
    assert s.priority_queue.enabled is True
    assert s.queue_config.processing_interval == pytest.approx(0.01)
    assert s.queue_config.batch_size == 10
    assert s.queue_config.overflow_policy == "reject_oldest"
    assert (s.batch_processing, s.batch_size) == (True, 20)


def test_seed_environment_variables_set_log_level_and_workers() -> None:
    result = loads("", env={"ATLANTIS_LOG_LEVEL": "debug", "ATLANTIS_QUEUE_WORKERS": "8"})
    assert result.problems == []
    assert result.settings.log_level == "debug"
    assert result.settings.queue_config.workers == 8


def test_atlantis_spelling_warn_is_accepted_as_warning() -> None:
    assert loads("", env={"ATLANTIS_LOG_LEVEL": "warn"}).settings.log_level == "warning"


# ---- precedence ---------------------------------------------------------------------------------


def test_precedence_is_defaults_file_atlantis_env_specific_env_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[enhanced-locking]\nlog-level = "error"\ndata-dir = "/from/file"\n'
        "[enhanced-locking.queue-config]\nworkers = 3\nmax-queue-size = 10\n",
    )
    assert load(None, env={}).settings.log_level == "info"

    from_file = load(path, env={})
    assert from_file.settings.log_level == "error"
    assert from_file.settings.queue_config.workers == 3
    assert from_file.origins["log-level"] == "file"

    env = {"ATLANTIS_LOG_LEVEL": "debug", "ATLANTIS_QUEUE_WORKERS": "5"}
    atlantis_env = load(path, env=env)
    assert atlantis_env.settings.log_level == "debug"
    assert atlantis_env.settings.queue_config.workers == 5

    env |= {
        "ATLANTIS_ENHANCED_LOCKING_LOG_LEVEL": "warning",
        "ATLANTIS_ENHANCED_LOCKING_QUEUE_CONFIG_WORKERS": "7",
        "ATLANTIS_ENHANCED_LOCKING_QUEUE_CONFIG_MAX_QUEUE_SIZE": "20",
    }
    specific = load(path, env=env)
    assert specific.settings.log_level == "warning"
    assert specific.settings.queue_config.workers == 7
    assert specific.settings.queue_config.max_queue_size == 20
    assert specific.origins["queue-config.max-queue-size"] == (
        "ATLANTIS_ENHANCED_LOCKING_QUEUE_CONFIG_MAX_QUEUE_SIZE"
    )

    flags = {"data-dir": "/from/flag", "enhanced-locking.log-level": "debug"}
    overridden = load(path, env=env, overrides=flags)
    assert overridden.problems == []
    assert overridden.settings.data_dir == "/from/flag"
    assert overridden.settings.log_level == "debug"
    assert overridden.settings.queue_config.workers == 7
    assert overridden.origins["data-dir"] == "override"


def test_bad_env_value_is_reported_and_the_file_value_stays(tmp_path: Path) -> None:
    path = write(tmp_path, "[enhanced-locking.queue-config]\nmax-queue-size = 10\n")
    env = {"ATLANTIS_ENHANCED_LOCKING_QUEUE_CONFIG_MAX_QUEUE_SIZE": "lots"}
    result = load(path, env=env)
    assert result.settings.queue_config.max_queue_size == 10
    assert messages(result.problems) == [
        "enhanced-locking.queue-config.max-queue-size: expected an integer, got 'lots'"
        " (from ATLANTIS_ENHANCED_LOCKING_QUEUE_CONFIG_MAX_QUEUE_SIZE) [EL003]"
    ]


def test_env_bool_form_of_priority_queue_switches_it() -> None:
    result = loads("", env={"ATLANTIS_ENHANCED_LOCKING_PRIORITY_QUEUE": "false"})
    assert result.problems == []
    assert result.settings.priority_queue.enabled is False
    assert result.settings.priority_queue.heap_optimization is True


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("1", True), ("YES", True), ("false", False), ("0", False), ("no", False)],
)
def test_env_bools_accept_common_spellings(raw: str, expected: bool) -> None:
    result = loads("", env={"ATLANTIS_ENHANCED_LOCKING_QUEUE_CONFIG_PARALLEL_PROCESSING": raw})
    assert result.settings.queue_config.parallel_processing is expected


def test_env_lists_are_comma_separated() -> None:
    env = {"ATLANTIS_ENHANCED_LOCKING_REDIS_CLUSTER_NODES": "r1:6379, r2:6379,"}
    assert loads("", env=env).settings.redis.cluster_nodes == ("r1:6379", "r2:6379")


def test_empty_env_variable_counts_as_unset() -> None:
    result = loads(
        '[enhanced-locking]\nbackend = "redis"\n',
        env={
            "ATLANTIS_ENHANCED_LOCKING_BACKEND": "",
        },
    )
    assert result.settings.backend == "redis"


def test_unknown_env_variable_with_our_prefix_is_a_problem_with_a_suggestion() -> None:
    result = loads("", env={"ATLANTIS_ENHANCED_LOCKING_QUEUE_CONFIG_MAX_QUEUE_SIZ": "5"})
    assert messages(result.problems) == [
        "ATLANTIS_ENHANCED_LOCKING_QUEUE_CONFIG_MAX_QUEUE_SIZ: unknown environment variable"
        " (did you mean 'ATLANTIS_ENHANCED_LOCKING_QUEUE_CONFIG_MAX_QUEUE_SIZE'?) [EL003]"
    ]


def test_env_variable_table_covers_every_key_without_collisions() -> None:
    paths = [info.path for info in iter_fields()]
    names = [env_var_name(path) for path in paths]
    assert len(set(names)) == len(names), "two keys share an environment variable"
    assert set(ENV_VARS) == set(names)
    assert ENV_VARS["ATLANTIS_ENHANCED_LOCKING_QUEUE_CONFIG_MAX_QUEUE_SIZE"] == (
        "queue-config.max-queue-size"
    )
    assert ENV_VARS["ATLANTIS_ENHANCED_LOCKING_PRIORITY_QUEUE"] == "priority-queue"


def test_unknown_override_is_a_problem() -> None:
    result = loads("", env={}, overrides={"redis.prot": "1"})
    assert len(result.problems) == 1
    assert result.problems[0].path == "enhanced-locking.redis.prot"
    assert "did you mean 'redis.port'" in result.problems[0].message


# ---- ${VAR} -------------------------------------------------------------------------------------


def test_variable_references_expand_in_file_env_and_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[enhanced-locking]\ndata-dir = "${STATE}/locks"\n'
        '[enhanced-locking.redis]\npassword = "${REDIS_PASSWORD}"\npool-size = "${POOL}"\n',
    )
    env = {
        "STATE": "/var/lib",
        "REDIS_PASSWORD": "hunter2",
        "POOL": "25",
        "HOST": "redis-1",
        "ATLANTIS_ENHANCED_LOCKING_REDIS_HOST": "${HOST}",
    }
    result = load(path, env=env, overrides={"redis.username": "${HOST}-user"})
    assert result.problems == []
    assert result.settings.data_dir == "/var/lib/locks"
    assert result.settings.redis.password == "hunter2"
    assert result.settings.redis.pool_size == 25
    assert result.settings.redis.host == "redis-1"
    assert result.settings.redis.username == "redis-1-user"


def test_missing_variable_is_a_problem_naming_key_and_variable(tmp_path: Path) -> None:
    path = write(tmp_path, '[enhanced-locking.redis]\npassword = "${REDIS_PASSWORD}"\n')
    result = load(path, env={})
    assert messages(result.problems) == [
        "enhanced-locking.redis.password: environment variable REDIS_PASSWORD is not set"
        " (referenced as ${REDIS_PASSWORD}) [EL003]"
    ]
    assert result.settings.redis.password == ""


def test_double_dollar_keeps_a_literal_reference() -> None:
    result = loads('[enhanced-locking]\napi-token = "a$${B}c"\n', env={})
    assert result.problems == []
    assert result.settings.api_token == "a${B}c"


# ---- problems -----------------------------------------------------------------------------------


def test_validation_reports_every_problem_with_its_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[enhanced-locking]
enabled = "yes"
lock-timeout = "0s"
listen = "0.0.0.0:99999"
upstream = "ftp://atlantis"
log-level = "loud"

[enhanced-locking.queue-config]
max-queue-size = 0
workers = true
overflow-policy = "drop_everything"

[enhanced-locking.deadlock-detection]
min-cycle-length = 1
confidence-threshold = 1.5
resolution-policies = []

[enhanced-locking.metrics-config]
endpoint = "metrics"

[enhanced-locking.migration]
active-system = "both"
traffic-percentage = 101
""",
    )
    result = load(path, env={}, known_names=SEED_NAMES)
    by_path = {p.path: p for p in result.problems}
    assert set(by_path) == {
        f"enhanced-locking.{key}"
        for key in (
            "enabled",
            "lock-timeout",
            "listen",
            "upstream",
            "log-level",
            "queue-config.max-queue-size",
            "queue-config.workers",
            "queue-config.overflow-policy",
            "deadlock-detection.min-cycle-length",
            "deadlock-detection.confidence-threshold",
            "deadlock-detection.resolution-policies",
            "metrics-config.endpoint",
            "migration.active-system",
            "migration.traffic-percentage",
        )
    }
    assert all(p.code == "EL003" for p in result.problems)
    assert str(by_path["enhanced-locking.queue-config.overflow-policy"]) == (
        "enhanced-locking.queue-config.overflow-policy: unknown overflow policy 'drop_everything'"
        " (known: reject_lowest_priority, reject_newest, reject_oldest) [EL003]"
    )
    assert "write it without quotes" in by_path["enhanced-locking.enabled"].message
    assert "65535" in by_path["enhanced-locking.listen"].message
    # Bad values fall back to defaults so that the rest of the sidecar still sees a whole config.
    assert result.settings == Settings()


def test_unknown_key_is_reported_with_close_matches(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[enhanced-locking.queue-config]\nmax-queue-szie = 5\nmax_queue_size = 6\nfrobnicate = 1\n",
    )
    result = load(path, env={})
    assert messages(result.problems) == [
        "enhanced-locking.queue-config.max-queue-szie: unknown key"
        " (did you mean 'max-queue-size'?) [EL003]",
        "enhanced-locking.queue-config.max_queue_size: unknown key"
        " (did you mean 'max-queue-size'? keys use dashes) [EL003]",
        "enhanced-locking.queue-config.frobnicate: unknown key [EL003]",
    ]


def test_wrong_types_are_each_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[enhanced-locking]\nmetrics = 1\nbatch-size = 2.5\npriority-queue = "on"\n'
        'queue-config = 3\n[enhanced-locking.redis]\ncluster-nodes = "a:1"\nport = true\n',
    )
    assert messages(load(path, env={}).problems) == [
        "enhanced-locking.metrics: expected true or false, got integer 1 [EL003]",
        "enhanced-locking.batch-size: expected an integer, got float 2.5 [EL003]",
        "enhanced-locking.priority-queue: expected true, false or a table, got string 'on' [EL003]",
        "enhanced-locking.queue-config: expected a table, got integer 3 [EL003]",
        "enhanced-locking.redis.cluster-nodes: expected a list of strings, got string 'a:1'"
        ' (write ["a", "b"]) [EL003]',
        "enhanced-locking.redis.port: expected an integer, got boolean true [EL003]",
    ]


def test_type_problems_never_repeat_a_secret() -> None:
    result = loads('[enhanced-locking.redis]\npassword = ["hunter2"]\n', env={})
    assert len(result.problems) == 1
    assert "hunter2" not in str(result.problems[0])


def test_cluster_nodes_with_a_database_other_than_zero_is_a_problem() -> None:
    result = loads('[enhanced-locking.redis]\ndb = 3\ncluster-nodes = ["r1:6379"]\n', env={})
    assert messages(result.problems) == [
        "enhanced-locking.redis.db: must be 0 when redis.cluster-nodes is set"
        " (Redis Cluster has only database 0), got 3 [EL003]"
    ]
    assert result.settings.redis.db == 0


def test_sentinel_nodes_need_a_master_name() -> None:
    result = loads('[enhanced-locking.redis.sentinel]\nnodes = ["s1:26379"]\n', env={})
    assert [p.path for p in result.problems] == ["enhanced-locking.redis.sentinel.master-name"]


def test_unknown_backend_lists_the_known_ones() -> None:
    result = loads('[enhanced-locking]\nbackend = "boltdb"\n', env={}, known_names=SEED_NAMES)
    assert messages(result.problems) == [
        "enhanced-locking.backend: unknown backend 'boltdb' (known: memory, redis, sqlite) [EL003]"
    ]
    assert result.settings.backend == "sqlite"


def test_plugin_names_are_not_checked_without_known_names() -> None:
    assert loads('[enhanced-locking]\nbackend = "etcd"\n', env={}).problems == []


def test_keys_outside_the_table_and_misspelled_table_are_reported() -> None:
    result = loads('lock-timeout = "5s"\n[enhanced_locking]\nenabled = true\n', env={})
    assert messages(result.problems) == [
        "lock-timeout: 'lock-timeout' must be inside the [enhanced-locking] table;"
        " it is ignored here [EL003]",
        "enhanced_locking: unknown table 'enhanced_locking' (did you mean 'enhanced-locking'?)"
        " [EL003]",
    ]


def test_other_tables_in_the_same_file_are_ignored() -> None:
    text = '[server]\nport = 1\n[redis]\nurl = "x"\n[enhanced-locking]\nenabled = false\n'
    result = loads(text, env={})
    assert result.problems == []
    assert result.settings.enabled is False


# ---- the file -----------------------------------------------------------------------------------


def test_missing_config_file_is_el007(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = load(missing, env={})
    assert messages(result.problems) == [
        f"cannot read config file {missing}: No such file or directory [EL007]"
    ]
    assert result.settings == Settings()


def test_unreadable_config_path_is_el007(tmp_path: Path) -> None:
    # Tests run as root, which ignores chmod 000; a directory is unreadable as a file for anyone.
    result = load(tmp_path, env={})
    assert [p.code for p in result.problems] == ["EL007"]
    assert str(tmp_path) in result.problems[0].message


def test_problems_from_env_are_still_reported_when_the_file_is_missing(tmp_path: Path) -> None:
    env = {"ATLANTIS_ENHANCED_LOCKING_LOCK_TIMEOUT": "soon"}
    result = load(tmp_path / "nope.toml", env=env)
    assert [p.code for p in result.problems] == ["EL007", "EL003"]


def test_toml_syntax_error_is_el003_with_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[enhanced-locking]\nenabled = true\nbackend = = "x"\n')
    result = load(path, env={})
    assert len(result.problems) == 1
    problem = result.problems[0]
    assert (problem.path, problem.code) == (str(path), "EL003")
    assert "line 3" in problem.message


def test_default_config_path_prefers_the_env_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_config_path({}) is None
    write(tmp_path, "")
    assert default_config_path({}) == tmp_path / "atlantis-sidecar.toml"
    assert default_config_path({"ATLANTIS_SIDECAR_CONFIG": "/etc/x.toml"}) == Path("/etc/x.toml")


# ---- durations and settings helpers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("100ms", 0.1),
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("1m30s", 90),
        ("1.5s", 1.5),
        ("2", 2),
        (45, 45),
        (0.25, 0.25),
        ("30d", 30 * 86400),
    ],
)
def test_durations_accept_go_notation_and_seconds(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("0s", "greater than zero"),
        (0, "greater than zero"),
        ("-1s", "positive"),
        (-3, "positive"),
        ("abc", "invalid duration"),
        ("5 minutes", "invalid duration"),
        ("31d", "at most 30 days"),
        (True, "boolean"),
    ],
)
def test_durations_refuse_zero_negative_garbage_and_huge(text: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_duration(text)


@pytest.mark.parametrize("bad", ["0s", "-1s", "abc", "31d"])
def test_bad_duration_in_file_is_a_problem_on_its_key(bad: str) -> None:
    result = loads(f'[enhanced-locking]\nlock-timeout = "{bad}"\n', env={})
    assert [p.path for p in result.problems] == ["enhanced-locking.lock-timeout"]
    assert result.settings.lock_timeout == 30.0


@pytest.mark.parametrize("seconds", [0.1, 0.01, 1.5, 30, 90, 300, 3600, 5400.5, 86400])
def test_formatted_durations_parse_back(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


def test_listen_and_data_dir_helpers() -> None:
    s = loads('[enhanced-locking]\nlisten = "[::1]:8080"\ndata-dir = "~/locks"\n', env={}).settings
    assert (s.listen_host, s.listen_port) == ("::1", 8080)
    assert s.data_path == Path(os.path.expanduser("~/locks"))
    assert Settings().listen_host == "0.0.0.0"
    assert Settings().listen_port == 4141
    bare = loads('[enhanced-locking]\nlisten = ":9000"\n', env={}).settings
    assert (bare.listen_host, bare.listen_port) == ("0.0.0.0", 9000)


def test_ints_reject_bools_and_out_of_range_sizes() -> None:
    text = (
        "[enhanced-locking.queue-config]\nbatch-size = true\nmax-queue-size = 1000001\n"
        "[enhanced-locking.redis]\npool-size = 0\n"
    )
    result = loads(text, env={})
    assert [p.path for p in result.problems] == [
        "enhanced-locking.queue-config.batch-size",
        "enhanced-locking.queue-config.max-queue-size",
        "enhanced-locking.redis.pool-size",
    ]
