"""Real Redis servers for the tests: standalone, with a password, a 3-master Cluster, Sentinel.

Each server is a real `redis-server` (or `redis-sentinel`) process on a free loopback port with
its own temporary directory, config file and log. Nothing is faked. When the binaries are
missing, the fixtures fail (they do not skip) and name the Debian packages to install;
`scripts/test.sh` installs them.
"""

from __future__ import annotations

import ctypes
import dataclasses
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from sidecar.config import RedisSettings, SentinelSettings, Settings
from tests.processes import free_port

PACKAGES = "redis-server redis-sentinel redis-tools"
PASSWORD = "test-only-password-7b1c"
MASTER_NAME = "locks-master"
START_TIMEOUT = 20.0


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: the Redis tests run real servers. Install the Debian"
            f" packages: apt-get install -y {PACKAGES} (scripts/test.sh does this as root)",
            pytrace=False,
        )
    return path


def free_cluster_port() -> int:
    """A free port P whose cluster bus port P + 10000 is free too (both below 65536)."""
    for _ in range(200):
        port = random.randrange(20000, 30000)
        if all(_free(p) for p in (port, port + 10000)):
            return port
    raise RuntimeError("no free pair of ports for a cluster node")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _die_with_parent() -> None:
    """Servers go when the test run goes, even if it is killed before its teardown runs."""
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class RedisServer:
    """One `redis-server` (or sentinel) process; `restart` keeps its port and data directory."""

    directory: Path
    port: int = field(default_factory=free_port)
    settings: dict[str, str] = field(default_factory=dict)
    password: str | None = None
    sentinel: bool = False
    #: Config lines written as they are (a sentinel's `sentinel monitor ...`).
    extra: str = ""
    #: The CA of a TLS-only server, for our own admin connections to it.
    tls_ca: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "dir": str(self.directory),
            "logfile": str(self.directory / "redis.log"),
            "daemonize": "no",
            "protected-mode": "no",
        }
        if not self.sentinel:
            lines.update({"save": '""', "appendonly": "no"})
        if self.password:
            lines["requirepass"] = self.password
        lines.update(self.settings)
        conf = self.directory / ("sentinel.conf" if self.sentinel else "redis.conf")
        body = "\n".join(f"{k} {v}" for k, v in lines.items()) + "\n"
        if self.sentinel and conf.exists():
            return conf  # the sentinel rewrote it with what it learned; keep that
        conf.write_text(body + self.extra)
        return conf

    def start(self) -> RedisServer:
        conf = self.write_config()
        command = (
            [binary("redis-sentinel"), str(conf)]
            if self.sentinel
            else [binary("redis-server"), str(conf)]
        )
        log = (self.directory / "stdout.log").open("ab")
        self.proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
        log.close()
        self.wait_ready()
        return self

    def client(self, **kwargs: Any) -> redis.Redis:
        if self.tls_ca is not None:
            kwargs.update(ssl=True, ssl_ca_certs=str(self.tls_ca))
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5, **kwargs
        )

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis on {self.address} exited:\n{self.log()}")
            try:
                with self.client() as c:
                    if c.ping():
                        return
            except (redis.ConnectionError, redis.ResponseError) as exc:  # loading, or not up yet
                last = exc
            time.sleep(0.05)
        raise TimeoutError(
            f"redis on {self.address} not ready in {timeout}s ({last}):\n{self.log()}"
        )

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class Deployment:
    """Servers making up one Redis deployment, and the `redis` settings that reach it."""

    servers: list[RedisServer]
    redis_settings: dict[str, Any]

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()


def standalone(directory: Path, *, password: str | None = None, **settings: str) -> Deployment:
    server = RedisServer(directory, settings=dict(settings), password=password).start()
    return Deployment([server], {"host": "127.0.0.1", "port": server.port})


