"""A realm's company data: the seeded customers and invoices, and how writes change them.

Every connected realm starts with the same predictable rows so tests can read known ids, and
writes follow QBO's rules (new ids, SyncToken must match, sparse updates merge, only
transactions can be deleted) so the gateway's write path meets a Stale Object Error exactly
where the real service would raise one. Every create, update and delete is noted with its
time (`Realm.changed`, `Realm.deleted`): that is what change data capture (`cdc.py`) answers.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qbo_gateway.simulator.answers import FaultAnswer, fault_body, iso, not_found
from qbo_gateway.simulator.records import JSONDict

SEED_COUNT = 25
DELETABLE = frozenset({"Invoice"})  # transactions; name lists (Customer) are made inactive


@dataclass
class Realm:
    realm_id: str
    connected_at: float
    entities: dict[str, dict[str, JSONDict]] = field(default_factory=dict)
    next_id: dict[str, int] = field(default_factory=dict)
    idempotent: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    refresh_token: str | None = None
    # entity -> id -> when it was last created or updated / deleted (epoch seconds)
    changed: dict[str, dict[str, float]] = field(default_factory=dict)
    deleted: dict[str, dict[str, float]] = field(default_factory=dict)

    def note_change(self, entity: str, entity_id: str, at: float, *, deleted: bool = False) -> None:
        """Remember a create, update or delete for change data capture."""
        live, gone = self.changed.setdefault(entity, {}), self.deleted.setdefault(entity, {})
        (gone if deleted else live)[entity_id] = at
        (live if deleted else gone).pop(entity_id, None)


def new_realm_id() -> str:
    return str(secrets.randbelow(9 * 10**15) + 10**15)


def seed_realm(realm_id: str, clock: Callable[[], float]) -> Realm:
    realm = Realm(realm_id=realm_id, connected_at=clock())
    stamp = iso(clock())
    customers: dict[str, JSONDict] = {}
    invoices: dict[str, JSONDict] = {}
    for n in range(1, SEED_COUNT + 1):
        cid = str(n)
        customers[cid] = {
            "Id": cid,
            "SyncToken": "0",
            "DisplayName": f"Customer {n}",
            "CompanyName": f"Company {n} Ltd",
            "PrimaryEmailAddr": {"Address": f"customer{n}@example.com"},
            "Active": True,
            "Balance": float(n * 10),
            "domain": "QBO",
            "sparse": False,
            "MetaData": {"CreateTime": stamp, "LastUpdatedTime": stamp},
        }
        amount = float(n * 100)
        invoices[cid] = {
            "Id": cid,
            "SyncToken": "0",
            "DocNumber": f"{1000 + n}",
            "TxnDate": "2026-01-01",
            "CustomerRef": {"value": cid, "name": f"Customer {n}"},
            "Line": [
                {
                    "Id": "1",
                    "LineNum": 1,
                    "Amount": amount,
                    "DetailType": "SalesItemLineDetail",
                    "SalesItemLineDetail": {"ItemRef": {"value": "1", "name": "Services"}},
                }
            ],
            "TotalAmt": amount,
            "Balance": amount,
            "domain": "QBO",
            "sparse": False,
            "MetaData": {"CreateTime": stamp, "LastUpdatedTime": stamp},
        }
    realm.entities = {"Customer": customers, "Invoice": invoices, **_reference_data(stamp)}
    realm.next_id = {"Customer": SEED_COUNT + 1, "Invoice": SEED_COUNT + 1}
    for entity, rows in realm.entities.items():
        realm.changed[entity] = dict.fromkeys(rows, realm.connected_at)
    return realm


def _reference_data(stamp: str) -> dict[str, dict[str, JSONDict]]:
    """A few rarely-changing lists (chart of accounts, payment terms) to look up."""
    meta = {"CreateTime": stamp, "LastUpdatedTime": stamp}
    accounts = {
        str(n): {
            "Id": str(n),
            "SyncToken": "0",
            "Name": name,
            "AccountType": kind,
            "MetaData": meta,
        }
        for n, (name, kind) in enumerate(
            [
                ("Checking", "Bank"),
                ("Accounts Receivable", "Accounts Receivable"),
                ("Services", "Income"),
            ],
            start=1,
        )
    }
    terms = {
        str(n): {
            "Id": str(n),
            "SyncToken": "0",
            "Name": f"Net {days}",
            "DueDays": days,
            "MetaData": meta,
        }
        for n, days in enumerate([15, 30], start=1)
    }
    return {"Account": accounts, "Term": terms}


def company(realm_id: str) -> JSONDict:
    return {
        "Id": "1",
        "SyncToken": "0",
        "CompanyName": f"Sandbox Company {realm_id}",
        "LegalName": f"Sandbox Company {realm_id}",
        "Country": "US",
        "domain": "QBO",
        "sparse": False,
    }


def write(realm: Realm, entity: str, payload: Any, now: float) -> JSONDict:
    """Create (no Id) or update (Id + current SyncToken) one entity."""
    if not isinstance(payload, dict):
        raise FaultAnswer(400, fault_body("2500", "Invalid Request", "Expected an object", now))
    store = realm.entities[entity]
    stamp = iso(now)
    entity_id = payload.get("Id")
    if entity_id is None:
        new_id = str(realm.next_id[entity])
        realm.next_id[entity] += 1
        created: JSONDict = {
            **payload,
            "Id": new_id,
            "SyncToken": "0",
            "domain": "QBO",
            "sparse": False,
            "MetaData": {"CreateTime": stamp, "LastUpdatedTime": stamp},
        }
        store[new_id] = created
        realm.note_change(entity, new_id, now)
        return created
    current = _current(store, payload, now)
    base = dict(current) if payload.get("sparse") else {}
    updated: JSONDict = {
        **base,
        **payload,
        "Id": current["Id"],
        "SyncToken": str(int(current["SyncToken"]) + 1),
        "domain": "QBO",
        "sparse": False,
        "MetaData": {"CreateTime": current["MetaData"]["CreateTime"], "LastUpdatedTime": stamp},
    }
    store[current["Id"]] = updated
    realm.note_change(entity, current["Id"], now)
    return updated


def delete(realm: Realm, entity: str, payload: Any, now: float) -> JSONDict:
    """`operation=delete` (Id + current SyncToken): QBO deletes transactions, not name lists."""
    if entity not in DELETABLE:
        raise FaultAnswer(
            400,
            fault_body(
                "2500",
                "Invalid Request",
                f"Operation Delete is not supported for {entity}; make it inactive instead",
                now,
            ),
        )
    if not isinstance(payload, dict) or payload.get("Id") is None:
        raise FaultAnswer(400, fault_body("2500", "Invalid Request", "Expected Id", now))
    current = _current(realm.entities[entity], payload, now)
    del realm.entities[entity][current["Id"]]
    realm.note_change(entity, current["Id"], now, deleted=True)
    return {"status": "Deleted", "domain": "QBO", "Id": current["Id"]}


def _current(store: dict[str, JSONDict], payload: JSONDict, now: float) -> JSONDict:
    """The stored entity an update or delete names, if its SyncToken is the current one."""
    entity_id = payload.get("Id")
    current = store.get(str(entity_id))
    if current is None:
        raise not_found(now)
    if str(payload.get("SyncToken")) != current["SyncToken"]:
        raise FaultAnswer(
            400,
            fault_body(
                "5010",
                "Stale Object Error",
                f"Stale Object Error : You and root were working on this at the same time. "
                f"root finished before you did, so your work was not saved. "
                f"Id={entity_id} SyncToken={current['SyncToken']}",
                now,
            ),
        )
    return current
