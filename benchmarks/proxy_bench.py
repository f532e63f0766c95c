"""Proxy overhead (a benchmark: it prints figures, it asserts nothing).

A small GET (Atlantis's `/healthz` body, 22 bytes) to the same upstream three ways, in one run:
- direct to the upstream,
- through the sidecar (a real `atlantis-sidecar serve` process, memory backend),
- through nginx (the Debian package, one worker, keep-alive to the same upstream): the peer.

Two measurements each:
1. Throughput at a fixed concurrency: `wrk -t1 -c16 -d<duration> --latency` (requests/s, p50,
   p99). The sidecar/nginx throughput ratio is printed.
2. Latency at a fixed rate of 1 000 requests/s (open loop: each request has a scheduled start,
   and its latency counts from then, so a stall is not hidden by the client waiting for it;
   16 connections, aiohttp on uvloop in its own process). The sidecar's added p50/p99 over
   direct is printed (target: <= 1 ms and <= 3 ms).

The upstream is an aiohttp server on uvloop in its own process. Only 127.0.0.1 is used.
These machines are small and noisy: compare figures within one run, not across runs.

    .venv/bin/python benchmarks/proxy_bench.py [--duration 10] [--rate 1000] [--rounds 3] [--pin]

Needs `wrk` and `nginx` (Debian: `apt-get install -y nginx wrk`); it says which is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATH = "/healthz"
CONNECTIONS = 16

UPSTREAM = """
import sys, uvloop
from aiohttp import web
BODY = b'{\\n  "status": "ok"\\n}'
async def healthz(request):
    return web.Response(body=BODY, content_type="application/json")
app = web.Application()
app.router.add_get("/healthz", healthz)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None,
            loop=uvloop.new_event_loop())
"""

# Open-loop load at a fixed rate, in its own process so it does not share a loop with anything.
RATE_CLIENT = """
import asyncio, json, sys, time, uvloop, aiohttp
url, rate, seconds, conns = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
async def main():
    connector = aiohttp.TCPConnector(limit=conns)
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(200):  # warm the pool
            async with http.get(url) as r:
                await r.read()
        latencies, errors = [], 0
        sem = asyncio.Semaphore(conns * 64)
        async def one(scheduled):
            nonlocal errors
            async with sem:
                try:
                    async with http.get(url) as r:
                        await r.read()
                        if r.status != 200:
                            errors += 1
                except Exception:
                    errors += 1
            latencies.append(time.perf_counter() - scheduled)
        start = time.perf_counter() + 0.05
        total = int(rate * seconds)
        tasks = []
        for i in range(total):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(scheduled)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
        print(json.dumps({"latencies": latencies, "errors": errors, "elapsed": elapsed}))
uvloop.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=1).read()
            return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


