"""A third-party plugin distribution installs with pip and a running sidecar uses it by name.

`plugins_contrib/atlantis-sidecar-fair-share` is installed into a fresh virtual environment, with
no network: the environment sees this project and its dependencies through a `.pth` file, and
pip builds the plugin with the setuptools it finds there. The sidecar started from that
environment lists the plugin with its distribution and evicts by the `fair_share` policy named in
its config; the same traffic in this environment, without the plugin, gets `reject_newest`'s 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.processes import free_port

REPO = Path(__file__).resolve().parent.parent
PLUGIN_SRC = REPO / "plugins_contrib" / "atlantis-sidecar-fair-share"
DISTRIBUTION = "atlantis-sidecar-fair-share"
API = "/api/enhanced-locks"

STEP_TIMEOUT = 120.0  # venv creation, pip install: generous on a noisy VM, but bounded
HEALTH_TIMEOUT = 30.0
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)


def clean_env() -> dict[str, str]:
    """This process's environment without anything that would leak into a child's setup."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    env = {
        k: v for k, v in os.environ.items()
        if k not in drop and not k.startswith(("ATLANTIS_", "PIP_"))
    }
    # No index, no user or site pip config (a find-links there must not matter), no upgrade nag.
    env.update(PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def run(
    args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = STEP_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"{result.args} exited {result.returncode}\n{result.stdout}\n{result.stderr}"


@dataclass(frozen=True)
class Venv:
    root: Path
    python: Path
    workdir: Path  # an empty directory to run in, so `-m` puts nothing of ours on sys.path
    plugin_copy: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def contrib_venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    base = tmp_path_factory.mktemp("contrib")
    workdir = base / "work"
    workdir.mkdir()
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the repository.
    plugin_copy = base / "src" / PLUGIN_SRC.name
    shutil.copytree(
        PLUGIN_SRC, plugin_copy,
        ignore=shutil.ignore_patterns(
            "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".venv"
        ),
    )
    env = clean_env()
    root = base / "venv"
    # pip comes through the .pth below when this environment has it; otherwise from ensurepip.
    with_pip = importlib.util.find_spec("pip") is None
    venv_args = [sys.executable, "-m", "venv", *([] if with_pip else ["--without-pip"]), str(root)]
    created = run(venv_args, cwd=workdir, env=env)
    assert created.returncode == 0, explain(created)
    python = root / "bin" / "python"

    found = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        cwd=workdir, env=env,
    )
    assert found.returncode == 0, explain(found)
    site_packages = Path(found.stdout.strip())
    ours = dict.fromkeys(
        [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], str(REPO)]
    )
    (site_packages / "_atlantis_lock_sidecar_under_test.pth").write_text(
        "".join(f"{path}\n" for path in ours)
    )

    installed = run(
        [
            str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation",
            "--no-index", str(plugin_copy),
        ],
        cwd=workdir, env=env,
    )
    assert installed.returncode == 0, explain(installed)
    return Venv(root, python, workdir, plugin_copy, env)


def sidecar_json(python: Path | str, args: list[str], *, cwd: Path, env: dict[str, str]) -> Any:
    result = run([str(python), "-m", "sidecar", *args], cwd=cwd, env=env, timeout=60)
    assert result.returncode == 0, explain(result)
    return json.loads(result.stdout)


def write_config(directory: Path, policy: str) -> Path:
    path = directory / f"{policy}.toml"
    path.write_text(
        "[enhanced-locking]\n"
        f'queue-config.overflow-policy = "{policy}"\n'
        "queue-config.max-queue-size = 3\n"
    )
    return path


# -- without the distribution, fair_share does not exist -------------------------------------------


def test_fair_share_is_unknown_to_this_environment_without_the_distribution(
    tmp_path: Path,
) -> None:
    # Otherwise the tests below would prove nothing about installing a plugin.
    env = clean_env()
    listing = sidecar_json(sys.executable, ["plugins", "--json"], cwd=REPO, env=env)
    names = {p["name"] for p in listing["plugins"]}
    provided = {x for p in listing["plugins"] for x in p["provides"]}
    stray = f"{DISTRIBUTION} is installed here; these tests install it themselves: uninstall it"
    assert "fair_share" not in names, stray
    assert "overflow policy:fair_share" not in provided, stray

    config = write_config(tmp_path, "fair_share")
    result = run(
        [sys.executable, "-m", "sidecar", "config", "validate", "--config", str(config)],
        cwd=REPO, env=env, timeout=60,
    )
    assert result.returncode == 1, explain(result)
    assert "unknown overflow policy 'fair_share'" in result.stderr
    assert "reject_newest" in result.stderr and "[EL003]" in result.stderr


