"""A stand-in for Intuit: OAuth endpoints, the Accounting API and fault injection.

Tests, the demo and benchmarks need a QuickBooks Online that answers over real sockets, can be
told to misbehave in every way the real one does (throttles, 5xx with HTML bodies, faults
inside a 200, dropped connections, dead refresh tokens) and counts what it received. It is
built from Intuit's documented behaviour, never from gateway code: it imports only
aiohttp and the standard library, so it cannot agree with the gateway by sharing a mistake.
No module of this package may import anything from qbo_gateway outside qbo_gateway.simulator.

Routes: `POST /oauth2/v1/tokens/bearer`, `GET /connect/oauth2`, `POST /v2/oauth2/tokens/revoke`,
`/v3/company/{realmId}/...` (companyinfo, query, customer, invoice, batch, reports, cdc; any
other path with a body answers its size and sha256), and control routes under `/_sim/`:
`POST realms` {"realm_id"}, `POST realms/{realm}/expire-access`, `POST faults` (a FaultRule),
`DELETE faults`, `POST latency` {"api", "token"}, `POST limits` {"concurrency",
"per_minute"}, `GET stats`, `POST reset` (stats and faults).

Access tokens stay valid until they expire even after a refresh (as at Intuit); refresh
tokens rotate strictly: each use or re-issue kills the previous one at once.

Modules: `core` (the `Simulator` state, its Python control API, `make_app`), `oauth` (token,
authorize, revoke), `api` (the Accounting API's front door: counting, limits, faults, bearer),
`accounting` (the endpoints), `query` (the query language), `reports`, `cdc` (change data
capture), `data` (seeded realm data, writes, deletes and when each happened), `faults`
(fault rules), `injected` (how a fault rule is answered), `answers` (Intuit-shaped bodies),
`control` (`/_sim/` routes), `records`, `server` (`run`).
"""

from qbo_gateway.simulator.core import SIM_CLIENT_ID, SIM_CLIENT_SECRET, SIMULATOR_KEY, Simulator
from qbo_gateway.simulator.faults import API_FAULT_KINDS, TOKEN_FAULT_KINDS, FaultRule
from qbo_gateway.simulator.records import RecordedRequest, TokenPair
from qbo_gateway.simulator.server import DEFAULT_REALM_ID, run

__all__ = [
    "API_FAULT_KINDS",
    "DEFAULT_REALM_ID",
    "SIMULATOR_KEY",
    "SIM_CLIENT_ID",
    "SIM_CLIENT_SECRET",
    "TOKEN_FAULT_KINDS",
    "FaultRule",
    "RecordedRequest",
    "Simulator",
    "TokenPair",
    "run",
]
