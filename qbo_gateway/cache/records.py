"""What a stored read is, and the interface every cache home implements.

The response cache (cache.py) decides what to store and when to serve it; a backend only
keeps entries. Two homes exist, a bounded in-process LRU (embedded mode) and Redis (shared
by replicas), and one behaviour suite runs against both. Entries carry their realm and are
stored under realm-scoped keys, so one realm's read can never be found under another's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

from qbo_gateway.state.errors import StateUnavailable

__all__ = ["CacheBackend", "CachedEntry", "CorruptEntry", "PendingStore", "StateUnavailable"]


class CorruptEntry(ValueError):
    """A stored value that cannot be read back; the cache treats it as a miss."""


@dataclass(frozen=True)
class CachedEntry:
    """One stored read: what QBO answered, when, and under which freshness epoch.

    `fresh_epoch` is the realm's epoch when the read was requested; `realm_epoch` is the
    realm's epoch when the entry was looked up (filled in by `CacheBackend.get`, never
    stored). They differ once a write to the realm has ended the entry's freshness.
    """

    realm_id: str
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stored_at: float
    fresh_epoch: int
    realm_epoch: int = 0
    fresh_for: float | None = None  # its own freshness (per entity); None: the cache's

    def age(self, now: float) -> float:
        return max(0.0, now - self.stored_at)

    def encode(self) -> bytes:
        """One opaque value: a JSON line of metadata, then the raw body."""
        meta = {
            "r": self.realm_id,
            "s": self.status,
            "h": [list(pair) for pair in self.headers],
            "t": self.stored_at,
            "e": self.fresh_epoch,
        }
        if self.fresh_for is not None:
            meta["f"] = self.fresh_for
        return json.dumps(meta, separators=(",", ":")).encode() + b"\n" + self.body

    @classmethod
    def decode(cls, raw: bytes) -> CachedEntry:
        head, sep, body = raw.partition(b"\n")
        if not sep:
            raise CorruptEntry("no metadata line")
        try:
            meta = json.loads(head)
            return cls(
                realm_id=str(meta["r"]),
                status=int(meta["s"]),
                headers=tuple((str(k), str(v)) for k, v in meta["h"]),
                body=body,
                stored_at=float(meta["t"]),
                fresh_epoch=int(meta["e"]),
                fresh_for=None if meta.get("f") is None else float(meta["f"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptEntry(str(exc)) from exc


@dataclass(frozen=True)
class PendingStore:
    """One store of a batch (`CacheBackend.put_many`): what `put` is given."""

    realm_id: str
    key_hash: str
    entry: CachedEntry
    ttl: float


class CacheBackend(Protocol):
    """Keeps stored reads per realm, and one freshness epoch per realm.

    Every method may raise `StateUnavailable` (Redis down); the cache then treats the
    call as a miss or a skipped store, never as a failed request.
    """

    async def get(self, realm_id: str, key_hash: str) -> tuple[CachedEntry | None, int]:
        """The entry stored under (realm, hash) if any, and the realm's current epoch."""
        ...

    async def put(self, realm_id: str, key_hash: str, entry: CachedEntry, *, ttl: float) -> bool:
        """Store `entry` for `ttl` seconds; False when it was not kept (too large)."""
        ...

    async def delete(self, realm_id: str, key_hash: str) -> None:
        """Forget the entry stored under (realm, hash), if any (a deleted entity's read)."""
        ...

    async def put_many(self, stores: list[PendingStore]) -> None:
        """Store a batch, each as `put` would (one pipeline in Redis)."""
        ...

    async def epoch(self, realm_id: str) -> int:
        """The realm's current freshness epoch (0 before any write)."""
        ...

    async def end_freshness(self, realm_id: str) -> int:
        """Advance the realm's epoch, so every entry stored before is no longer fresh."""
        ...

    async def close(self) -> None: ...