# -- installed, it is listed and valid -------------------------------------------------------------


def test_installed_plugin_is_listed_by_name_with_its_distribution(contrib_venv: Venv) -> None:
    listing = sidecar_json(
        contrib_venv.python, ["plugins", "--json"], cwd=contrib_venv.workdir, env=contrib_venv.env
    )
    by_name = {p["name"]: p for p in listing["plugins"]}
    assert "fair_share" in by_name, listing
    plugin = by_name["fair_share"]
    assert plugin["source"] == f"distribution {DISTRIBUTION}"
    assert plugin["version"] == "0.1.0"
    assert plugin["hooks"] == ["atlantis_sidecar_register_overflow_policies"]
    assert plugin["provides"] == ["overflow policy:fair_share"]
    assert listing["blocked"] == []

    # It is the installed copy that was loaded, not a source tree on some path.
    where = run(
        [str(contrib_venv.python), "-c",
         "import atlantis_sidecar_fair_share as m; print(m.__file__)"],
        cwd=contrib_venv.workdir, env=contrib_venv.env,
    )
    assert where.returncode == 0, explain(where)
    assert Path(where.stdout.strip()).resolve().is_relative_to(contrib_venv.root.resolve())


def test_installed_plugin_makes_fair_share_a_valid_overflow_policy(
    contrib_venv: Venv, tmp_path: Path
) -> None:
    config = write_config(tmp_path, "fair_share")
    result = run(
        [str(contrib_venv.python), "-m", "sidecar", "config", "validate", "--config", str(config)],
        cwd=contrib_venv.workdir, env=contrib_venv.env, timeout=60,
    )
    assert result.returncode == 0, explain(result)
    assert "configuration valid" in result.stdout


def test_installed_plugin_can_be_disabled_by_name(contrib_venv: Venv) -> None:
    env = {**contrib_venv.env, "ATLANTIS_SIDECAR_DISABLE_PLUGINS": "fair_share"}
    listing = sidecar_json(contrib_venv.python, ["plugins", "--json"], cwd=contrib_venv.workdir,
                           env=env)
    assert listing["blocked"] == ["fair_share"]
    assert "fair_share" not in {p["name"] for p in listing["plugins"]}


