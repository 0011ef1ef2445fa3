"""Every realm's recent checks and events in process, packed: one `bytearray` per realm.

The in-process health store keeps the newest `RECENT_EVENTS` events of every realm (what
the business view lists). As objects, 50 events cost a realm about 6 KB; packed as fixed
25-byte records (time, latency, status, flags, and the source and detail as numbers into
one shared word list) they cost about 1.3 KB, and a realm seen once about 100 bytes. The
words are a small closed vocabulary (sources, outcomes, fault classes, breaker states,
stale reasons); past `MAX_WORDS` distinct ones, a new word is kept as `OTHER`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

# at, source, ok, status, latency, detail, live: the fields of `HistoryEntry`, in order
Row = tuple[float, str, bool, int, float, str, bool]

_RECORD = struct.Struct("<ddiHHB")  # at, latency, status, source, detail, flags
_OK, _LIVE = 1, 2
MAX_WORDS = 65535
OTHER = "other"


class RecentEvents:
    """The newest `keep` rows of each realm within the window, packed."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._packed: dict[str, bytearray] = {}
        self._words: list[str] = [OTHER]
        self._numbers: dict[str, int] = {OTHER: 0}

    def _number(self, word: str) -> int:
        found = self._numbers.get(word)
        if found is None:
            if len(self._words) >= MAX_WORDS:
                return 0
            found = self._numbers[word] = len(self._words)
            self._words.append(word)
        return found

    def add(self, realm_id: str, rows: Iterable[Row], *, cutoff: float) -> None:
        """Append `rows`, then drop the oldest past `keep` and those before `cutoff`."""
        packed = self._packed.get(realm_id)
        if packed is None:
            packed = self._packed[realm_id] = bytearray()
        for at, source, ok, status, latency, detail, live in rows:
            flags = (_OK if ok else 0) | (_LIVE if live else 0)
            source_n, detail_n = self._number(source), self._number(detail)
            packed += _RECORD.pack(at, latency, status, source_n, detail_n, flags)
        size = _RECORD.size
        held = len(packed) // size
        old = max(0, held - self.keep)
        while old < held and _RECORD.unpack_from(packed, old * size)[0] < cutoff:
            old += 1
        if old:
            del packed[: old * size]

    def rows(self, realm_id: str) -> Iterator[Row]:
        """The realm's rows, oldest first."""
        words = self._words
        for at, latency, status, source, detail, flags in _RECORD.iter_unpack(
            self._packed.get(realm_id, b"")
        ):
            yield (
                at,
                words[source],
                bool(flags & _OK),
                status,
                latency,
                words[detail],
                bool(flags & _LIVE),
            )
