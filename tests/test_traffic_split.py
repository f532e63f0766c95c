"""`migration.traffic-percentage` splits Atlantis lock keys by a hash of the key: the share
served by the engine is the percentage, raising it never moves a key back, and the lock routes
follow the same split as the enhanced API."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import Settings
from sidecar.proxy.lock_routes import is_enhanced
from tests.conftest import settings_with
from tests.fake_atlantis import random_lock_ids
from tests.proxy_stack import proxy_stack
from tests.test_lock_routes import pull, twice

KEYS = ["atlantis:" + lock_id for lock_id in random_lock_ids(10_000, seed=2024)]


def share(percentage: int) -> float:
    settings = settings_with(Settings(), migration__traffic_percentage=percentage)
    return sum(is_enhanced(settings, key) for key in KEYS) / len(KEYS)


def test_the_keys_are_10000_distinct_atlantis_style_ids() -> None:
    assert len(set(KEYS)) == len(KEYS) == 10_000
    assert all(key.count("/") >= 4 for key in KEYS)
    assert any(key.endswith("/") for key in KEYS)  # ids with an empty project name


@pytest.mark.parametrize(
    ("percentage", "low", "high"), [(0, 0.0, 0.0), (37, 0.355, 0.385), (100, 1.0, 1.0)]
)
def test_traffic_percentage_puts_that_share_of_keys_on_the_engine(
    percentage: int, low: float, high: float
) -> None:
    # 37 % of 10 000 binomial draws: standard deviation 0.48 %, so +-1.5 % is three of them.
    assert low <= share(percentage) <= high


def test_raising_the_percentage_never_moves_a_key_back_to_atlantis() -> None:
    enhanced_before: set[str] = set()
    for percentage in range(0, 101):
        settings = settings_with(Settings(), migration__traffic_percentage=percentage)
        enhanced = {key for key in KEYS if is_enhanced(settings, key)}
        assert enhanced_before <= enhanced, f"a key went back to Atlantis at {percentage}%"
        enhanced_before = enhanced
    assert len(enhanced_before) == len(KEYS)


def test_the_split_is_sticky_and_enabled_false_sends_every_key_to_atlantis() -> None:
    settings = settings_with(Settings(), migration__traffic_percentage=37)
    first = [is_enhanced(settings, key) for key in KEYS]
    assert first == [is_enhanced(settings, key) for key in KEYS]
    off = settings_with(settings, enabled=False, migration__active_system="enhanced")
    assert not any(is_enhanced(off, key) for key in KEYS)


async def test_lock_routes_and_enhanced_api_follow_the_same_split_at_37_percent(
    tmp_path: Path,
) -> None:
    sample = random_lock_ids(200, seed=7)
    async with proxy_stack(tmp_path, migration__traffic_percentage=37) as s:
        settings = s.runtime.settings
        for n, lock_id in enumerate(sample, start=1):
            ours = is_enhanced(settings, "atlantis:" + lock_id)
            status, body = await s.acquire("atlantis:" + lock_id, pull(n, repo="acme/infra"))
            assert status == (200 if ours else 409), body
            if not ours:
                assert body["code"] == "EL006"
            async with s.http.get(f"{s.url}/lock?id={twice(lock_id)}") as resp:
                # The engine's page for keys it serves and holds; Atlantis's 404 for the rest.
                assert resp.status == (200 if ours else 404)
        served = sum(is_enhanced(settings, "atlantis:" + i) for i in sample)
    assert 40 <= served <= 110  # a sample of 200 at 37 %: both sides really exercised
