"""A gauge of the event loop's live asyncio tasks, read at scrape time.

A task that never finishes (a stuck relay, a worker started per request) is a leak that
RSS shows only late; counting tasks shows it at once. The soak benchmark reads it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class LoopTasks(Collector):
    def collect(self) -> Iterator[Metric]:
        try:
            count = len(asyncio.all_tasks())
        except RuntimeError:  # scraped outside the event loop (a test's registry dump)
            return
        yield GaugeMetricFamily(
            "qbo_gateway_asyncio_tasks", "asyncio tasks alive in the gateway's event loop", count
        )


def register_loop_tasks(registry: CollectorRegistry) -> None:
    registry.register(LoopTasks())
