"""Every Redis key name, in one place.

All keys of one realm share the hash tag `{qbo:<realm>}` so one Lua script can touch
them together in Redis Cluster. `prefix` lets tests (and several gateways) share a server.
"""

from __future__ import annotations


class RedisKeys:
    def __init__(self, prefix: str = "qbogw") -> None:
        self.prefix = prefix

    def realm_key(self, realm_id: str, what: str) -> str:
        return f"{self.prefix}:{{qbo:{realm_id}}}:{what}"

    # tokens
    def token(self, realm_id: str) -> str:
        return self.realm_key(realm_id, "token")

    def token_sync(self) -> str:
        # Written after a token write so WAIT can confirm replicas have everything before it.
        return f"{self.prefix}:token-sync"

    def token_index(self) -> str:
        return f"{self.prefix}:token-index"

    def lock(self, name: str) -> str:
        # Lock names are "<kind>:<realm>"; keep the realm's hash tag when there is one.
        kind, _, realm_id = name.partition(":")
        if realm_id:
            return self.realm_key(realm_id, f"lock:{kind}")
        return f"{self.prefix}:lock:{kind}"

    # admission
    def breaker(self, realm_id: str) -> str:
        return self.realm_key(realm_id, "breaker")

    def rate(self, realm_id: str) -> str:
        return self.realm_key(realm_id, "rate")

    def batch(self, realm_id: str) -> str:
        return self.realm_key(realm_id, "batch")

    def inflight(self, realm_id: str) -> str:
        return self.realm_key(realm_id, "inflight")

    def cooldown(self, realm_id: str) -> str:
        return self.realm_key(realm_id, "cooldown")

    def leasers(self, realm_id: str) -> str:
        return self.realm_key(realm_id, "leasers")

    # cache
    def cache_entry(self, realm_id: str, key_hash: str) -> str:
        return self.realm_key(realm_id, f"cache:{key_hash}")

    def cache_fresh_epoch(self, realm_id: str) -> str:
        return self.realm_key(realm_id, "cache-epoch")

    # health
    def health_history(self, realm_id: str) -> str:
        return self.realm_key(realm_id, "history")

    def health_bucket(self, realm_id: str, bucket: int) -> str:
        return self.realm_key(realm_id, f"hb:{bucket}")

    def fleet_bucket(self, bucket: int) -> str:
        # The fleet's buckets share one hash tag of their own: a dashboard reads a day of
        # them in one pipeline to one node, and no command mixes them with a realm's keys.
        return f"{self.prefix}:{{qbo-fleet}}:hb:{bucket}"

    def alerts(self) -> str:
        return f"{self.prefix}:alerts"

    def monitor_lease(self, realm_id: str) -> str:
        return self.realm_key(realm_id, "monitor-lease")

    # read economy: one hash per calendar month, its own hash tag (one Cluster slot)
    def coreplus_month(self, month: str) -> str:
        return f"{self.prefix}:{{qbo-economy}}:coreplus:{month}"

    # oauth connect flow
    def oauth_state(self, state: str) -> str:
        return f"{self.prefix}:oauth-state:{state}"
