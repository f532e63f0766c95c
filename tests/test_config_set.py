"""`config set`: in-place edits that keep the operator's file, written atomically or not at all."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sidecar.config import KnownNames, load, set_value

ANNOTATED = """\
# Sidecar for the infra Atlantis.
[server]
enabled = true  # another program's key with the same name

[enhanced-locking]
# Emergency switch: see the runbook.
enabled = false   # flipped during the incident
backend = "redis"

[enhanced-locking.redis]
host = "redis-1"   # primary
pool-size = 50

[enhanced-locking.deadlock-detection]
enabled = true
check-interval = "45s"

[other]
x = 1
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "atlantis-sidecar.toml"
    path.write_text(ANNOTATED)
    return path


def test_replaces_value_in_place_keeping_comments(config: Path) -> None:
    result = set_value(config, "enhanced-locking.enabled", "true", env={})
    assert result.ok and result.written and result.changed
    assert (result.old, result.new) == ("false", "true")
    assert config.read_text() == ANNOTATED.replace(
        "enabled = false   # flipped", "enabled = true   # flipped"
    )


def test_edits_the_key_in_the_right_table(config: Path) -> None:
    set_value(config, "deadlock-detection.enabled", "false", env={})
    text = config.read_text()
    assert text == ANNOTATED.replace(
        "[enhanced-locking.deadlock-detection]\nenabled = true",
        "[enhanced-locking.deadlock-detection]\nenabled = false",
    )
    settings = load(config, env={}).settings
    assert settings.deadlock_detection.enabled is False
    assert settings.enabled is False


def test_inserts_a_missing_key_under_its_existing_table(config: Path) -> None:
    set_value(config, "redis.password", "s3cret", env={})
    assert config.read_text() == ANNOTATED.replace(
        "pool-size = 50\n", 'pool-size = 50\npassword = "s3cret"\n'
    )


def test_inserts_right_after_a_header_with_no_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[enhanced-locking.migration]\n# nothing yet\n")
    set_value(path, "migration.traffic-percentage", "10", env={})
    assert path.read_text() == (
        "[enhanced-locking.migration]\ntraffic-percentage = 10\n# nothing yet\n"
    )


def test_appends_a_missing_table_after_its_parent_block(config: Path) -> None:
    result = set_value(config, "enhanced-locking.queue-config.parallel-processing", "true", env={})
    assert result.ok
    text = config.read_text()
    assert text == ANNOTATED.replace(
        'check-interval = "45s"\n',
        'check-interval = "45s"\n\n[enhanced-locking.queue-config]\nparallel-processing = true\n',
    )
    assert load(config, env={}).settings.queue_config.parallel_processing is True


def test_appends_the_enhanced_locking_table_to_a_file_without_it(tmp_path: Path) -> None:
    path = tmp_path / "shared.toml"
    path.write_text("[server]\nport = 4141")  # no final newline
    set_value(path, "enabled", "false", env={})
    assert path.read_text() == "[server]\nport = 4141\n\n[enhanced-locking]\nenabled = false\n"


def test_creates_the_file_when_it_does_not_exist(tmp_path: Path) -> None:
    path = tmp_path / "new.toml"
    result = set_value(path, "redis.sentinel.master-name", "mymaster", env={})
    assert result.ok and result.written
    assert path.read_text() == '[enhanced-locking.redis.sentinel]\nmaster-name = "mymaster"\n'
    assert load(path, env={}).settings.redis.sentinel.master_name == "mymaster"


def test_write_is_atomic_and_keeps_the_file_mode(config: Path) -> None:
    config.chmod(0o640)
    set_value(config, "lock-timeout", "45s", env={})
    assert os.listdir(config.parent) == [config.name]  # no temporary file left behind
    assert stat.S_IMODE(config.stat().st_mode) == 0o640


def test_writes_through_a_symlink_to_the_real_file(tmp_path: Path) -> None:
    real = tmp_path / "real.toml"
    real.write_text("[enhanced-locking]\n")
    link = tmp_path / "link.toml"
    link.symlink_to(real)
    set_value(link, "enabled", "false", env={})
    assert link.is_symlink()
    assert real.read_text() == "[enhanced-locking]\nenabled = false\n"


