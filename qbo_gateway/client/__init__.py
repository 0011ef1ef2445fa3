"""The service client: what an internal service imports to call QBO through the gateway.

It stands alone (aiohttp and the standard library only), so a service can vendor it.
`gateway_client` holds the async client, `sync` its blocking twin, `answers` how an answer
is read, `errors` one exception class per way a call can fail.
"""

from qbo_gateway.client.errors import *  # noqa: F403 - the exception classes are the API
from qbo_gateway.client.errors import __all__ as _error_names
from qbo_gateway.client.gateway_client import *  # noqa: F403 - re-exports the client's API
from qbo_gateway.client.gateway_client import __all__ as _client_names
from qbo_gateway.client.sync import QBOGatewaySyncClient

__all__ = [*_error_names, *_client_names, "QBOGatewaySyncClient"]