@contextlib.contextmanager
def process(args: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        try:
            yield
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


def nginx_conf(work: Path, listen: int, upstream: int) -> Path:
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / name).mkdir(exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(
        textwrap.dedent(
            f"""
            worker_processes 1;
            daemon off;
            master_process on;
            pid {work}/nginx.pid;
            error_log {work}/error.log warn;
            events {{ worker_connections 1024; }}
            http {{
                access_log off;
                client_body_temp_path {work}/client_body;
                proxy_temp_path {work}/proxy;
                fastcgi_temp_path {work}/fastcgi;
                uwsgi_temp_path {work}/uwsgi;
                scgi_temp_path {work}/scgi;
                upstream atlantis {{ server 127.0.0.1:{upstream}; keepalive 32; }}
                server {{
                    listen 127.0.0.1:{listen};
                    location / {{
                        proxy_pass http://atlantis;
                        proxy_http_version 1.1;
                        proxy_set_header Connection "";
                        proxy_set_header Host $http_host;
                        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
                        proxy_set_header X-Forwarded-Proto $scheme;
                        proxy_set_header X-Forwarded-Host $http_host;
                        proxy_redirect off;
                    }}
                }}
            }}
            """
        )
    )
    return conf


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: str


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


# CPU pinning (`taskset`): servers on one CPU, load generators on another, so the scheduler
# moving processes around adds no noise. Empty when not pinning.
SERVER_CPU: list[str] = []
CLIENT_CPU: list[str] = []


def run_wrk(url: str, duration: int) -> WrkResult:
    warm = [*CLIENT_CPU, "wrk", "-t1", f"-c{CONNECTIONS}", "-d2s", url]
    subprocess.run(warm, capture_output=True, check=True)
    out = subprocess.run(
        [*CLIENT_CPU, "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"(Non-2xx.*|Socket errors.*)", out)
    return WrkResult(rps, p50, p99, errors.group(1) if errors else "")


@dataclass
class RateResult:
    achieved: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    errors: int


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def run_rate(url: str, rate: int, duration: int) -> RateResult:
    out = subprocess.run(
        [
            *CLIENT_CPU,
            *(sys.executable, "-c", RATE_CLIENT, url),
            *(str(rate), str(duration), str(CONNECTIONS)),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    data = json.loads(out)
    lat = [x * 1000 for x in data["latencies"]]
    return RateResult(
        len(lat) / data["elapsed"],
        percentile(lat, 50),
        percentile(lat, 99),
        percentile(lat, 99.9),
        data["errors"],
    )


def median_wrk(runs: list[WrkResult]) -> WrkResult:
    return WrkResult(
        statistics.median(r.rps for r in runs),
        statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
        "; ".join(r.errors for r in runs if r.errors),
    )


def median_rate(runs: list[RateResult]) -> RateResult:
    return RateResult(
        statistics.median(r.achieved for r in runs),
        statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
        statistics.median(r.p999_ms for r in runs),
        sum(r.errors for r in runs),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rate", type=int, default=1000, help="requests/s of the latency run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are printed")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="pin servers to CPU 0 and load generators to CPU 1 (the sidecar then shares one "
        "core with the upstream, as in a one-core pod)",
    )
    args = parser.parse_args()
    pinned = args.pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset")
    if pinned:
        SERVER_CPU[:] = ["taskset", "-c", "0"]
        CLIENT_CPU[:] = ["taskset", "-c", "1"]

    missing = [
        f"{tool} (Debian: apt-get install -y {pkg})"
        for tool, pkg in (("wrk", "wrk"), ("nginx", "nginx"))
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()
    ]
    if missing:
        print("missing: " + "; ".join(missing), file=sys.stderr)
        return 2
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"

    with tempfile.TemporaryDirectory(prefix="proxy-bench-") as tmp:
        work = Path(tmp)
        up, side, ngx = free_port(), free_port(), free_port()
        sidecar_env = {
            "ATLANTIS_ENHANCED_LOCKING_LOG_LEVEL": "warning",
            "ATLANTIS_SIDECAR_CONFIG": str(work / "none.toml"),
        }
        (work / "none.toml").write_text("[enhanced-locking]\n")
        with (
            process([*SERVER_CPU, sys.executable, "-c", UPSTREAM, str(up)], work / "up.log"),
            process(
                [
                    *SERVER_CPU,
                    sys.executable,
                    "-m",
                    "sidecar",
                    "serve",
                    "--listen",
                    f"127.0.0.1:{side}",
                    "--upstream",
                    f"http://127.0.0.1:{up}",
                    "--backend",
                    "memory",
                    "--data-dir",
                    str(work / "data"),
                ],
                work / "sidecar.log",
                sidecar_env,
            ),
            process(
                [*SERVER_CPU, nginx, "-p", str(work), "-c", str(nginx_conf(work, ngx, up))],
                work / "nginx.log",
            ),
        ):
            targets = {
                "direct": f"http://127.0.0.1:{up}{PATH}",
                "sidecar": f"http://127.0.0.1:{side}{PATH}",
                "nginx": f"http://127.0.0.1:{ngx}{PATH}",
            }
            for url in targets.values():
                wait_http(url)
            print(
                f"small GET {PATH} (22-byte body); {os.cpu_count()} CPUs; "
                f"wrk -t1 -c{CONNECTIONS} -d{args.duration}s; open-loop {args.rate} req/s "
                f"for {args.duration}s over {CONNECTIONS} connections; medians of "
                f"{args.rounds} rounds; "
                + ("servers on CPU 0, load on CPU 1" if pinned else "not pinned")
            )
            # Rounds, with the order rotated, so a noisy moment does not land on one target.
            wrk_runs: dict[str, list[WrkResult]] = {name: [] for name in targets}
            rate_runs: dict[str, list[RateResult]] = {name: [] for name in targets}
            names = list(targets)
            for n in range(args.rounds):
                order = names[n % 3 :] + names[: n % 3]
                for name in order:
                    wrk_runs[name].append(run_wrk(targets[name], args.duration))
                for name in order:
                    rate_runs[name].append(run_rate(targets[name], args.rate, args.duration))
            wrk = {name: median_wrk(runs) for name, runs in wrk_runs.items()}
            rate = {name: median_rate(runs) for name, runs in rate_runs.items()}

    print()
    print(
        f"{'':8} {'wrk req/s':>10} {'p50 ms':>8} {'p99 ms':>8}   "
        f"{'@rate req/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'errors':>6}"
    )
    for name in ("direct", "sidecar", "nginx"):
        w, r = wrk[name], rate[name]
        print(
            f"{name:8} {w.rps:>10.0f} {w.p50_ms:>8.2f} {w.p99_ms:>8.2f}   "
            f"{r.achieved:>11.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.p999_ms:>9.2f} "
            f"{r.errors:>6}" + (f"  ({w.errors})" if w.errors else "")
        )
    print()
    print(f"sidecar/nginx throughput ratio: {wrk['sidecar'].rps / wrk['nginx'].rps:.2f}")
    print(f"sidecar/direct throughput ratio: {wrk['sidecar'].rps / wrk['direct'].rps:.2f}")
    added50 = rate["sidecar"].p50_ms - rate["direct"].p50_ms
    added99 = rate["sidecar"].p99_ms - rate["direct"].p99_ms
    print(
        f"sidecar adds at {args.rate} req/s: p50 {added50:+.2f} ms (target <= 1), "
        f"p99 {added99:+.2f} ms (target <= 3)"
    )
    ngx50 = rate["nginx"].p50_ms - rate["direct"].p50_ms
    ngx99 = rate["nginx"].p99_ms - rate["direct"].p99_ms
    print(f"nginx adds at {args.rate} req/s:   p50 {ngx50:+.2f} ms, p99 {ngx99:+.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
