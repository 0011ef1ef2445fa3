"""Proof that an access token belongs to a realm: it can read that realm's companyinfo.

The OAuth callback names its realm in the `realmId` query parameter, which whoever
completes a consent can edit, and Intuit's token answer does not name the realm at all.
Storing tokens under the claimed realm on trust would let anyone who can finish a consent
(for any company) overwrite another realm's live tokens and sever it. The one proof is to
use the new access token: QuickBooks answers `companyinfo` of a realm only to a token
granted for that realm.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import structlog

log = structlog.get_logger(__name__)


class CompanyCheckFailed(Exception):
    """QuickBooks could not be asked (unreachable, timed out): nothing is proven."""


class CompanyCheck:
    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        api_base: str,
        minor_version: str | int,
        timeout: float = 15.0,
    ) -> None:
        self._session = session
        self._api_base = api_base.rstrip("/")
        self._minor_version = str(minor_version)
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def owns(self, access_token: str, realm_id: str) -> bool:
        """Whether `access_token` reads realm `realm_id`'s company."""
        url = f"{self._api_base}/v3/company/{realm_id}/companyinfo/{realm_id}"
        headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/json"}
        try:
            async with self._session.get(
                url,
                headers=headers,
                params={"minorversion": self._minor_version},
                timeout=self._timeout,
            ) as resp:
                if resp.status in (401, 403):
                    return False
                if resp.status != 200:
                    raise CompanyCheckFailed(f"companyinfo answered {resp.status}")
                body: Any = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise CompanyCheckFailed(
                f"companyinfo could not be read: {type(exc).__name__}"
            ) from exc
        # QuickBooks answers only for the realm in the path; the entity's own Id is "1".
        return isinstance(body, dict) and isinstance(body.get("CompanyInfo"), dict)
