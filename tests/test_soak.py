"""The 60-second soak (bench/soak.py) runs in CI and fails on growth.

Mixed traffic with random faults (QBO 5xx and timeouts, broken and slow bodies, dropped
connections, throttles, a Redis restart, slow callers) against a gateway process; RSS,
open file descriptors and asyncio tasks after the run must not have grown past the bounds
`bench/soak.py` sets. The 20-minute run is the same script with its default duration.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_sixty_second_soak_shows_no_growth() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--duration", "60", "--warmup", "10"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=ROOT,
    )
    assert result.stdout.strip(), result.stderr[-3000:]
    report = json.loads(result.stdout)
    print(json.dumps(report))
    assert report["problems"] == [], report
    assert result.returncode == 0
    assert report["answered"] > 500 and report["faults_injected"] > 5
    assert report["redis_restarts"] >= 1
    assert report["lost"] == 0, report
