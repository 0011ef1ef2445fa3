"""The Accounting API endpoints: companyinfo, query, entity reads and writes, batch, cdc.

Once `api.py` has let a request through, this decides what QBO would answer: reads from the
realm's data, writes with QBO's `requestid` idempotency (a repeated id replays the first
answer), deletes (`?operation=delete`), batches of up to 30 items, change data capture
(`cdc.py`), and for any other path with a body its size and sha256 so large-payload tests
can check what arrived.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from aiohttp import web

from qbo_gateway.simulator.answers import FaultAnswer, fault_body, iso, json_answer, not_found
from qbo_gateway.simulator.cdc import change_data_capture
from qbo_gateway.simulator.data import Realm, company, delete, write
from qbo_gateway.simulator.query import run_query
from qbo_gateway.simulator.records import JSONDict, RecordedRequest
from qbo_gateway.simulator.reports import report

BATCH_MAX_ITEMS = 30
ENTITY_PATHS = {"customer": "Customer", "invoice": "Invoice"}


async def dispatch(
    request: web.Request, recorded: RecordedRequest, realm: Realm, tail: str, now: float
) -> web.StreamResponse:
    realm_id = realm.realm_id
    parts = tail.split("/")
    method = request.method
    try:
        if parts[0] == "companyinfo" and len(parts) == 2 and method == "GET":
            if parts[1] != realm_id:
                raise not_found(now)
            return json_answer(200, {"CompanyInfo": company(realm_id), "time": iso(now)})
        if parts == ["query"] and method in ("GET", "POST"):
            text = (
                request.query.get("query", "")
                if method == "GET"
                else recorded.body.decode("utf-8", "replace")
            )
            return json_answer(
                200, {"QueryResponse": run_query(realm, text, now), "time": iso(now)}
            )
        if parts[0] in ENTITY_PATHS and len(parts) == 2 and method == "GET":
            found = realm.entities[ENTITY_PATHS[parts[0]]].get(parts[1])
            if found is None:
                raise not_found(now)
            return json_answer(200, {ENTITY_PATHS[parts[0]]: found, "time": iso(now)})
        if parts[0] == "reports" and len(parts) == 2 and method == "GET":
            return await report(request, parts[1], now)
        if parts[0] == "cdc" and method == "GET":
            return json_answer(200, change_data_capture(realm, dict(request.query), now))
        writes = len(parts) == 1 and method == "POST"
        if writes and (parts[0] in ENTITY_PATHS or parts[0] == "batch"):
            return _idempotent(realm, request, recorded.body, parts[0], now)
    except FaultAnswer as answer:
        return json_answer(answer.status, answer.body)
    if recorded.body:
        return json_answer(
            200,
            {
                "received_bytes": len(recorded.body),
                "sha256": hashlib.sha256(recorded.body).hexdigest(),
            },
        )
    return json_answer(
        400,
        fault_body("4000", "Unsupported Operation", f"No handler for {method} {tail}", now),
    )


def _idempotent(
    realm: Realm, request: web.Request, body: bytes, what: str, now: float
) -> web.Response:
    request_id = request.query.get("requestid")
    if request_id is not None and request_id in realm.idempotent:
        status, raw = realm.idempotent[request_id]
        return web.Response(status=status, body=raw, content_type="application/json")
    try:
        payload = json.loads(body or b"null")
        if what == "batch":
            status, answer = 200, _batch(realm, payload, now)
        else:
            entity = ENTITY_PATHS[what]
            deleting = request.query.get("operation", "").lower() == "delete"
            change = delete if deleting else write
            status, answer = 200, {entity: change(realm, entity, payload, now)}
    except FaultAnswer as fault:
        status, answer = fault.status, fault.body
    except ValueError:
        status = 400
        answer = fault_body("2500", "Invalid Request", "Request body is not JSON", now)
    answer["time"] = iso(now)
    raw = json.dumps(answer).encode()
    if request_id is not None:
        realm.idempotent[request_id] = (status, raw)
    return web.Response(status=status, body=raw, content_type="application/json")


def _batch(realm: Realm, payload: Any, now: float) -> JSONDict:
    items = payload.get("BatchItemRequest") if isinstance(payload, dict) else None
    if not isinstance(items, list):
        raise FaultAnswer(400, fault_body("2500", "Invalid Request", "No items", now))
    if len(items) > BATCH_MAX_ITEMS:
        raise FaultAnswer(
            400,
            fault_body(
                "6000",
                "A business validation error has occurred while processing your request",
                f"Number of items in a batch exceeds the limit of {BATCH_MAX_ITEMS}",
                now,
            ),
        )
    answers: list[JSONDict] = []
    for item in items:
        item = item if isinstance(item, dict) else {}
        answer: JSONDict = {"bId": item.get("bId")}
        try:
            if "Query" in item:
                answer["QueryResponse"] = run_query(realm, str(item["Query"]), now)
            else:
                entity = next((e for e in ("Customer", "Invoice") if e in item), None)
                operation = item.get("operation", "create")
                if entity is None or operation not in ("create", "update", "delete"):
                    raise FaultAnswer(
                        400, fault_body("2500", "Invalid Request", "Unsupported item", now)
                    )
                data = dict(item[entity])
                if operation == "create":
                    data.pop("Id", None)
                change = delete if operation == "delete" else write
                answer[entity] = change(realm, entity, data, now)
        except FaultAnswer as fault:
            answer["Fault"] = fault.body["Fault"]
        answers.append(answer)
    return {"BatchItemResponse": answers}