@pytest.mark.parametrize(
    ("key", "raw", "path", "fragment"),
    [
        (
            "migration.traffic-percentage",
            "101",
            "migration.traffic-percentage",
            "between 0 and 100",
        ),
        ("lock-timeout", "0s", "lock-timeout", "greater than zero"),
        ("queue-config.workers", "many", "queue-config.workers", "integer"),
        ("redis.cluster-nodes", "r1:6379", "redis.db", "must be 0"),
        ("queue-config.overflow-policy", "drop_all", "queue-config.overflow-policy", "known:"),
        ("enhanced-locking.lock-timeot", "1s", "lock-timeot", "did you mean 'lock-timeout'"),
    ],
)
def test_refuses_invalid_values_leaving_the_file_byte_identical(
    tmp_path: Path, key: str, raw: str, path: str, fragment: str
) -> None:
    config = tmp_path / "c.toml"
    original = ANNOTATED.replace("pool-size = 50\n", "pool-size = 50\ndb = 2\n").encode()
    config.write_bytes(original)
    names = KnownNames(overflow_policies={"reject_newest", "reject_oldest"})
    result = set_value(config, key, raw, env={}, known_names=names)
    assert not result.ok and not result.written
    assert [p.path for p in result.problems] == [f"enhanced-locking.{path}"]
    assert fragment in result.problems[0].message
    assert config.read_bytes() == original
    assert os.listdir(tmp_path) == ["c.toml"]


