"""A realm's tokens as stored, the store's interface, and what operations may see of them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """One realm's OAuth tokens. `version` grows by one with every stored change.

    Slots: the process keeps one per realm it has served (`local_copy`)."""

    realm_id: str
    access_token: str
    refresh_token: str
    access_expires_at: float  # epoch seconds; 0 means expired / unknown
    refresh_expires_at: float | None = None  # rolling expiry (x_refresh_token_expires_in)
    refresh_hard_expires_at: float | None = None  # opt-in hard expiry
    version: int = 0
    needs_reconnect: bool = False
    updated_at: float = 0.0

    def with_changes(self, **changes: object) -> TokenRecord:
        return replace(self, **changes)  # type: ignore[arg-type]

    def __repr__(self) -> str:  # never let a token reach a log through repr()
        return (
            f"TokenRecord(realm_id={self.realm_id!r}, version={self.version}, "
            f"access_expires_at={self.access_expires_at}, needs_reconnect={self.needs_reconnect})"
        )

    __str__ = __repr__


def is_newer(a: TokenRecord, b: TokenRecord) -> bool:
    """Whether `a` is the newer of two pairs of one realm: higher version, then later issue."""
    return (a.version, a.updated_at) > (b.version, b.updated_at)


class TokenStore(Protocol):
    """Durable, encrypted, versioned token records.

    `put` is compare-and-set on the version: it stores `record` with version
    `expected_version + 1` (1 when `expected_version` is None, meaning "only if absent")
    and returns the stored record, or None when the current version is not the expected
    one. `force=True` overwrites whatever is there (import --force, connect) and still
    bumps the version past the current one, so a slower writer holding the old version
    can never overwrite it afterwards.
    """

    async def get(self, realm_id: str) -> TokenRecord | None: ...

    async def put(
        self, record: TokenRecord, *, expected_version: int | None, force: bool = False
    ) -> TokenRecord | None: ...

    async def restore(self, record: TokenRecord) -> TokenRecord:
        """Write `record` back at its own version unless the store holds a newer pair
        (`is_newer`); returns what the store holds afterwards. Keeping the version (rather
        than bumping it) is what lets every replica agree which pair is the newest after
        a store lost writes."""
        ...

    async def replicated(self, realm_id: str) -> bool:
        """Whether the realm's stored record would survive losing this server: at least one
        replica acknowledged it (True when the store has no replicas to wait for)."""
        ...

    async def delete(self, realm_id: str) -> bool: ...

    async def list_records(self) -> list[TokenRecord]: ...

    async def durability(self) -> tuple[bool, str]:
        """(durable, human explanation); False when a restart would lose every realm."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class TokenStatus:
    """A realm's token health, without any secret: for the health API and `tokens list`.

    Slots: the health table keeps one per stored realm."""

    realm_id: str
    access_expires_at: float
    refresh_expires_at: float | None
    refresh_hard_expires_at: float | None
    needs_reconnect: bool
    version: int
    last_refresh_at: float | None = None
    last_refresh_error: str | None = None  # a short, secret-free description
    refresh_failing: bool = False  # token calls failing while the access token is valid
    # A token call was in flight when its answer was lost (a crash, a timeout): Intuit
    # may have rotated the refresh token. Never "healthy" until a check says.
    refresh_outcome_unknown: bool = False
