"""Where a proxy process spends its CPU per request: cProfile over a fixed number of requests.

(Not named profile.py: that would shadow the standard library's `profile`, which cProfile imports.)

nginx serves the fixed QBO answers (as in `compare.py`); one target process is started
under a small wrapper that turns cProfile on at SIGUSR1 and dumps it at SIGUSR2, so start-up
and warm-up are not in the profile. The target is driven by `wrk -t1` for
`--seconds`, once without the profiler (the process's CPU time per request, from /proc) and
once with it; then the top functions by own time and by cumulative time are printed, per
request answered (so a loaded machine changes how many requests are profiled, not the
figures per request).

Targets: `bare` (bench/bare_proxy.py), `embedded` (the gateway, SQLite tokens, in-process
admission and cache), `degraded` (the gateway answering from its cache, upstream gone,
circuit open).

    .venv/bin/python bench/cpu_profile.py embedded [--answer query] [--seconds 5] [--top 25]

cProfile's own hooks slow small Python functions more than C calls, so the profile says
where the time goes, and the unprofiled figure says how much there is.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import runpy
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.compare import Target, degrade
from bench.servers import PATHS, ROOT, Fleet, cpu_seconds


def child(out: str, argv: list[str]) -> None:
    """Run `argv` (a module with -m, else a script) with cProfile switched by signals."""
    prof = cProfile.Profile()

    def start(_sig: int, _frame: object) -> None:
        prof.enable()

    def dump(_sig: int, _frame: object) -> None:
        prof.disable()
        prof.dump_stats(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, dump)
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        runpy.run_path(argv[0], run_name="__main__")


def drive(base: str, path: str, seconds: int, connections: int) -> int:
    """`seconds` of wrk (one thread); returns how many answers it counted."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", base + path],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        if " requests in " in line:
            return int(line.split()[0])
    raise RuntimeError(f"could not read wrk's output:\n{out}")


def start_target(fleet: Fleet, kind: str, answer: str, prof_out: str) -> Target:
    wrapper = [sys.executable, str(Path(__file__).resolve()), "--child", prof_out, "--"]
    nginx, upstream = fleet.nginx()
    if kind == "bare":
        proc, base = fleet.bare(upstream, command=[*wrapper, str(ROOT / "bench" / "bare_proxy.py")])
        return Target("bare", base, proc.pid)
    if kind == "embedded":
        proc, base, _ = fleet.gateway(upstream, command=[*wrapper, "-m", "qbo_gateway"])
        return Target("embedded", base, proc.pid)
    nginx.terminate()
    nginx.wait(timeout=10)
    return degrade(fleet, [answer], command=[*wrapper, "-m", "qbo_gateway"])


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[4:])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("target", choices=["bare", "embedded", "degraded"])
    parser.add_argument("--answer", choices=sorted(PATHS), default="companyinfo")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--save", help="keep the cProfile data here (pstats, snakeviz)")
    args = parser.parse_args()
    fleet = Fleet()
    work = Path(tempfile.mkdtemp(prefix="qbogw-profile-"))
    prof_out = str(work / "target.prof")
    path = PATHS[args.answer]
    try:
        target = start_target(fleet, args.target, args.answer, prof_out)
        drive(target.base, path, 1, args.connections)  # warm: connections, cache, pools
        cpu0 = cpu_seconds(target.pid)
        n = drive(target.base, path, args.seconds, args.connections)
        plain = (cpu_seconds(target.pid) - cpu0) / n * 1e6
        os.kill(target.pid, signal.SIGUSR1)
        cpu0 = cpu_seconds(target.pid)
        n = drive(target.base, path, args.seconds, args.connections)
        profiled = (cpu_seconds(target.pid) - cpu0) / n * 1e6
        os.kill(target.pid, signal.SIGUSR2)
        for _ in range(100):
            if Path(prof_out).exists():
                break
            time.sleep(0.1)
        time.sleep(0.5)  # the dump is written by the target: let it finish
        print(
            f"{args.target} {args.answer}: {n} requests, -c{args.connections}; CPU per request "
            f"{plain:.0f} µs unprofiled, {profiled:.0f} µs under cProfile"
        )
        report(pstats.Stats(prof_out), n, args.top)
        if args.save:
            Path(prof_out).replace(args.save)
    finally:
        fleet.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)


def report(stats: pstats.Stats, requests: int, top: int) -> None:
    """The top functions by own time and by cumulative time, in µs per request."""
    rows = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_cc, _nc, tt, _ct, _callers) in rows.values())
    print(f"profiled time per request: {total / requests * 1e6:.1f} µs\n")
    for title, column in (("own time", 2), ("cumulative", 3)):
        print(f"top {top} by {title} (µs per request, calls per request, % of profiled time)")
        ranked = sorted(rows.items(), key=lambda kv: -kv[1][column])[:top]
        for (file, line, func), values in ranked:
            where = _short(file, line, func)
            us = values[column] / requests * 1e6
            calls = values[1] / requests
            print(f"{us:8.1f} {calls:6.2f} {values[column] / total * 100:5.1f}%  {where}")
        print()


def _short(file: str, line: int, func: str) -> str:
    for marker in ("site-packages/", "qbo_gateway/", "bench/", "lib/python3"):
        if marker in file:
            file = file[file.index(marker) :]
            break
    return f"{func} ({file}:{line})" if line else func


if __name__ == "__main__":
    main()
