"""Showing the config: redaction, `config show`, restart diffs and the README reference table."""

from __future__ import annotations

import dataclasses

from sidecar.config import (
    Settings,
    diff_restart_required,
    iter_fields,
    loads,
    redacted,
    reference_table_markdown,
    to_toml,
)

SECRETS = '[enhanced-locking]\nadmin-token = "adm1n"\n[enhanced-locking.redis]\npassword = "pw"\n'


def test_redacted_hides_set_secrets_and_shows_empty_ones() -> None:
    settings = loads(SECRETS, env={}).settings
    view = redacted(settings)
    assert view["admin-token"] == "***"
    assert view["api-token"] == ""
    assert view["redis"]["password"] == "***"
    assert view["queue-config"]["max-queue-size"] == 1000
    assert view["lock-timeout"] == "30s"
    assert view["deadlock-detection"]["resolution-policies"] == [
        "lowest_priority",
        "youngest_first",
        "random",
    ]


def test_repr_of_settings_never_contains_secrets() -> None:
    settings = loads(SECRETS, env={}).settings
    assert "adm1n" not in repr(settings)
    assert "'pw'" not in repr(settings)


def test_config_show_output_loads_back_to_the_same_settings() -> None:
    text = (
        '[enhanced-locking]\nlock-timeout = "1m30s"\npriority-queue = false\n'
        '[enhanced-locking.redis]\ncluster-nodes = ["r1:6379"]\n'
        '[enhanced-locking.redis.sentinel]\nmaster-name = "m"\n'
    )
    settings = loads(text, env={}).settings
    shown = to_toml(settings)
    assert "[enhanced-locking.redis.sentinel]" in shown
    again = loads(shown, env={})
    assert again.problems == []
    assert again.settings == settings


def test_config_show_redacts_secrets() -> None:
    shown = to_toml(loads(SECRETS, env={}).settings)
    assert "adm1n" not in shown and '"pw"' not in shown
    assert 'admin-token = "***"' in shown


def test_restart_diff_names_only_keys_read_at_start_up() -> None:
    old = Settings()
    new = dataclasses.replace(
        old,
        log_level="debug",
        listen="0.0.0.0:5000",
        redis=dataclasses.replace(old.redis, host="redis-2"),
        migration=dataclasses.replace(old.migration, traffic_percentage=50),
    )
    assert diff_restart_required(old, new) == ["listen", "redis.host"]
    assert diff_restart_required(old, old) == []


def test_field_reference_describes_every_key() -> None:
    fields = {info.path: info for info in iter_fields()}
    assert fields["priority-queue"].type_label == "bool or table"
    assert fields["queue-config.max-queue-size"].type_label == "int"
    assert fields["queue-config.max-queue-size"].default == "1000"
    assert fields["lock-timeout"].type_label == "duration"
    assert fields["lock-timeout"].default == '"30s"'
    assert fields["redis.cluster-nodes"].type_label == "list of strings"
    assert fields["deadlock-detection.confidence-threshold"].type_label == "float"
    assert fields["redis.password"].secret and fields["redis.password"].restart
    assert fields["backend"].restart and fields["data-dir"].restart
    assert not fields["log-level"].restart
    assert all(info.doc for info in fields.values())
    assert {path for path, info in fields.items() if info.secret} == {
        "admin-token",
        "api-token",
        "redis.password",
    }
    table = reference_table_markdown()
    for path in fields:
        assert f"| `{path}` |" in table
