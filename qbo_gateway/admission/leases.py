"""Quota leasing: a replica spends a slice of a realm's shared budget without asking Redis.

Per-request admission costs one Redis round trip before every call to QBO. Here a replica
leases a slice of a realm's budget (rate and batch slots, concurrency slots) in one round
trip (`lua/lease.lua`), admits from it in memory, and asks for the next slice in the
background before this one runs out, so a steady stream never waits on Redis. The script
makes it exact (a leased rate slot is counted at its lease's end, concurrency slots are
members of the shared in-flight set); this module keeps the spending honest: a slice is
spent only within `lease_seconds` of asking for it, what it leaves is handed back, and a
throttle or an opening breaker seen here drops the lease at once.

Whatever a lease cannot give (an open or half-open breaker, a cool-down, a spent budget,
Redis down) goes through the inner backend's per-request path, unchanged. Successes are
reported in batches (with the next lease, or the next `tick`); a failure or a throttle is
recorded at once, after the successes this replica saw before it, so the breaker counts
consecutive failures as it always has.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import uuid
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

from qbo_gateway.admission.backend_memory import WAIT_POLL_SECONDS
from qbo_gateway.admission.records import (
    Admission,
    AdmissionPolicy,
    BreakerState,
    LeaseAsk,
    LeaseGrant,
    LeaseReturn,
    LeasingBackend,
    Outcome,
    RealmLoad,
    Verdict,
)
from qbo_gateway.clock import Clock
from qbo_gateway.metrics import Metrics

log = structlog.get_logger(__name__)

# A slice covers the demand of one lease with this much to spare, so a steady stream's next
# slice arrives (asked for in the background) before this one is spent.
_HEADROOM = 1.5
# Ask for the next slice once this share of the current one is left (or half its time).
_LOW_WATER = 1 / 3


@dataclass
class _Slice:
    stamp: str
    rate: int  # slots left
    batch_stamp: str
    batch: int
    until: float  # clock.monotonic(): no slot is spent from here on

    def handed_back(self) -> LeaseReturn:
        return LeaseReturn(self.stamp, self.rate, self.batch_stamp, self.batch)


@dataclass
class _Realm:
    generation: int = 0
    slices: list[_Slice] = field(default_factory=list)
    free: list[str] = field(default_factory=list)  # leased concurrency slots not in use
    busy: set[str] = field(default_factory=set)
    returns: list[LeaseReturn] = field(default_factory=list)  # no longer spendable here
    gone: list[str] = field(default_factory=list)  # concurrency slots to hand back
    successes: int | None = None  # newest generation of successes not yet reported
    paused_until: float = 0.0  # ask for no lease before this (refused, spent, unreachable)
    asking: asyncio.Task[None] | None = None
    admits: deque[float] = field(default_factory=deque)  # this lease period's admits
    batches: deque[float] = field(default_factory=deque)
    peak_busy: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # outcomes stay in order

    def live(self, now: float) -> bool:
        return any(s.until > now for s in self.slices)

    def idle(self) -> bool:
        return (
            not (self.slices or self.free or self.busy or self.returns or self.gone)
            and self.successes is None
            and (self.asking is None or self.asking.done())
        )


class LeasedAdmission:
    """`AdmissionBackend` that admits from leased slices, falling back to `inner` per request.

    `tick()` (every half lease, from `run`) hands back what expired leases left and reports
    batched successes; `release_all()` hands everything back (shutdown).
    """

    def __init__(
        self,
        inner: LeasingBackend,
        policy: AdmissionPolicy,
        *,
        clock: Clock,
        lease_seconds: float,
        holder: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.policy = policy
        self._inner = inner
        self._clock = clock
        self._lease = lease_seconds
        self._holder = holder or uuid.uuid4().hex[:16]
        self._realms: dict[str, _Realm] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        counter = (metrics or Metrics()).admissions
        self._leased = counter.labels(path="leased")
        self._lease_wait = counter.labels(path="lease_wait")
        self._per_request = counter.labels(path="per_request")

    @property
    def realms_held(self) -> int:
        return len(self._realms)

    def _realm(self, realm_id: str) -> _Realm:
        r = self._realms.get(realm_id)
        if r is None:
            r = self._realms[realm_id] = _Realm()
        return r

    async def admit(self, realm_id: str, *, batch: bool = False) -> Admission:
        r = self._realm(realm_id)
        now = self._clock.monotonic()
        self._note(r, now, batch)
        admission = self._spend(r, now, batch)
        counted = self._leased
        if admission is None and now >= r.paused_until:
            await asyncio.shield(self._asking(realm_id, r))
            now = self._clock.monotonic()
            admission = self._spend(r, now, batch)
            counted = self._lease_wait
        if admission is None and r.busy and self._spendable(r, now, batch):
            # Slots leased but every concurrency slot busy here: one comes back soon, and
            # asking Redis for another rate slot would strand the leased ones.
            return Admission(Verdict.WAIT, delay=WAIT_POLL_SECONDS, generation=r.generation)
        if admission is None:
            self._per_request.inc()
            return await self._inner.admit(realm_id, batch=batch)
        counted.inc()
        self._top_up(realm_id, r)
        return admission

    def _note(self, r: _Realm, now: float, batch: bool) -> None:
        """Remember this admit: the next slice is sized to the last lease period's demand."""
        for window in (r.admits, r.batches):
            while window and window[0] <= now - self._lease:
                window.popleft()
        r.admits.append(now)
        if batch:
            r.batches.append(now)

    @staticmethod
    def _spendable(r: _Realm, now: float, batch: bool) -> bool:
        return any(s.until > now and s.rate > 0 and (s.batch > 0 or not batch) for s in r.slices)

    def _spend(self, r: _Realm, now: float, batch: bool) -> Admission | None:
        if not r.free:
            return None
        for s in r.slices:
            if s.until > now and s.rate > 0 and (s.batch > 0 or not batch):
                s.rate -= 1
                if batch:
                    s.batch -= 1
                member = r.free.pop()
                r.busy.add(member)
                r.peak_busy = max(r.peak_busy, len(r.busy))
                return Admission(Verdict.ADMIT, lease_id=member, generation=r.generation)
        return None

    def _top_up(self, realm_id: str, r: _Realm) -> None:
        """Ask for the next slice in the background before this one is spent or over."""
        if r.asking is not None and not r.asking.done():
            return
        now = self._clock.monotonic()
        live = [s for s in r.slices if s.until > now]
        left = sum(s.rate for s in live)
        ends = max((s.until for s in live), default=now)
        if left > len(r.admits) * _LOW_WATER and ends - now > self._lease / 2:
            return
        if now < r.paused_until:
            return
        self._asking(realm_id, r)

    def _asking(self, realm_id: str, r: _Realm) -> asyncio.Task[None]:
        """The realm's one lease request in flight (started now if there is none)."""
        if r.asking is None or r.asking.done():
            r.asking = self._spawn(self._exchange(realm_id, r, want=True))
        return r.asking

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _retire(self, r: _Realm, now: float) -> None:
        """Move what can no longer be spent to what is handed back."""
        keep = []
        for s in r.slices:
            if s.until > now:
                keep.append(s)
            elif s.rate or s.batch:
                r.returns.append(s.handed_back())
        r.slices = keep
        if not keep:
            r.gone.extend(r.free)
            r.free.clear()

    def _drop(self, r: _Realm, now: float) -> None:
        """Stop spending at once (a throttle, an open breaker, a refused lease)."""
        r.returns.extend(s.handed_back() for s in r.slices if s.rate or s.batch)
        r.slices.clear()
        r.gone.extend(r.free)
        r.free.clear()
        r.paused_until = now + self._lease

    def _wants(self, r: _Realm, now: float) -> tuple[int, int, int]:
        p = self.policy
        live = [s for s in r.slices if s.until > now]
        left = sum(s.rate for s in live)
        rate = min(p.per_second, max(1, math.ceil(len(r.admits) * _HEADROOM)))
        batch = math.ceil(len(r.batches) * _HEADROOM) if r.batches else 0
        # Concurrency slots for the most in flight lately, with room to grow.
        target = min(p.concurrency, math.ceil(max(r.peak_busy, len(r.busy)) * _HEADROOM) + 1)
        r.peak_busy = len(r.busy)
        spare = len(r.free) - max(1, target - len(r.busy))
        if spare > 0:  # demand fell: slots this replica no longer needs go back
            r.gone.extend(r.free[:spare])
            del r.free[:spare]
        members = max(0, target - len(r.free) - len(r.busy))
        return max(1, rate - left), min(batch, p.batch_per_minute), members

    async def _exchange(self, realm_id: str, r: _Realm, *, want: bool) -> None:
        """One round trip: hand back, report successes, and (if `want`) lease a new slice."""
        async with r.lock:
            sent = self._clock.monotonic()
            self._retire(r, sent)
            rate, batch, members = self._wants(r, sent) if want else (0, 0, 0)
            ask = LeaseAsk(
                rate=rate,
                batch=batch,
                members=members,
                returned=tuple(r.returns),
                returned_members=tuple(r.gone),
                held_members=(*r.free, *r.busy) if want else (),
                successes=r.successes,
            )
            r.returns, r.gone, r.successes = [], [], None
            try:
                grant = await self._inner.lease(realm_id, self._holder, ask)
            except Exception:  # a failed lease only sends requests the per-request way
                log.exception("admission_lease_failed", realm_id=realm_id)
                grant = None
            if grant is None:  # unreachable: keep what is owed for a later exchange
                r.returns[:0] = ask.returned
                r.gone[:0] = ask.returned_members
                if ask.successes is not None:
                    r.successes = max(ask.successes, r.successes or ask.successes)
                r.paused_until = sent + self._lease
                return
        self._granted(realm_id, r, grant, sent, want=want)

    def _granted(
        self, realm_id: str, r: _Realm, grant: LeaseGrant, sent: float, *, want: bool
    ) -> None:
        for member in grant.lost:  # lapsed in the shared state: no longer ours to use
            r.busy.discard(member)
            with contextlib.suppress(ValueError):
                r.free.remove(member)
        r.generation = grant.generation
        if grant.refusal is not None:
            self._drop(r, sent)
            return
        if not want:
            return
        if grant.rate > 0:
            r.slices.append(
                _Slice(grant.stamp, grant.rate, grant.batch_stamp, grant.batch, sent + self._lease)
            )
        r.free.extend(grant.members)
        if grant.rate == 0 or not (r.free or r.busy):
            # The budget is spent: per request until the next lease period, and the idle
            # concurrency slots held here go back for those requests to use.
            r.paused_until = sent + self._lease
            if not r.live(sent):
                r.gone.extend(r.free)
                r.free.clear()
                self._spawn(self._exchange(realm_id, r, want=False))

    async def record(
        self,
        realm_id: str,
        admission: Admission,
        outcome: Outcome,
        *,
        retry_after: float | None = None,
    ) -> BreakerState | None:
        r = self._realms.get(realm_id)
        member = admission.lease_id
        if r is None or member is None or member not in r.busy:
            return await self._inner.record(realm_id, admission, outcome, retry_after=retry_after)
        now = self._clock.monotonic()
        r.busy.discard(member)
        (r.free if r.live(now) else r.gone).append(member)
        if outcome is Outcome.SUCCESS:
            r.successes = max(admission.generation, r.successes or 0)
            return None
        if outcome is Outcome.ABANDONED:
            return None
        if outcome is Outcome.THROTTLE:
            self._drop(r, now)  # every other replica learns it from the cool-down
        async with r.lock:
            if r.successes is not None:
                seen, r.successes = r.successes, None
                await self._inner.record_successes(realm_id, seen)
            moved = await self._inner.record(
                realm_id,
                dataclasses.replace(admission, lease_id=None),
                outcome,
                retry_after=retry_after,
            )
        if moved is BreakerState.OPEN:
            self._drop(r, self._clock.monotonic())
        return moved

    async def tick(self) -> None:
        """Hand back what expired leases left, report successes, forget idle realms."""
        now = self._clock.monotonic()
        for realm_id, r in list(self._realms.items()):
            self._retire(r, now)
            if r.returns or r.gone or r.successes is not None:
                await self._exchange(realm_id, r, want=False)
            if r.idle() and not r.admits:
                del self._realms[realm_id]
            elif r.admits and r.admits[-1] <= now - self._lease:
                r.admits.clear()
                r.batches.clear()

    async def run(self) -> None:
        """The maintenance loop a daemon runs (`tick` every half lease)."""
        while True:
            await self._clock.sleep(self._lease / 2)
            try:
                await self.tick()
            except Exception:  # the next tick retries; never end the loop
                log.exception("admission_lease_tick_failed")

    async def drain(self) -> None:
        """Wait for the lease requests in flight (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def release_all(self) -> None:
        """Hand every lease back now (shutdown): other replicas get the slots at once."""
        await self.drain()
        now = self._clock.monotonic()
        for r in self._realms.values():
            self._drop(r, now)
        await self.tick()

    async def load(self, realm_id: str) -> RealmLoad:
        return await self._inner.load(realm_id)

    async def reset_breaker(self, realm_id: str) -> None:
        await self._inner.reset_breaker(realm_id)
        r = self._realms.get(realm_id)
        if r is not None:  # slices carry the old generation: lease anew
            self._drop(r, self._clock.monotonic())
            r.paused_until = 0.0

    async def close(self) -> None:
        await self.release_all()
        await self._inner.close()
