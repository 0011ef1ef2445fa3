"""Intuit OAuth: the token endpoint client (`intuit`: refresh, code exchange, revoke, PKCE)
and the authorization-code flow that connects a new realm (`connect`); `wiring` builds both
from settings."""
