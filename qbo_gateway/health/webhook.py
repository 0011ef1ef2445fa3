"""Webhook delivery of alert notifications, with retries and exponential backoff.

Each notification is POSTed as JSON with a Slack-compatible `text` field by a background
worker, so a slow or down receiver never holds up a request or the alert decisions.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from qbo_gateway.clock import Clock
from qbo_gateway.health.alert_rules import alert_json
from qbo_gateway.health.store_memory import AlertRecord
from qbo_gateway.logs import failure
from qbo_gateway.metrics import Metrics
from qbo_gateway.workers import DrainWorker

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Notification:
    event: str  # raised | escalated | resolved
    alert: AlertRecord
    detected_at: float


class WebhookNotifier:
    """Delivers notifications to one URL in the background, with retries and backoff.

    A bounded queue drops the oldest notification when the receiver is down for long, so
    memory stays bounded; `deliveries` keeps (detected -> delivered) delays for the SLA.
    """

    def __init__(
        self,
        *,
        url: str,
        session: aiohttp.ClientSession,
        clock: Clock,
        metrics: Metrics,
        attempts: int = 5,
        base_delay: float = 1.0,
        max_delay: float = 30.0,
        timeout: float = 5.0,
        max_queue: int = 1000,
    ) -> None:
        self.url = url
        self._session = session
        self._clock = clock
        self._metrics = metrics
        self._attempts = attempts
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._queue: deque[Notification] = deque(maxlen=max_queue)
        self._worker = DrainWorker(
            has_work=lambda: bool(self._queue),
            step=lambda: self._deliver(self._queue.popleft()),
            on_error=lambda exc: log.error("alert_delivery_crashed", **failure(exc)),
        )
        # Told of each delivered notification and when (the alert lifecycle times them).
        self.on_delivered: Callable[[Notification, float], None] = lambda note, at: None

    def submit(self, note: Notification) -> None:
        if len(self._queue) == self._queue.maxlen:
            self._metrics.alert_deliveries.labels(result="dropped").inc()
        self._queue.append(note)
        self._worker.wake()

    def start(self) -> None:
        self._worker.start()

    async def close(self) -> None:
        # A delivery in its backoff is cut off: webhook retries must not hold up a shutdown.
        await self._worker.stop(park=False)

    async def drained(self) -> None:
        """Wait until every submitted notification was delivered or given up on."""
        await self._worker.drained()

    async def _deliver(self, note: Notification) -> None:
        payload = webhook_payload(note)
        for attempt in range(1, self._attempts + 1):
            error: str
            failed: BaseException | None = None
            try:
                async with self._session.post(
                    self.url, json=payload, timeout=self._timeout
                ) as resp:
                    await resp.read()
                    if resp.status < 300:
                        self._metrics.alert_deliveries.labels(result="success").inc()
                        self.on_delivered(note, self._clock.now())
                        log.info(
                            "alert_delivered",
                            alert_id=note.alert.id,
                            notification=note.event,
                            attempt=attempt,
                        )
                        return
                    error = f"status {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                failed = exc
            if attempt == self._attempts:
                break
            self._metrics.alert_deliveries.labels(result="retry").inc()
            delay = min(self._max_delay, self._base_delay * 2 ** (attempt - 1))
            log.warning(
                "alert_delivery_retry",
                alert_id=note.alert.id,
                attempt=attempt,
                error=error,
                exc_info=failed,
                retry_in=delay,
            )
            await self._clock.sleep(delay)
        self._metrics.alert_deliveries.labels(result="failure").inc()
        log.error("alert_delivery_failed", alert_id=note.alert.id, attempts=self._attempts)


def webhook_payload(note: Notification) -> dict[str, Any]:
    a = note.alert
    icon = {"critical": ":red_circle:", "warning": ":warning:"}.get(a.severity, "")
    if note.event == "resolved":
        icon = ":white_check_mark:"
    text = (
        f"{icon} [{a.severity.upper()}] qbo-gateway {a.kind} {note.event} "
        f"for realm {a.realm_id}: {a.message}"
    )
    return {"text": text.strip(), "event": note.event, "alert": alert_json(a)}
