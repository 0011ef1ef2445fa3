"""`qbo-gateway serve` under tracemalloc, for bench/memory.py's `--trace`.

The same daemon as `python -m qbo_gateway serve` (same settings from the environment), with
tracemalloc started before the gateway is built. SIGUSR1 writes a snapshot to the path in
BENCH_SNAPSHOT (then renames it into place, so the reader never sees half a file);
the benchmark compares two snapshots by file and line to tell what each realm costs.

    BENCH_SNAPSHOT=/tmp/snap .venv/bin/python -X tracemalloc=1 bench/traced_gateway.py
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qbo_gateway.commands.serve import serve
from qbo_gateway.logs import configure_logging
from qbo_gateway.settings import load_settings


def _dump(target: Path) -> None:
    partial = target.with_suffix(".part")
    tracemalloc.take_snapshot().dump(str(partial))
    partial.rename(target)


async def _main() -> int:
    target = Path(os.environ["BENCH_SNAPSHOT"])
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, _dump, target)
    return await serve(settings)


if __name__ == "__main__":
    if not tracemalloc.is_tracing():
        tracemalloc.start()
    raise SystemExit(asyncio.run(_main()))
