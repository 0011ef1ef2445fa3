"""Two QBO SDKs that no one here wrote, driven unchanged against a gateway.

python-quickbooks (a dev dependency) runs in a worker thread of the test's process;
node-quickbooks (pinned in tests/sdk/package.json, installed by `make sdk-deps`) runs as a
`node` subprocess fed a JSON plan. Both take the same plan of steps and give the same shape
of result per step, so one test body drives either:

    {"op": ..., "ok": True, "body": <what the SDK returned>}
    {"op": ..., "ok": False, "error": <the SDK's exception class>, "code": "<fault code>", ...}

Each SDK is only pointed at the gateway (its base URL) and given the caller key as its OAuth
access token, exactly as the README tells a service to do.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any, Protocol

from quickbooks import QuickBooks
from quickbooks.batch import batch_create
from quickbooks.exceptions import QuickbooksException
from quickbooks.objects.company_info import CompanyInfo
from quickbooks.objects.customer import Customer
from requests_oauthlib import OAuth2Session

SDK_DIR = Path(__file__).resolve().parent / "sdk"
NODE_SCRIPT = SDK_DIR / "node_sdk.js"
NODE_PACKAGE = SDK_DIR / "node_modules" / "node-quickbooks" / "package.json"
NODE_VERSION = "2.0.50"

Step = dict[str, Any]
Result = dict[str, Any]


class SDK(Protocol):
    name: str

    async def run(self, gateway: str, realm: str, key: str, steps: list[Step]) -> list[Result]:
        """Run the steps in order with one SDK client; one result per step."""
        ...


def _as_dict(obj: Any) -> Any:
    return json.loads(obj.to_json())


class PythonQuickBooks:
    name = "python-quickbooks"

    async def run(self, gateway: str, realm: str, key: str, steps: list[Step]) -> list[Result]:
        return await asyncio.to_thread(self._run, gateway, realm, key, steps)

    def _run(self, gateway: str, realm: str, key: str, steps: list[Step]) -> list[Result]:
        # The gateway speaks plain HTTP on loopback; oauthlib refuses http:// unless told so.
        os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"
        qb = QuickBooks(company_id=realm, minorversion=75)
        qb.api_url_v3 = qb.sandbox_api_url_v3 = f"{gateway}/v3"
        qb.session = OAuth2Session(token={"access_token": key, "token_type": "Bearer"})
        results: list[Result] = []
        for step in steps:
            try:
                body = self._step(qb, realm, step)
            except QuickbooksException as exc:
                results.append(
                    {
                        "op": step["op"],
                        "ok": False,
                        "error": type(exc).__name__,
                        "code": str(exc.error_code),
                        "message": exc.message,
                    }
                )
            else:
                results.append({"op": step["op"], "ok": True, "body": body})
        return results

    @staticmethod
    def _step(qb: QuickBooks, realm: str, step: Step) -> Any:
        op = step["op"]
        if op == "companyInfo":
            return _as_dict(CompanyInfo.get(realm, qb=qb))
        if op == "getCustomer":
            return _as_dict(Customer.get(step["id"], qb=qb))
        if op == "findCustomersAll":
            rows: list[Any] = []
            while True:  # the SDK pages by STARTPOSITION/MAXRESULTS; the caller loops
                page = Customer.all(start_position=len(rows) + 1, max_results=step["limit"], qb=qb)
                rows.extend(_as_dict(c) for c in page)
                if len(page) < step["limit"]:
                    return {"QueryResponse": {"Customer": rows}}
        if op == "countCustomers":
            return {"QueryResponse": {"totalCount": Customer.count(qb=qb)}}
        customer = Customer()
        if op == "createCustomer":
            customer.DisplayName = step["name"]
            return _as_dict(customer.save(qb=qb))
        if op == "sparseUpdateCustomer":
            customer.Id, customer.SyncToken = step["id"], step["syncToken"]
            customer.sparse = True
            customer.DisplayName = step["name"]
            return _as_dict(customer.save(qb=qb))
        if op == "batchCreateCustomers":
            made = [Customer() for _ in step["names"]]
            for c, name in zip(made, step["names"], strict=True):
                c.DisplayName = name
            answer = batch_create(made, qb=qb)
            return {
                "successes": [_as_dict(c) for c in answer.successes],
                "faults": len(answer.faults),
            }
        raise ValueError(f"unknown step {op}")


class NodeQuickBooks:
    name = "node-quickbooks"

    async def run(self, gateway: str, realm: str, key: str, steps: list[Step]) -> list[Result]:
        node = shutil.which("node")
        assert node is not None, "node is not installed (.ci/run installs nodejs)"
        installed = json.loads(NODE_PACKAGE.read_text()) if NODE_PACKAGE.exists() else {}
        assert installed.get("version") == NODE_VERSION, (
            f"node-quickbooks {NODE_VERSION} is not installed in {SDK_DIR}: run `make sdk-deps`"
        )
        plan = json.dumps({"gateway": gateway, "realm": realm, "key": key, "steps": steps})
        proc = await asyncio.create_subprocess_exec(
            node,
            str(NODE_SCRIPT),
            cwd=SDK_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(plan.encode()), 60)
        assert proc.returncode == 0, err.decode()
        return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


SDKS: dict[str, SDK] = {"python": PythonQuickBooks(), "node": NodeQuickBooks()}
