"""The one in-process single-flight utility (read cache misses and token refreshes use it)."""

from __future__ import annotations

import asyncio

import pytest

from qbo_gateway.faults import UpstreamUnavailable
from qbo_gateway.single_flight import SingleFlight


async def test_concurrent_callers_share_one_run_and_its_result() -> None:
    flights: SingleFlight[str, int] = SingleFlight("test")
    gate = asyncio.Event()
    runs = 0

    async def work() -> int:
        nonlocal runs
        runs += 1
        await gate.wait()
        return 7

    callers = [asyncio.create_task(flights.run("k", work)) for _ in range(20)]
    await asyncio.sleep(0)  # let every caller reach the flight (no time passes)
    assert flights.running("k") is not None
    gate.set()
    assert await asyncio.gather(*callers) == [7] * 20
    assert runs == 1
    assert flights.running("k") is None


async def test_a_failure_is_shared_and_a_leaving_caller_cancels_nothing() -> None:
    flights: SingleFlight[str, int] = SingleFlight("test")
    gate = asyncio.Event()
    runs = 0

    async def fail() -> int:
        nonlocal runs
        runs += 1
        await gate.wait()
        raise UpstreamUnavailable()

    leaver = asyncio.create_task(flights.run("k", fail))
    stayer = asyncio.create_task(flights.run("k", fail))
    await asyncio.sleep(0)
    leaver.cancel()
    await asyncio.sleep(0)
    gate.set()
    with pytest.raises(UpstreamUnavailable):
        await stayer
    assert runs == 1

    async def ok() -> int:
        return 8

    assert await flights.run("k", ok) == 8  # the flight is over: the next caller runs again


async def test_keys_fly_apart_and_drain_waits_for_every_run() -> None:
    flights: SingleFlight[str, str] = SingleFlight("test")
    gate = asyncio.Event()

    async def work(name: str) -> str:
        await gate.wait()
        return name

    a = flights.start("a", work("a"))
    b = flights.start("b", work("b"))
    assert a is not b
    with pytest.raises(RuntimeError, match="already in flight"):
        flights.start("a", work("again"))
    drained = asyncio.create_task(flights.drain())
    await asyncio.sleep(0)
    assert not drained.done()
    gate.set()
    await drained
    assert (a.result(), b.result()) == ("a", "b")
    assert flights.running("a") is None and flights.running("b") is None
