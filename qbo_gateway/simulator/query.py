"""The small subset of the QBO query language the simulator understands.

`select * | count(*) from <Entity> [where <field> = '<value>'] [orderby ...]
[startposition N] [maxresults N]` is what the gateway's clients send; anything else is answered
with QBO's parser fault, so a client relying on more finds out against the simulator too.
"""

from __future__ import annotations

import re

from qbo_gateway.simulator.answers import FaultAnswer, fault_body
from qbo_gateway.simulator.data import Realm
from qbo_gateway.simulator.records import JSONDict

QUERY_DEFAULT_MAX = 100
QUERY_MAX = 1000
QUERY_RE = re.compile(
    r"^\s*select\s+(?P<what>\*|count\(\*\))\s+from\s+(?P<entity>\w+)"
    r"(?:\s+where\s+(?P<field>\w+)\s*=\s*'(?P<value>[^']*)')?"
    r"(?:\s+orderby\s+\w+(?:\s+(?:asc|desc))?)?"
    r"(?:\s+startposition\s+(?P<start>\d+))?"
    r"(?:\s+maxresults\s+(?P<max>\d+))?\s*;?\s*$",
    re.IGNORECASE,
)


def run_query(realm: Realm, text: str, now: float) -> JSONDict:
    match = QUERY_RE.match(text)
    canonical = {name.lower(): name for name in realm.entities}
    if match is None or match["entity"].lower() not in canonical:
        raise FaultAnswer(
            400,
            fault_body(
                "4000",
                "Error parsing query",
                f"QueryParserError: Encountered unsupported query: {text[:200]}",
                now,
            ),
        )
    entity = canonical[match["entity"].lower()]
    rows = list(realm.entities[entity].values())
    if match["field"]:
        wanted_field = match["field"].lower()
        rows = [
            row
            for row in rows
            if any(k.lower() == wanted_field and str(v) == match["value"] for k, v in row.items())
        ]
    if match["what"] != "*":
        return {"totalCount": len(rows)}
    start = max(1, int(match["start"] or 1))
    limit = min(QUERY_MAX, int(match["max"] or QUERY_DEFAULT_MAX))
    page = rows[start - 1 : start - 1 + limit]
    if not page:
        return {}
    return {entity: page, "startPosition": start, "maxResults": len(page), "totalCount": len(rows)}
