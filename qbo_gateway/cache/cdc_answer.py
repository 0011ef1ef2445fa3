"""What change data capture (CDC) can vouch for, and what a CDC answer says, as plain data.

QBO's `GET .../cdc?entities=A,B&changedSince=ISO` returns, per entity, every object created,
updated or deleted since a time (whole objects; deleted ones as `status: "Deleted"`), 30
days back at most and 1000 objects at most. Only a plain entity read (`GET
{entity}/{Id}`) of an entity CDC covers can be vouched for by it: queries and reports
answer sets and totals no list of changed objects can confirm, so they keep their
freshness rules. No I/O here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote

MAX_OBJECTS = 1000  # an answer this long may have left changes out
MAX_LOOKBACK = 30 * 86400.0

# Path name (as SDKs send it) -> QBO's entity name, for the entities CDC covers.
CDC_ENTITIES: dict[str, str] = {
    name.lower(): name
    for name in (
        "Account",
        "Bill",
        "BillPayment",
        "Budget",
        "Class",
        "CreditMemo",
        "Customer",
        "Department",
        "Deposit",
        "Employee",
        "Estimate",
        "Invoice",
        "Item",
        "JournalEntry",
        "Payment",
        "PaymentMethod",
        "Purchase",
        "PurchaseOrder",
        "RefundReceipt",
        "SalesReceipt",
        "TaxAgency",
        "Term",
        "TimeActivity",
        "Transfer",
        "Vendor",
        "VendorCredit",
    )
}
_ENTITY_READ = re.compile(r"^([a-z]{1,40})/(\d{1,20})$")
# Query parameters that do not change what an entity read answers (see policy.key_for).
_NEUTRAL_PARAMS = frozenset({"minorversion", "requestid"})


def cdc_entity(rest: str, query: str, accept: str | None) -> str | None:
    """The entity (path name) of a read CDC can vouch for, else None.

    Only the plain JSON form: the changed objects CDC returns are stored under that read's
    key, so a read with other parameters or another `Accept` is left to its freshness.
    """
    found = _ENTITY_READ.match(rest)
    if found is None or found.group(1) not in CDC_ENTITIES:
        return None
    if (accept or "").strip() not in ("", "application/json"):
        return None
    for part in query.split("&"):
        if part and part.partition("=")[0].lower() not in _NEUTRAL_PARAMS:
            return None
    return found.group(1)


def cdc_query(entities: list[str], since: float) -> str:
    """The raw query string of a CDC call for path names `entities`, changed since `since`."""
    names = ",".join(CDC_ENTITIES[e] for e in entities)
    stamp = datetime.fromtimestamp(since, tz=UTC).isoformat(timespec="seconds")
    return f"entities={names}&changedSince={quote(stamp, safe='')}"


@dataclass
class CdcChanges:
    """One CDC answer: per (path name, Id) the new object, or None when it was deleted."""

    objects: dict[tuple[str, str], dict[str, object] | None] = field(default_factory=dict)
    count: int = 0

    @property
    def truncated(self) -> bool:
        return self.count >= MAX_OBJECTS


def parse_cdc(body: bytes) -> CdcChanges | None:
    """The changes in a CDC answer, or None when it is not one (a fault, another shape)."""
    try:
        answer = json.loads(body)
        responses = answer["CDCResponse"][0]["QueryResponse"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if not isinstance(responses, list):
        return None
    changes = CdcChanges()
    for response in responses:
        if not isinstance(response, dict):
            return None
        for name, rows in response.items():
            path_name = name.lower()
            if path_name not in CDC_ENTITIES or not isinstance(rows, list):
                continue
            for row in rows:
                if not isinstance(row, dict) or not str(row.get("Id", "")).isdigit():
                    return None
                changes.count += 1
                deleted = row.get("status") == "Deleted"
                changes.objects[(path_name, str(row["Id"]))] = None if deleted else row
    return changes


def same_version(body: bytes, path_name: str, row: dict[str, object]) -> bool:
    """Whether a stored read's body already is `row`'s version (SyncToken and last update)."""
    try:
        held = json.loads(body)[CDC_ENTITIES[path_name]]
        return bool(
            held["SyncToken"] == row["SyncToken"]
            and held["MetaData"]["LastUpdatedTime"] == _meta(row)["LastUpdatedTime"]
        )
    except (ValueError, KeyError, TypeError):
        return False


def _meta(row: dict[str, object]) -> dict[str, object]:
    meta = row.get("MetaData")
    return meta if isinstance(meta, dict) else {}


def entity_body(path_name: str, row: dict[str, object], at: float) -> bytes:
    """What `GET {entity}/{Id}` answers for `row`, as of `at`."""
    stamp = datetime.fromtimestamp(at, tz=UTC).isoformat(timespec="milliseconds")
    return json.dumps({CDC_ENTITIES[path_name]: row, "time": stamp}).encode()
