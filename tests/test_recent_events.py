"""Packed recent events: what goes in comes back, the newest few within the window."""

from __future__ import annotations

import pytest

from qbo_gateway.health import recent_events
from qbo_gateway.health.recent_events import OTHER, RecentEvents, Row


def row(at: float, detail: str = "upstream", *, ok: bool = True) -> Row:
    return (at, "request", ok, 200 if ok else 503, 0.123456789, detail, ok)


def test_rows_come_back_exactly_oldest_first_newest_kept() -> None:
    events = RecentEvents(keep=3)
    events.add("r1", [row(10.25), row(11.5, "upstream:timeout", ok=False)], cutoff=0.0)
    events.add("r1", [row(12.0), row(13.0)], cutoff=0.0)
    assert list(events.rows("r1")) == [
        (11.5, "request", False, 503, 0.123456789, "upstream:timeout", False),
        row(12.0),
        row(13.0),
    ]
    assert list(events.rows("r2")) == []


def test_rows_before_the_cutoff_are_dropped() -> None:
    events = RecentEvents(keep=10)
    events.add("r1", [row(1.0), row(2.0), row(3.0)], cutoff=0.0)
    events.add("r1", [row(4.0)], cutoff=2.5)
    assert [r[0] for r in events.rows("r1")] == [3.0, 4.0]


def test_words_past_the_limit_are_kept_as_other(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recent_events, "MAX_WORDS", 4)  # other, request, a, b
    events = RecentEvents(keep=10)
    events.add("r1", [row(1.0, "a"), row(2.0, "b"), row(3.0, "c")], cutoff=0.0)
    assert [r[5] for r in events.rows("r1")] == ["a", "b", OTHER]