def test_distributions_own_tests_pass_against_the_installed_plugin(contrib_venv: Venv) -> None:
    result = run(
        [str(contrib_venv.python), "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(contrib_venv.plugin_copy / "tests")],
        cwd=contrib_venv.workdir, env=contrib_venv.env,
    )
    assert result.returncode == 0, explain(result)
    assert " passed" in result.stdout


# -- a running sidecar uses it by name -------------------------------------------------------------


@contextlib.contextmanager
def serving(
    python: Path | str, config: Path, *, cwd: Path, env: dict[str, str], log: Path
) -> Iterator[str]:
    """`python -m sidecar serve` on a free port with the memory backend, until healthy; killed at
    the end whatever happens. A failure inside carries the sidecar's log."""
    for attempt in range(3):
        port = free_port()
        with log.open("wb") as out:  # a retry starts a fresh log
            proc = subprocess.Popen(
                [str(python), "-m", "sidecar", "serve", "--listen", f"127.0.0.1:{port}",
                 "--backend", "memory", "--config", str(config)],
                cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        try:
            url = f"http://127.0.0.1:{port}"
            if not wait_healthy(url, proc, log):
                if attempt < 2:
                    continue  # something took the free port before the sidecar bound it: again
                raise AssertionError(f"no free port for the sidecar in 3 attempts: see {log}")
            try:
                yield url
            except BaseException as exc:
                exc.add_note(f"sidecar log ({log}):\n{log.read_text(errors='replace')}")
                raise
            return
        finally:
            stop(proc)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> bool:
    """True once our sidecar answers health; False when it lost a race for its port."""
    deadline = time.monotonic() + HEALTH_TIMEOUT
    listening = f"listening on {url.removeprefix('http://')}"
    while time.monotonic() < deadline:
        output = log.read_text(errors="replace")
        if proc.poll() is not None:
            if "address already in use" in output.lower():
                return False
            raise AssertionError(f"sidecar exited with {proc.returncode}:\n{output}")
        # Until ours is about to bind, an answer could only come from someone else's server.
        if listening in output:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{url}{API}/health", timeout=2) as resp,
            ):
                if resp.status == 200:
                    time.sleep(0.3)  # a sidecar that could not bind exits at once
                    if proc.poll() is None:
                        return True
        time.sleep(0.05)
    raise AssertionError(f"sidecar not healthy within {HEALTH_TIMEOUT}s:\n{log.read_text()}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class Overflow:
    """What became of the requests when the queue (max-queue-size 3) overflowed."""

    newcomer_status: int
    newcomer: dict[str, Any]
    states: dict[str, dict[str, Any]]  # "greedy-1", "greedy-2", "modest-1" -> request state
    waiting_owners: list[str]
    overflow_policies: dict[str, str]  # what GET /plugins says is loaded: name -> source


def overflow_policies(listing: dict[str, Any]) -> dict[str, str]:
    prefix = "overflow policy:"
    return {
        item.removeprefix(prefix): plugin["source"]
        for plugin in listing["plugins"] for item in plugin["provides"] if item.startswith(prefix)
    }


async def overflow_the_queue(url: str) -> Overflow:
    """holder holds "k"; greedy queues 2 requests, modest 1 (the queue is full); other arrives."""
    async with aiohttp.ClientSession(base_url=url, timeout=HTTP_TIMEOUT) as http:
        async with http.get(f"{API}/health") as resp:
            health = await resp.json()
        assert health["queue"] == {"depth": 0, "max_queue_size": 3}, health
        async with http.get(f"{API}/plugins") as resp:
            policies = overflow_policies(await resp.json())

        async def acquire(owner: str, **extra: Any) -> tuple[int, dict[str, Any]]:
            body = {"key": "k", "owner": owner, "wait": 0, **extra}
            async with http.post(f"{API}/acquire", json=body) as resp:
                return resp.status, await resp.json()

        status, held = await acquire("holder")
        assert status == 200 and held["granted"] is True, held
        ids: dict[str, str] = {}
        for label, owner in (("greedy-1", "greedy"), ("greedy-2", "greedy"),
                             ("modest-1", "modest")):
            status, body = await acquire(owner, stay_queued=True)
            assert status == 409, body
            assert body["queued"] is True and body["code"] == "EL002", body
            ids[label] = body["request_id"]

        newcomer_status, newcomer = await acquire("other", stay_queued=True)

        states: dict[str, dict[str, Any]] = {}
        for label, request_id in ids.items():
            async with http.get(f"{API}/requests/{request_id}") as resp:
                assert resp.status == 200, await resp.text()
                states[label] = await resp.json()
        async with http.get(f"{API}/lock", params={"key": "k"}) as resp:
            lock = await resp.json()
        return Overflow(
            newcomer_status, newcomer, states, [w["owner"]["id"] for w in lock["waiting"]],
            policies,
        )


def test_running_sidecar_evicts_heaviest_owners_newest_request_by_fair_share(
    contrib_venv: Venv, tmp_path: Path
) -> None:
    config = write_config(tmp_path, "fair_share")
    with serving(
        contrib_venv.python, config, cwd=contrib_venv.workdir, env=contrib_venv.env,
        log=tmp_path / "sidecar.log",
    ) as url:
        result = asyncio.run(overflow_the_queue(url))

    assert result.overflow_policies["fair_share"] == f"distribution {DISTRIBUTION}"
    # The newcomer got a place: greedy, the owner with the most places, gave up its newest.
    assert result.newcomer_status == 409, result.newcomer
    assert result.newcomer["queued"] is True
    evicted = result.states["greedy-2"]
    assert evicted["state"] == "evicted", evicted
    assert evicted["outcome"]["ending"] == "evicted"
    assert result.states["greedy-1"]["state"] == "waiting"
    assert result.states["modest-1"]["state"] == "waiting"
    assert result.waiting_owners == ["greedy", "modest", "other"]
    log = (tmp_path / "sidecar.log").read_text(errors="replace")
    assert "Traceback" not in log


def test_same_traffic_under_reject_newest_refuses_the_newcomer_instead(
    tmp_path: Path,
) -> None:
    # The control: this environment's built-in default policy, same queue, same newcomer.
    config = write_config(tmp_path, "reject_newest")
    with serving(
        sys.executable, config, cwd=REPO, env=clean_env(), log=tmp_path / "sidecar.log"
    ) as url:
        result = asyncio.run(overflow_the_queue(url))

    assert "fair_share" not in result.overflow_policies
    assert result.overflow_policies["reject_newest"] == "builtin"
    assert result.newcomer_status == 429, result.newcomer
    assert result.newcomer["code"] == "EL005"
    assert {label: s["state"] for label, s in result.states.items()} == {
        "greedy-1": "waiting", "greedy-2": "waiting", "modest-1": "waiting",
    }
    assert result.waiting_owners == ["greedy", "greedy", "modest"]
