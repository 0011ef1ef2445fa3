"""The meter: every upstream call counted, by month, realm, caller and entity.

`count` is on the request path and costs a few dict increments: it never touches the
backend. A background `DrainWorker` writes what accumulated in one batch (one Redis
pipeline in Redis mode, one HINCRBY per distinct counter) after the replies went out, at
most once per `flush_interval` (1 s), so a busy replica sends a handful of commands a
second instead of a few per request; each batch's answer is the fleet's month total, from
which the month's figures, the alerts and the guard's state follow. `used()` adds this
replica's unwritten counts to the fleet's, so the figures stay exact between batches.
While the backend is unreachable counts stay pending and are written when it is back; a
shutdown writes what is pending, and a kill -9 loses at most one interval's counts.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, tzinfo

import structlog

from qbo_gateway.clock import Clock
from qbo_gateway.economy.projection import MonthFigures, figures, usage_step
from qbo_gateway.economy.records import (
    CALLER_PREFIX,
    CORE,
    ENTITY_PREFIX,
    PROBE,
    REALM_PREFIX,
    TOTAL,
    MeterBackend,
    MonthSpan,
    entity_of,
    month_of,
)
from qbo_gateway.health.store_memory import Severity
from qbo_gateway.logs import failure
from qbo_gateway.metrics import Metrics
from qbo_gateway.state.errors import StateUnavailable
from qbo_gateway.workers import DrainWorker

log = structlog.get_logger(__name__)

USAGE_ALERT = "coreplus_usage"
PROJECTION_ALERT = "coreplus_projection"
_SAMPLE_EVERY = 10.0  # seconds between rate samples (flushes may be far more frequent)
_RETRY_SECONDS = 5.0  # after a failed batch, wait this long before the next one

AlertSink = Callable[[str, Severity | None, str, float], None]


@dataclass(frozen=True)
class MeterOptions:
    monthly_limit: int = 500_000
    zone: tzinfo = UTC
    rate_window: float = 3600.0
    min_rate_span: float = 600.0
    flush_interval: float = 1.0  # at most one batch per interval (what a kill -9 may lose)


class Meter:
    """Counts calls at once, writes them in batches; one per gateway."""

    def __init__(
        self,
        backend: MeterBackend,
        *,
        clock: Clock,
        metrics: Metrics,
        options: MeterOptions,
        alert: AlertSink | None = None,
    ) -> None:
        self.backend = backend
        self.options = options
        self._clock = clock
        self._metrics = metrics
        self._alert = alert
        self.month = month_of(clock.now(), options.zone)
        self._pending: dict[str, Counter[str]] = {}
        self._fleet_total = 0  # the month's total as last written or read
        self._writing = 0  # this month's calls in the batch being written
        self._samples: deque[tuple[float, int]] = deque()
        self._retry_at = -math.inf
        self.guard_active = False
        self._caller_calls = metrics.coreplus_calls.labels(source="caller")
        self._probe_calls = metrics.coreplus_calls.labels(source="probe")
        self._core_calls = metrics.core_calls
        metrics.coreplus_month.labels(figure="limit").set(options.monthly_limit)
        self._worker = DrainWorker(
            has_work=self._has_work,
            step=self.flush,
            on_error=_failed,
            pace=options.flush_interval,
        )

    # --- the request path -------------------------------------------------------------

    def count(self, realm_id: str, caller: str, rest: str, *, coreplus: bool, probe: bool) -> None:
        """One call QBO answered; a few dict increments, no I/O."""
        if self._clock.now() >= self.month.end:
            self._roll()
        fields = self._pending.get(self.month.label)
        if fields is None:
            fields = self._pending[self.month.label] = Counter()
        if not coreplus:
            fields[CORE] += 1
            self._core_calls.inc()
        else:
            fields[TOTAL] += 1
            fields[REALM_PREFIX + realm_id] += 1
            fields[ENTITY_PREFIX + entity_of(rest)] += 1
            if probe:
                fields[PROBE] += 1
                self._probe_calls.inc()
            else:
                fields[CALLER_PREFIX + caller] += 1
                self._caller_calls.inc()
        self._worker.wake()

    # --- batches ----------------------------------------------------------------------

    def start(self) -> None:
        self._worker.start()

    async def close(self) -> None:
        await self._worker.stop()
        if self._pending:
            try:
                await self.flush()
            except StateUnavailable:
                log.warning("meter_counts_lost", months=sorted(self._pending))

    async def drained(self) -> None:
        """Wait until everything counted so far is written (or written inline if idle)."""
        if self._worker.running:
            await self._worker.drained()
        elif self._pending:
            await self.flush()

    async def drained_quietly(self) -> None:
        """`drained`, with a backend failure left for the next batch (views never fail)."""
        with contextlib.suppress(StateUnavailable):
            await self.drained()

    def _has_work(self) -> bool:
        return bool(self._pending) and self._clock.now() >= self._retry_at

    async def flush(self) -> None:
        """Write the pending batch; on failure keep it for the next one."""
        batch, self._pending = self._pending, {}
        try:
            for label in sorted(batch):
                # Counted in `used()` until the fleet's total that includes it is seen.
                self._writing = batch[label][TOTAL] if label == self.month.label else 0
                total = await self.backend.add(label, dict(batch[label]))
                del batch[label]
                self._writing = 0
                if label == self.month.label:
                    self._seen_total(total)
        except StateUnavailable:
            for label, fields in batch.items():
                self._pending.setdefault(label, Counter()).update(fields)
            self._retry_at = self._clock.now() + _RETRY_SECONDS
            raise
        finally:
            self._writing = 0

    async def refresh(self) -> MonthFigures:
        """Read the fleet's total (other replicas' calls too); never fails."""
        if self._clock.now() >= self.month.end:
            self._roll()
        try:
            counts = await self.backend.read(self.month.label)
            self._seen_total(counts.get(TOTAL, 0))
        except StateUnavailable:
            pass
        return self.figures()

    # --- the month's figures ----------------------------------------------------------

    def used(self) -> int:
        """The month's CorePlus calls: the fleet's as last seen, plus this replica's unwritten."""
        pending = self._pending.get(self.month.label)
        return self._fleet_total + self._writing + (pending[TOTAL] if pending else 0)

    def figures(self) -> MonthFigures:
        now = self._clock.now()
        return figures(
            self._samples,
            self.month,
            self.used(),
            self.options.monthly_limit,
            now,
            min_span=self.options.min_rate_span,
        )

    def _seen_total(self, total: int) -> None:
        now = self._clock.now()
        self._fleet_total = max(self._fleet_total, total)
        samples = self._samples
        if not samples or now - samples[-1][0] >= _SAMPLE_EVERY:
            samples.append((now, self._fleet_total))
        elif samples[-1][0] == now:
            # A later figure of the same instant (the rest of a batch) is the truer one.
            samples[-1] = (now, self._fleet_total)
        while len(samples) > 2 and samples[1][0] <= now - self.options.rate_window:
            samples.popleft()
        self._evaluate()

    def _roll(self) -> None:
        self.month = month_of(self._clock.now(), self.options.zone)
        self._fleet_total = 0
        self._samples.clear()
        self._evaluate()

    def _evaluate(self) -> None:
        fig = self.figures()
        gauge = self._metrics.coreplus_month
        gauge.labels(figure="used").set(fig.used)
        gauge.labels(figure="projected").set(round(fig.projected))
        if self.guard_active != fig.over_projection:
            log.warning("coreplus_guard", active=fig.over_projection, used=fig.used)
        self.guard_active = fig.over_projection
        if self._alert is None:
            return
        severity, step = usage_step(fig.ratio)
        message = f"{step}% of the month's metered (CorePlus) read limit is used"
        self._alert(USAGE_ALERT, severity, message, float(fig.used))
        over = fig.projected > fig.limit
        self._alert(
            PROJECTION_ALERT,
            ("critical" if fig.used >= fig.limit else "warning") if over else None,
            "At the current rate the month's metered reads pass the limit before it ends",
            float(round(fig.projected)),
        )

    def seconds_to_month_end(self) -> float:
        return max(0.0, self.month.end - self._clock.now())


def _failed(exc: Exception) -> None:
    log.warning("meter_batch_failed", **failure(exc))


__all__ = ["Meter", "MeterOptions", "MonthSpan"]
