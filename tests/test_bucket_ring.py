"""The in-process bucket ring against a plain dict of buckets: same answers, less memory."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from qbo_gateway.health.bucket_ring import BucketRing
from qbo_gateway.health.buckets import Counts, Series

FIELDS = ("req", "ok", "h0", "lat_ms", "chk_ok", "down_ms", "det:a1", "rec:a1")


class Model:
    """What the ring must answer: every bucket within `slots` of the newest one added."""

    def __init__(self, slots: int, caps: dict[str, int]) -> None:
        self.slots = slots
        self.caps = caps
        self.newest = -1
        self.buckets: Series = {}

    def add(self, bucket: int, counts: Counts) -> None:
        if self.newest >= 0 and bucket <= self.newest - self.slots:
            return
        self.newest = max(self.newest, bucket)
        into = self.buckets.setdefault(bucket, {})
        for name, n in counts.items():
            if n or ":" in name:  # an incident's time counts even at 0 ms
                into[name] = min(self.caps.get(name, 2**70), into.get(name, 0) + n)

    def read(self, first: int, last: int) -> Series:
        low = max(first, last - self.slots + 1, self.newest - self.slots + 1)
        return {b: c for b, c in self.buckets.items() if low <= b <= last and c}


ops = st.lists(
    st.tuples(
        st.integers(0, 60),
        st.dictionaries(st.sampled_from(FIELDS), st.integers(0, 40_000), max_size=4),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    ops=ops,
    slots=st.integers(1, 12),
    reads=st.lists(st.tuples(st.integers(0, 70), st.integers(0, 12)), max_size=5),
)
def test_ring_answers_like_a_dict_of_buckets(
    ops: list[tuple[int, Counts]], slots: int, reads: list[tuple[int, int]]
) -> None:
    ring = BucketRing(slots)
    caps = {name: 65535 for name in FIELDS if ":" not in name}
    caps["lat_ms"] = caps["down_ms"] = 65535 * 65536
    model = Model(slots, caps)
    for bucket, counts in ops:
        ring.add(bucket, counts)
        model.add(bucket, counts)
        assert ring.read(0, 80) == model.read(0, 80)
    for last, span in reads:
        assert ring.read(last - span, last) == model.read(last - span, last)


def test_counters_saturate_per_bucket_and_widen_on_the_way() -> None:
    realm, fleet = BucketRing(10), BucketRing(10, wide=True)
    for _ in range(300):
        realm.add(5, {"req": 250, "lat_ms": 2**24})
        fleet.add(5, {"req": 250, "lat_ms": 2**24})
    assert realm.read(0, 9) == {5: {"req": 65535, "lat_ms": 65535 * 65536}}
    assert fleet.read(0, 9) == {5: {"req": 75_000, "lat_ms": 300 * 2**24}}


def test_a_realm_seen_once_keeps_a_small_ring_and_a_busy_day_a_full_one() -> None:
    once = BucketRing(289)
    once.add(1000, {"req": 1, "ok": 1, "h0": 1, "lat_ms": 120})
    busy = BucketRing(289)
    for bucket in range(1000, 1000 + 289 * 2):
        busy.add(bucket, {"req": 1, "ok": 1, "chk_ok": 1, "h0": 1, "lat_ms": 120})
    assert once.nbytes() < 1000
    # five counters a bucket, one byte each and two for the latency sum, for the window
    assert 289 * 6 < busy.nbytes() < 289 * 6 + 1000
    assert len(busy.read(0, 1000 + 289 * 2 - 1)) == 289
