"""Change data capture: `GET .../cdc?entities=A,B&changedSince=ISO`, as QBO answers it.

A client that caches entities asks QBO once what changed since a time instead of reading
each entity again. QBO answers, per entity asked, the objects created or updated since
then (whole, as a read would return them) and the deleted ones (`status: "Deleted"`, only
`Id` and `MetaData`), looking back at most 30 days and returning at most 1000 objects in
all; a client that gets 1000 cannot know what was left out.
"""

from __future__ import annotations

from datetime import datetime

from qbo_gateway.simulator.answers import FaultAnswer, fault_body, iso
from qbo_gateway.simulator.data import Realm
from qbo_gateway.simulator.records import JSONDict

CDC_MAX_OBJECTS = 1000
CDC_MAX_DAYS = 30


def change_data_capture(realm: Realm, query: dict[str, str], now: float) -> JSONDict:
    """The `CDCResponse` body for a realm; raises `FaultAnswer` for a request QBO refuses."""
    names = [n.strip() for n in query.get("entities", "").split(",") if n.strip()]
    canonical = {name.lower(): name for name in realm.entities}
    unknown = [n for n in names if n.lower() not in canonical]
    if not names or unknown:
        raise _invalid(f"entities: unsupported or missing {', '.join(unknown) or 'list'}", now)
    since = _since(query.get("changedSince", ""), now)
    if since < now - CDC_MAX_DAYS * 86400.0:
        raise _invalid(f"changedSince must be within the last {CDC_MAX_DAYS} days", now)
    left = CDC_MAX_OBJECTS
    answers: list[JSONDict] = []
    for name in names:
        entity = canonical[name.lower()]
        found = _changes(realm, entity, since)[:left]
        left -= len(found)
        answers.append(
            {entity: found, "startPosition": 1, "maxResults": len(found), "totalCount": len(found)}
            if found
            else {}
        )
    return {"CDCResponse": [{"QueryResponse": answers}], "time": iso(now)}


def _changes(realm: Realm, entity: str, since: float) -> list[JSONDict]:
    """Objects changed at or after `since`, oldest change first."""
    rows = realm.entities.get(entity, {})
    stamped: list[tuple[float, JSONDict]] = [
        (at, rows[entity_id])
        for entity_id, at in realm.changed.get(entity, {}).items()
        if at >= since and entity_id in rows
    ]
    stamped += [
        (
            at,
            {
                "domain": "QBO",
                "status": "Deleted",
                "Id": entity_id,
                "MetaData": {"LastUpdatedTime": iso(at)},
            },
        )
        for entity_id, at in realm.deleted.get(entity, {}).items()
        if at >= since
    ]
    stamped.sort(key=lambda pair: pair[0])
    return [row for _, row in stamped]


def _since(text: str, now: float) -> float:
    try:
        parsed = datetime.fromisoformat(text.strip().replace(" ", "+"))
    except ValueError:
        raise _invalid("changedSince is not an ISO 8601 date-time", now) from None
    if parsed.tzinfo is None:
        raise _invalid("changedSince needs a time zone offset", now)
    return parsed.timestamp()


def _invalid(detail: str, now: float) -> FaultAnswer:
    return FaultAnswer(400, fault_body("2500", "Invalid Request", detail, now))
