"""Spending fewer metered reads: how long each kind of read stays fresh, and write-through.

Intuit's advice for the metered API is to cache reads with a TTL, longer for data that
rarely changes, and to keep a create's or update's answer instead of reading the entity
again. `EntityFreshness` holds those decisions for the read cache: the freshness of a read
by the entity it addresses (an entity read, or a query's `FROM` entity), and which read a
write's answer stands for (`GET {entity}/{Id}`), kept fresh for a while. Any write through
the gateway still ends the freshness of every stored read of its realm.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote_plus

# Data that rarely changes (chart of accounts, classes, terms, tax codes...): an hour, or a
# day for what only an accountant's setup changes.
DEFAULT_ENTITY_FRESH: Mapping[str, float] = {
    "account": 3600.0,
    "class": 3600.0,
    "department": 3600.0,
    "item": 3600.0,
    "preferences": 3600.0,
    "term": 86400.0,
    "taxcode": 86400.0,
    "taxrate": 86400.0,
    "paymentmethod": 86400.0,
    "companycurrency": 86400.0,
}
_ENTITY_READ = re.compile(r"^([A-Za-z]{1,40})/(\d{1,20})$")
_WRITE = re.compile(r"^([A-Za-z]{1,40})$")
_NEVER_WRITTEN = frozenset({"companyinfo"})  # read-only entities: no write stands for them
_FROM = re.compile(r"\bfrom\s+([A-Za-z]{1,40})\b", re.IGNORECASE)


def parse_entity_fresh(text: str) -> dict[str, float]:
    """`account=3600,term=0` -> {"account": 3600.0, "term": 0.0}; raises ValueError."""
    found: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        if not sep or not name.isalpha():
            raise ValueError(f"{part.strip()!r} is not entity=seconds")
        seconds = float(value)
        if seconds < 0:
            raise ValueError(f"{part.strip()!r}: seconds must be >= 0")
        found[name] = seconds
    return found


@dataclass(frozen=True)
class KeptRead:
    """The read a write's answer stands for: its path, and how long it stays fresh."""

    rest: str
    fresh_for: float


class EntityFreshness:
    """Freshness by entity; `default` for anything not named (`QBO_CACHE_FRESH_SECONDS`)."""

    def __init__(
        self, per_entity: Mapping[str, float], *, default: float, write_through: float
    ) -> None:
        self._per_entity = {k.lower(): v for k, v in per_entity.items()}
        self.default = default
        self.write_through = write_through

    def entity(self, rest: str, query: str, body: bytes | None) -> str:
        """The entity a read addresses: the path's first segment, or a query's FROM."""
        first = rest.split("/", 1)[0].lower()
        if first != "query":
            return first
        text = body.decode("utf-8", "replace") if body else _query_text(query)
        found = _FROM.search(text)
        return found.group(1).lower() if found else "query"

    def all_fresh(self) -> list[float]:
        """Every freshness in use (the longest bounds how old a fresh read can be)."""
        return [self.default, *self._per_entity.values()]

    def fresh_for(self, rest: str, query: str, body: bytes | None) -> float:
        if not self._per_entity:
            return self.default
        return self._per_entity.get(self.entity(rest, query, body), self.default)

    def may_be_kept(self, rest: str) -> bool:
        """A read that a write's answer may stand for (`{entity}/{Id}`; never companyinfo)."""
        if self.write_through <= 0:
            return False
        found = _ENTITY_READ.match(rest)
        return found is not None and found.group(1).lower() not in _NEVER_WRITTEN

    def kept_read(self, rest: str, query: str, body: bytes) -> KeptRead | None:
        """The entity read a successful create or update answered, if any."""
        shape = _WRITE.match(rest)
        if self.write_through <= 0 or shape is None or "operation=delete" in query.lower():
            return None
        try:
            answer = json.loads(body)
        except ValueError:
            return None
        if not isinstance(answer, dict):
            return None
        name = shape.group(1).lower()
        for key, value in answer.items():
            if key.lower() == name and isinstance(value, dict):
                entity_id = str(value.get("Id", ""))
                if entity_id.isdigit() and value.get("status") != "Deleted":
                    fresh = max(self.write_through, self.fresh_for(name, "", None))
                    return KeptRead(f"{shape.group(1)}/{entity_id}", fresh)
        return None


def _query_text(query: str) -> str:
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name.lower() == "query":
            return unquote_plus(value)
    return ""
