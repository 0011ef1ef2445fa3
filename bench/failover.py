"""Figures for a Redis failover under load, per topology (cluster, Sentinel).

Three gateways (in this process) serve a steady read load on four realms whose refresh
falls due while the master holding them is killed; a replica is promoted. Prints, per
topology: requests and how many failed (and when, in seconds after the kill), token
calls and `invalid_grant` answers at the simulator, the most requests the simulator saw
for one realm in any 1 s and any 60 s, and the seconds until a replica was promoted and
until every gateway used shared state again.

    .venv/bin/python bench/failover.py --topology both
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qbo_gateway.logs import configure_logging  # noqa: E402 - after the path tweak above
from tests.failover_load import FailoverRun  # noqa: E402
from tests.redis_topologies import RedisClusterSet, SentinelSet  # noqa: E402


async def one(kind: str, per_second: int, per_minute: int, rate_each: float) -> dict[str, object]:
    topology = RedisClusterSet() if kind == "cluster" else SentinelSet()
    topology.start()
    try:
        run = FailoverRun(
            topology,
            Path(tempfile.mkdtemp(prefix="qbogw-failover-")),
            prefix="bench",
            per_second=per_second,
            per_minute=per_minute,
            rate_each=rate_each,
        )
        await run.start()
        try:
            figures = await run.run(before=3.0, after=3.0)
        finally:
            await run.close()
    finally:
        topology.cleanup()
    out = asdict(figures)
    out["transitions"] = [
        f"{'up' if up else 'down'} gw{who} {at:+.2f}s" for at, who, up in figures.transitions
    ]
    return {"topology": kind, "realms": len(run.realms), **out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topology", choices=["cluster", "sentinel", "both"], default="both")
    parser.add_argument("--per-second", type=int, default=6)
    parser.add_argument("--per-minute", type=int, default=300)
    parser.add_argument(
        "--rate-each", type=float, default=6.0, help="requests/s per realm per gateway"
    )
    args = parser.parse_args()
    # Errors only (the outage is logged once per replica); the figures go to stdout.
    configure_logging("error", "console", stream=sys.stderr)
    kinds = ["cluster", "sentinel"] if args.topology == "both" else [args.topology]
    for kind in kinds:
        print(
            json.dumps(
                asyncio.run(one(kind, args.per_second, args.per_minute, args.rate_each)), indent=1
            )
        )


if __name__ == "__main__":
    main()