def cluster(directory: Path, masters: int = 3) -> Deployment:
    """`masters` nodes with `cluster-enabled yes`, joined by `redis-cli --cluster create`."""
    servers = [
        RedisServer(
            directory / f"node{n}",
            port=free_cluster_port(),
            settings={
                "cluster-enabled": "yes",
                "cluster-config-file": "nodes.conf",
                "cluster-node-timeout": "2000",
            },
        ).start()
        for n in range(masters)
    ]
    subprocess.run(
        [
            binary("redis-cli"),
            "--cluster",
            "create",
            *(s.address for s in servers),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    deadline = time.monotonic() + START_TIMEOUT
    for server in servers:
        with server.client() as c:
            while c.cluster("info")["cluster_state"] != "ok":  # type: ignore[no-untyped-call]
                if time.monotonic() > deadline:
                    raise TimeoutError(f"cluster not ok on {server.address}:\n{server.log()}")
                time.sleep(0.1)
    return Deployment(servers, {"cluster_nodes": tuple(s.address for s in servers)})


def sentinel(directory: Path) -> Deployment:
    """One master, one replica of it, and one sentinel watching them (quorum 1)."""
    master = RedisServer(directory / "master").start()
    replica = RedisServer(
        directory / "replica", settings={"replicaof": f"127.0.0.1 {master.port}"}
    ).start()
    watcher = RedisServer(
        directory / "sentinel",
        sentinel=True,
        extra=(
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master.port} 1\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} 2000\n"
            f"sentinel failover-timeout {MASTER_NAME} 10000\n"
        ),
    ).start()
    deadline = time.monotonic() + START_TIMEOUT
    with watcher.client() as c:
        while True:
            addr = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
            replicas = c.execute_command("SENTINEL", "REPLICAS", MASTER_NAME)
            if addr and int(addr[1]) == master.port and replicas:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"sentinel does not see its master and replica:\n{watcher.log()}"
                )
            time.sleep(0.1)
    return Deployment(
        [master, replica, watcher],
        {"sentinel": {"master_name": MASTER_NAME, "nodes": (watcher.address,)}},
    )


def stopping(deployment: Deployment) -> Iterator[Deployment]:
    try:
        yield deployment
    finally:
        deployment.stop()


def aimed_at(deployment: Deployment, settings: Settings, **changes: Any) -> Settings:
    """`settings` with its `redis` table pointed at `deployment` (plus `changes` to that table)."""
    target = dict(deployment.redis_settings)
    sentinel = target.pop("sentinel", None)
    redis_table: RedisSettings = dataclasses.replace(settings.redis, **target, **changes)
    if sentinel is not None:
        redis_table = dataclasses.replace(redis_table, sentinel=SentinelSettings(**sentinel))
    return dataclasses.replace(settings, redis=redis_table)


def sidecar_env(deployment: Deployment, key_prefix: str, **settings: str) -> dict[str, str]:
    """Environment that points a `serve` subprocess at `deployment` (standalone only), with
    more `redis.*`-or-other settings given as ENV_NAME_SUFFIX=value (e.g. REDIS_PASSWORD)."""
    target = deployment.redis_settings
    env = {
        "ATLANTIS_ENHANCED_LOCKING_BACKEND": "redis",
        "ATLANTIS_ENHANCED_LOCKING_REDIS_HOST": str(target["host"]),
        "ATLANTIS_ENHANCED_LOCKING_REDIS_PORT": str(target["port"]),
        "ATLANTIS_ENHANCED_LOCKING_REDIS_KEY_PREFIX": key_prefix,
    }
    env.update({f"ATLANTIS_ENHANCED_LOCKING_{k}": v for k, v in settings.items()})
    return env


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def tls_files(directory: Path, name: str = "test-ca") -> TlsFiles:
    """A throw-away CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail(
            "openssl is not installed: the TLS test makes its certificates with it."
            " Install the Debian package: apt-get install -y openssl",
            pytrace=False,
        )
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.crt", directory / "ca.key"
    cert, key, csr = directory / "server.crt", directory / "server.key", directory / "server.csr"
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        "/CN=localhost",
    )
    run(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        str(cert),
        "-days",
        "2",
        "-extfile",
        str(ext),
    )
    return TlsFiles(ca, cert, key)


def tls_standalone(directory: Path, files: TlsFiles) -> Deployment:
    """A server that only speaks TLS (`port 0`, `tls-port`); clients need no certificate."""
    port = free_port()
    server = RedisServer(
        directory,
        port=port,
        settings={
            "port": "0",
            "tls-port": str(port),
            "tls-cert-file": str(files.cert),
            "tls-key-file": str(files.key),
            "tls-ca-cert-file": str(files.ca),
            "tls-auth-clients": "no",
        },
        tls_ca=files.ca,
    ).start()
    return Deployment([server], {"host": "127.0.0.1", "port": port, "tls": True})
