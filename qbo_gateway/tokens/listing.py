"""What an operator may see of the stored realms: status and expiry times, never a token.

One listing for `tokens list` and for `GET /admin/realms`, so the command line and the ops
listener say the same thing about a realm. Pages are cut by realm id (a cursor, not an
offset), so a realm added or removed between two pages never shifts the rest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Protocol

DEFAULT_PAGE = 100
MAX_PAGE = 1000


class RealmTokens(Protocol):
    """The secret-free fields of a TokenRecord or a TokenStatus."""

    @property
    def realm_id(self) -> str: ...
    @property
    def access_expires_at(self) -> float: ...
    @property
    def refresh_expires_at(self) -> float | None: ...
    @property
    def refresh_hard_expires_at(self) -> float | None: ...
    @property
    def needs_reconnect(self) -> bool: ...
    @property
    def version(self) -> int: ...


def iso(value: float | None) -> str | None:
    if not value:
        return None
    return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def realm_state(realm: RealmTokens, now: float) -> str:
    if realm.needs_reconnect:
        return "needs_reconnect"
    ends = [t for t in (realm.refresh_expires_at, realm.refresh_hard_expires_at) if t]
    if ends and min(ends) <= now:
        return "refresh_expired"
    if realm.access_expires_at <= now:
        return "access_expired"  # refreshed on first use or by the daemon's refresher
    return "ok"


@dataclass(frozen=True)
class ListedRealm:
    realm_id: str
    status: str
    needs_reconnect: bool
    access_expires_at: str | None
    refresh_expires_at: str | None
    refresh_hard_expires_at: str | None
    version: int

    def as_json(self) -> dict[str, object]:
        return asdict(self)


def listed(realm: RealmTokens, now: float) -> ListedRealm:
    return ListedRealm(
        realm_id=realm.realm_id,
        status=realm_state(realm, now),
        needs_reconnect=realm.needs_reconnect,
        access_expires_at=iso(realm.access_expires_at),
        refresh_expires_at=iso(realm.refresh_expires_at),
        refresh_hard_expires_at=iso(realm.refresh_hard_expires_at),
        version=realm.version,
    )


@dataclass(frozen=True)
class RealmPage:
    realms: list[ListedRealm]
    next_after: str | None  # pass as `after` for the next page; None on the last page
    total: int

    def as_json(self) -> dict[str, object]:
        return {
            "realms": [r.as_json() for r in self.realms],
            "next_after": self.next_after,
            "total": self.total,
        }


def _order(realm_id: str) -> tuple[int, str]:
    return (len(realm_id), realm_id)  # numeric order for digit strings, without int()


def page_of(
    realms: list[RealmTokens], now: float, *, limit: int = DEFAULT_PAGE, after: str | None = None
) -> RealmPage:
    """Realms in realm-id order, `limit` of them, starting after the realm id `after`."""
    limit = max(1, min(limit, MAX_PAGE))
    ordered = sorted(realms, key=lambda r: _order(r.realm_id))
    if after is not None:
        ordered = [r for r in ordered if _order(r.realm_id) > _order(after)]
    page = ordered[:limit]
    more = len(ordered) > limit
    return RealmPage(
        realms=[listed(r, now) for r in page],
        next_after=page[-1].realm_id if more and page else None,
        total=len(realms),
    )
