"""The README and examples say what the code does."""

from __future__ import annotations

from pathlib import Path

from sidecar import config
from sidecar.plugin.manager import Plugins

ROOT = Path(__file__).resolve().parent.parent


def test_readme_config_reference_is_the_generated_table() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- config-reference:start -->\n") + len(
        "<!-- config-reference:start -->\n"
    )
    end = readme.index("\n<!-- config-reference:end -->")
    assert readme[start:end].strip() == config.reference_table_markdown().strip(), (
        "regenerate the table with sidecar.config.reference_table_markdown()"
    )


def test_example_config_is_valid_with_its_secrets_in_the_environment() -> None:
    plugins = Plugins.load(env={}, entry_points=False)
    result = config.load(
        ROOT / "examples" / "atlantis-sidecar.toml",
        env={"SIDECAR_ADMIN_TOKEN": "a", "SIDECAR_API_TOKEN": "b"},
        known_names=plugins.known_names(),
    )
    assert result.problems == []
