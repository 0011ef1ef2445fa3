"""`qbo-gateway tokens link`: a connect link from the running gateway, on the command line.

The link's state must live where the callback will look for it (the daemon's memory in
embedded mode, Redis otherwise), so this command does not make the link itself: it asks the
local gateway's ops listener (`POST /admin/realms[/{realmId}]/connect-link`) with
QBO_ADMIN_TOKEN, exactly as a service would, and prints the URL to send to the person.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

import aiohttp

from qbo_gateway.settings import Settings


def local_ops_url(settings: Settings) -> str:
    host = settings.ops_host
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - a wildcard bind is reached on loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.ops_port}"


async def tokens_link(
    settings: Settings,
    *,
    realm_id: str | None = None,
    return_to: str | None = None,
    ops_url: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    admin = settings.admin_token.get_secret_value() if settings.admin_token else ""
    if not admin:
        print("qbo-gateway: QBO_ADMIN_TOKEN is not set: connect links are admin actions", file=err)
        return 2
    if realm_id is not None and not realm_id.isdigit():
        print("qbo-gateway: --realm must be digits only", file=err)
        return 2
    base = (ops_url or local_ops_url(settings)).rstrip("/")
    path = f"/admin/realms/{realm_id}/connect-link" if realm_id else "/admin/realms/connect-link"
    body = {"return_to": return_to} if return_to else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.post(
                base + path, json=body, headers={"Authorization": f"Bearer {admin}"}
            ) as response,
        ):
            text = await response.text()
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(
            f"qbo-gateway: the gateway's ops listener at {base} is not answering: {exc}", file=err
        )
        return 1
    if status != 200:
        print(f"qbo-gateway: the gateway refused (HTTP {status}): {_detail(text)}", file=err)
        return 1
    print(json.loads(text)["url"], file=out)
    return 0


def _detail(text: str) -> str:
    try:
        error = json.loads(text)["Fault"]["Error"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return text[:200]
    return str(error.get("Detail") or error.get("Message"))
