"""The service client: what an internal service imports to call QBO through the gateway.

It stands alone (aiohttp and the standard library only), so a service can vendor it.
"""

from qbo_gateway.client.gateway_client import *  # noqa: F403 - re-exports the client's API
from qbo_gateway.client.gateway_client import __all__ as _client_all
from qbo_gateway.client.sync import QBOGatewaySyncClient

__all__ = [*_client_all, "QBOGatewaySyncClient"]
