"""The gateway against a bare aiohttp proxy, side by side in one run (`make bench`).

nginx serves two fixed QBO answers (companyinfo, ~200 bytes; a 40-Customer query page,
~32 KB). Each path is driven with `wrk -t1 -c32` for a few seconds, rounds interleaved,
and the median of the rounds is compared with the bare aiohttp passthrough measured in
the same rounds:

- bare: `bench/bare_proxy.py` (one ClientSession, read the body, answer it, no logging);
- embedded: the gateway alone (SQLite tokens, in-process admission and cache);
- redis: the gateway on a private redis-server;
- degraded: the gateway answering from its cache (its upstream gone, the circuit open).

Then a one-connection run gives each path's median latency and what the gateway adds to
the bare proxy's; a counted Redis pass gives commands and round trips per request. CPU
per request is each proxy process's CPU time over the requests it answered.

    .venv/bin/python bench/compare.py [--seconds 5] [--rounds 3] [--only companyinfo]
"""

from __future__ import annotations

import argparse
import http.client
import re
import statistics
import subprocess
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.resp_counter import RespCounter
from bench.servers import PATHS, Fleet, cpu_seconds
from tests.redis_server import RedisServer

_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_TOTAL = re.compile(r"(\d+) requests in")
_P50 = re.compile(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass
class Target:
    name: str
    base: str
    pid: int


@dataclass
class Run:
    rps: float
    requests: int
    p50_ms: float
    non2xx: int
    cpu_us_per_request: float


def wrk(target: Target, path: str, *, connections: int, seconds: float) -> Run:
    cpu0 = cpu_seconds(target.pid)
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            target.base + path,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = cpu_seconds(target.pid) - cpu0
    rps, total, p50 = _RPS.search(out), _TOTAL.search(out), _P50.search(out)
    if rps is None or total is None or p50 is None:
        raise RuntimeError(f"could not read wrk's output:\n{out}")
    requests = int(total.group(1))
    non2xx = _NON2XX.search(out)
    return Run(
        rps=float(rps.group(1)),
        requests=requests,
        p50_ms=float(p50.group(1)) * _UNIT[p50.group(2)],
        non2xx=int(non2xx.group(1)) if non2xx else 0,
        cpu_us_per_request=cpu / max(1, requests) * 1e6,
    )


def get(url: str) -> dict[str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback only
            resp.read()
            return dict(resp.headers)
    except urllib.error.HTTPError as err:
        return dict(err.headers)


def degrade(fleet: Fleet, answers: list[str], command: list[str] | None = None) -> Target:
    """A gateway whose cache holds both answers and whose upstream is then gone."""
    nginx, upstream = fleet.nginx()
    proc, base, _ = fleet.gateway(upstream, command=command)
    for answer in answers:
        get(base + PATHS[answer])
    nginx.terminate()
    nginx.wait(timeout=10)
    for _ in range(20):  # failures open the circuit; from then on admission refuses at once
        for answer in answers:
            headers = get(base + PATHS[answer])
    if headers.get("X-QBO-Gateway-Degraded") != "circuit-open":
        raise RuntimeError(f"the degraded gateway is not serving from its cache: {headers}")
    return Target("degraded", base, proc.pid)


def throughput(
    targets: list[Target], answers: list[str], rounds: int, seconds: float
) -> dict[tuple[str, str], list[Run]]:
    runs: dict[tuple[str, str], list[Run]] = {}
    for answer in answers:
        for target in targets:  # warm every path (connections, caches, scripts)
            wrk(target, PATHS[answer], connections=32, seconds=1)
        for _ in range(rounds):
            for target in targets:
                run = wrk(target, PATHS[answer], connections=32, seconds=seconds)
                runs.setdefault((target.name, answer), []).append(run)
    return runs


def report(
    runs: dict[tuple[str, str], list[Run]], targets: list[Target], answers: list[str]
) -> None:
    names = [t.name for t in targets]
    print(f"\nthroughput, wrk -t1 -c32, median of {len(next(iter(runs.values())))} rounds")
    print(f"{'answer':<13}" + "".join(f"{n:>18}" for n in names))
    for answer in answers:
        bare = statistics.median(r.rps for r in runs[("bare", answer)])
        cells = []
        for name in names:
            rps = statistics.median(r.rps for r in runs[(name, answer)])
            cells.append(f"{rps / bare:>7.2f} ({rps:>6.0f}/s)")
        print(f"{answer:<13}" + "".join(f"{c:>18}" for c in cells))
    print("\nCPU per request (µs, the proxy process alone), median of rounds")
    for answer in answers:
        cells = [
            f"{statistics.median(r.cpu_us_per_request for r in runs[(n, answer)]):>18.0f}"
            for n in names
        ]
        print(f"{answer:<13}" + "".join(cells))
    bad = {k: sum(r.non2xx for r in v) for k, v in runs.items() if any(r.non2xx for r in v)}
    if bad:
        print(f"\nNON-2xx answers (the comparison is void for these): {bad}")


def latency(targets: list[Target], answers: list[str], seconds: float) -> None:
    print(f"\none connection, median latency (ms), {seconds:.0f} s per path")
    print(f"{'answer':<13}" + "".join(f"{t.name:>18}" for t in targets))
    for answer in answers:
        p50 = {
            t.name: wrk(t, PATHS[answer], connections=1, seconds=seconds).p50_ms for t in targets
        }
        cells = [
            f"{p50[t.name]:.3f}"
            + (f" ({p50[t.name] - p50['bare']:+.3f})" if t.name not in ("bare", "nginx") else "")
            for t in targets
        ]
        print(f"{answer:<13}" + "".join(f"{c:>18}" for c in cells))


def in_flight_round_trips(base: str, path: str, counter: RespCounter, n: int = 300) -> float:
    """Round trips sent between a request and its whole answer, one caller, one at a time.

    What the gateway awaits before the reply (or after it, before the connection may
    take the next request) is counted; a background batch that happens to go out
    meanwhile is counted too, so this is an upper bound.
    """
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    try:
        held = 0
        for _ in range(n):
            before = counter.writes
            conn.request("GET", path)
            conn.getresponse().read()
            held += counter.writes - before
        return held / n
    finally:
        conn.close()


def redis_commands(fleet: Fleet, upstream: str, answers: list[str], seconds: float) -> None:
    """Commands and round trips per request a Redis-mode gateway sends (counted at the wire)."""
    redis = RedisServer()
    redis.start()
    try:
        counter = RespCounter(redis.port)
        counter.start()
        proc, base, _ = fleet.gateway(upstream, redis_url=f"redis://127.0.0.1:{counter.port}/0")
        target = Target("redis-counted", base, proc.pid)
        print("\nRedis, counted at the wire (the relay slows it: commands, not speed)")
        for answer in answers:
            wrk(target, PATHS[answer], connections=8, seconds=1)
            counter.reset()
            run = wrk(target, PATHS[answer], connections=8, seconds=seconds)
            counts, writes = counter.reset()
            n = max(1, run.requests)
            kinds = sorted(counts.items(), key=lambda kv: -kv[1])
            print(
                f"{answer:<13} {sum(counts.values()) / n:.3f} commands/request, "
                f"{writes / n:.3f} round trips/request: "
                + ", ".join(f"{k} {v / n:.3f}" for k, v in kinds)
            )
            held = in_flight_round_trips(base, PATHS[answer], counter)
            print(f"{'':<13} {held:.3f} round trips/request while the request held its connection")
        proc.terminate()
        proc.wait(timeout=20)
    finally:
        redis.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=sorted(PATHS), action="append")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-count", action="store_true")
    args = parser.parse_args()
    answers = args.only or ["companyinfo", "query"]
    fleet = Fleet()
    redis = RedisServer()
    try:
        redis.start()
        nginx, upstream = fleet.nginx()
        bare, bare_base = fleet.bare(upstream)
        embedded, embedded_base, _ = fleet.gateway(upstream)
        shared, shared_base, _ = fleet.gateway(upstream, redis_url=redis.url)
        targets = [
            Target("nginx", upstream, nginx.pid),
            Target("bare", bare_base, bare.pid),
            Target("embedded", embedded_base, embedded.pid),
            Target("redis", shared_base, shared.pid),
            degrade(fleet, answers),
        ]
        report(throughput(targets, answers, args.rounds, args.seconds), targets, answers)
        if not args.skip_latency:
            latency(targets, answers, args.seconds)
        if not args.skip_count:
            redis_commands(fleet, upstream, answers, min(args.seconds, 3.0))
    finally:
        fleet.stop()
        redis.cleanup()


if __name__ == "__main__":
    main()