def test_refuses_to_edit_a_file_that_is_not_valid_toml(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[enhanced-locking\nenabled = true\n")
    result = set_value(config, "enabled", "false", env={})
    assert not result.ok
    assert "not valid TOML" in result.problems[0].message
    assert config.read_text() == "[enhanced-locking\nenabled = true\n"


def test_secret_reference_is_stored_literally_and_read_from_the_env(config: Path) -> None:
    env = {"REDIS_PASSWORD": "hunter2"}
    result = set_value(config, "enhanced-locking.redis.password", "${REDIS_PASSWORD}", env=env)
    assert result.ok
    assert result.new == '"${REDIS_PASSWORD}"'
    assert 'password = "${REDIS_PASSWORD}"' in config.read_text()
    assert "hunter2" not in config.read_text()
    assert load(config, env=env).settings.redis.password == "hunter2"


def test_secret_given_expanded_is_stored_as_given_and_redacted_in_the_result(
    config: Path,
) -> None:
    # The seed's `config set enhanced-locking.redis.password="$REDIS_PASSWORD"`: the shell expands.
    result = set_value(config, "redis.password", "hunter2", env={})
    assert result.ok
    assert (result.old, result.new) == ('""', '"***"')
    assert 'password = "hunter2"' in config.read_text()
    assert "hunter2" not in repr(result)


def test_secret_reference_to_an_unset_variable_is_refused(config: Path) -> None:
    result = set_value(config, "redis.password", "${REDIS_PASSWORD}", env={})
    assert not result.ok
    assert "REDIS_PASSWORD is not set" in result.problems[0].message
    assert config.read_text() == ANNOTATED


def test_bool_form_priority_queue_becomes_a_table_when_one_key_is_set(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        "[enhanced-locking]\npriority-queue = false  # FIFO for now\nmetrics = true\n"
    )
    assert set_value(config, "priority-queue.anti-starvation", "false", env={}).ok
    assert config.read_text() == (
        "[enhanced-locking]\n"
        "priority-queue = { enabled = false, anti-starvation = false }  # FIFO for now\n"
        "metrics = true\n"
    )
    assert set_value(config, "priority-queue.max-wait-time", "10m", env={}).ok
    assert set_value(config, "priority-queue", "true", env={}).ok
    queue = load(config, env={}).settings.priority_queue
    assert (queue.enabled, queue.anti_starvation, queue.max_wait_time) == (True, False, 600.0)


def test_setting_the_switch_of_a_bool_form_replaces_the_bool(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[enhanced-locking]\npriority-queue = true\n")
    assert set_value(config, "priority-queue.enabled", "false", env={}).ok
    assert config.read_text() == "[enhanced-locking]\npriority-queue = false\n"


def test_dotted_keys_get_a_dotted_sibling(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[enhanced-locking]\n  redis.host = "r1"\n')
    assert set_value(config, "redis.port", "6380", env={}).ok
    assert config.read_text() == '[enhanced-locking]\n  redis.host = "r1"\n  redis.port = 6380\n'


def test_windows_line_endings_are_kept(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_bytes(b"[enhanced-locking]\r\nenabled = true\r\n")
    assert set_value(config, "backend", "memory", env={}).ok
    assert config.read_bytes() == b'[enhanced-locking]\r\nenabled = true\r\nbackend = "memory"\r\n'


def test_durations_and_lists_are_written_as_toml(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    set_value(config, "queue-config.processing-interval", "250ms", env={})
    set_value(config, "lock-timeout", "90", env={})
    set_value(config, "deadlock-detection.resolution-policies", "youngest_first, random", env={})
    set_value(config, "redis.cluster-nodes", '["r1:6379", "r2:6379"]', env={})
    text = config.read_text()
    assert 'processing-interval = "250ms"' in text
    assert 'lock-timeout = "1m30s"' in text
    assert 'resolution-policies = ["youngest_first", "random"]' in text
    assert 'cluster-nodes = ["r1:6379", "r2:6379"]' in text
    settings = load(config, env={}).settings
    assert settings.queue_config.processing_interval == 0.25
    assert settings.lock_timeout == 90.0


def test_restart_is_required_only_for_keys_read_at_start_up(config: Path) -> None:
    assert set_value(config, "redis.pool-size", "60", env={}).restart_required
    assert set_value(config, "backend", "sqlite", env={}).restart_required
    assert not set_value(config, "log-level", "debug", env={}).restart_required
    assert not set_value(config, "redis.pool-size", "60", env={}).restart_required  # unchanged


def test_result_warns_when_an_env_variable_overrides_the_file(config: Path) -> None:
    env = {"ATLANTIS_LOG_LEVEL": "debug"}
    result = set_value(config, "log-level", "error", env=env)
    assert result.ok
    assert result.warnings == ["ATLANTIS_LOG_LEVEL is set and overrides log-level from the file"]


SEED_COMMANDS = [
    ("enhanced-locking.enabled", "true"),
    ("enhanced-locking.redis.password", "from-the-shell"),
    ("enhanced-locking.migration.active-system", "legacy"),
    ("enhanced-locking.queue-config.parallel-processing", "true"),
    ("enhanced-locking.migration.traffic-percentage", "0"),
    ("enhanced-locking.enabled", "false"),
    ("enhanced-locking.deadlock-detection.enabled", "false"),
    ("enhanced-locking.enhanced-metrics", "false"),
]


def test_every_seed_guide_config_set_command_works(config: Path) -> None:
    for key, raw in SEED_COMMANDS:
        result = set_value(config, key, raw, env={})
        assert result.ok, (key, [str(p) for p in result.problems])
    final = load(config, env={})
    assert final.problems == []
    s = final.settings
    assert s.enabled is False
    assert s.redis.password == "from-the-shell"
    assert s.migration.active_system == "legacy"
    assert s.queue_config.parallel_processing is True
    assert s.deadlock_detection.enabled is False
    assert s.enhanced_metrics is False
    assert "# Emergency switch: see the runbook." in config.read_text()


TRICKY = r'''title = """
[enhanced-locking]
enabled = "inside a multi-line string" \"""
"""
[ other . "quoted key" ]
'lit' = 'a]b'
arr = [
  "x]", # comment ]
  'y',
]

[ "enhanced-locking" ]
metrics-config = { endpoint = "/m" }   # inline
deadlock-detection.check-interval = "45s"
enabled = true
'''


def test_edits_survive_multiline_strings_arrays_quoted_keys_and_inline_tables(
    tmp_path: Path,
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(TRICKY)
    for key, raw in [
        ("metrics-config.interval", "1m"),
        ("deadlock-detection.enabled", "false"),
        ("enabled", "false"),
        ("api-token", 'quote " backslash \\ newline \n end'),
    ]:
        result = set_value(config, key, raw, env={})
        assert result.ok, (key, [str(p) for p in result.problems])
    text = config.read_text()
    assert text.startswith(TRICKY.split('[ "enhanced-locking" ]')[0])
    assert 'metrics-config = { endpoint = "/m", interval = "1m" }   # inline' in text
    assert "deadlock-detection.enabled = false\n" in text
    loaded = load(config, env={})
    assert loaded.problems == []
    s = loaded.settings
    assert (s.enabled, s.deadlock_detection.enabled, s.metrics_config.interval) == (
        False,
        False,
        60.0,
    )
    assert s.api_token == 'quote " backslash \\ newline \n end'


def test_naming_a_table_instead_of_a_key_is_refused_with_an_example(config: Path) -> None:
    result = set_value(config, "redis", "x", env={})
    assert [str(p) for p in result.problems] == [
        "enhanced-locking.redis: is a table; name one of its keys, e.g. redis.host [EL003]"
    ]
