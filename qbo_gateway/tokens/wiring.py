"""The token subsystem's builders: its cipher and its manager, from settings.

The daemon and the `tokens` subcommands open the same store with the same keys, so both
build the cipher here: the configured keys, or (embedded mode only) the generated key file.
"""

from __future__ import annotations

from qbo_gateway.clock import Clock
from qbo_gateway.metrics import Metrics
from qbo_gateway.oauth.intuit import OAuthClient
from qbo_gateway.observe import Observer
from qbo_gateway.settings import Settings, secret_text
from qbo_gateway.state.availability import BackendAvailability
from qbo_gateway.state.locks import Locks
from qbo_gateway.tokens.crypto import InvalidKeys, TokenCipher, load_or_create_key_file
from qbo_gateway.tokens.manager import TokenManager
from qbo_gateway.tokens.records import TokenStore
from qbo_gateway.tokens.spill import SpillFile


def token_keys(settings: Settings) -> str:
    keys = secret_text(settings.token_keys)
    if keys:
        return keys
    if not settings.embedded:
        # Every replica must decrypt what another stored: a per-pod generated key cannot.
        raise InvalidKeys("QBO_TOKEN_KEYS is required with QBO_REDIS_URL")
    return load_or_create_key_file(settings.state_dir)


def token_cipher(settings: Settings) -> TokenCipher:
    return TokenCipher(token_keys(settings))


def build_token_manager(
    settings: Settings,
    *,
    store: TokenStore,
    locks: Locks,
    availability: BackendAvailability,
    oauth: OAuthClient,
    clock: Clock,
    metrics: Metrics,
    observer: Observer,
) -> TokenManager:
    return TokenManager(
        store=store,
        locks=locks,
        oauth=oauth,
        clock=clock,
        metrics=metrics,
        observer=observer,
        margin=settings.refresh_margin_seconds,
        token_timeout=settings.token_timeout_seconds,
        availability=availability,
        spill=SpillFile.in_dir(settings.state_dir, token_cipher(settings)),
    )
