"""Where shared state lives: one Redis for every replica, or this process (embedded).

`build_backends` is the one place that picks the implementation of each state
interface (token store, refresh locks, admission, cache, health history) for the mode the
settings ask for, so the composition root wires components without caring which it got.
In Redis mode each backend that must survive an outage is paired with its in-process fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qbo_gateway.admission.backend_memory import MemoryAdmission
from qbo_gateway.admission.backend_redis import RedisAdmission
from qbo_gateway.admission.fallback import FallbackAdmission
from qbo_gateway.admission.leases import LeasedAdmission
from qbo_gateway.admission.records import AdmissionBackend, AdmissionPolicy
from qbo_gateway.cache.backend_memory import MemoryCacheBackend
from qbo_gateway.cache.backend_redis import RedisCacheBackend
from qbo_gateway.cache.fallback import FallbackCache
from qbo_gateway.cache.records import CacheBackend
from qbo_gateway.cache.write_behind import QueueBounds, WriteBehindCache
from qbo_gateway.clock import Clock
from qbo_gateway.economy.backend_memory import MemoryMeterBackend
from qbo_gateway.economy.backend_redis import RedisMeterBackend
from qbo_gateway.economy.records import MeterBackend
from qbo_gateway.health.store_fallback import FallbackHealthStore
from qbo_gateway.health.store_memory import HealthStore, MemoryHealthStore
from qbo_gateway.health.store_redis import RedisHealthStore
from qbo_gateway.metrics import Metrics
from qbo_gateway.state.availability import BackendAvailability
from qbo_gateway.state.keys import RedisKeys
from qbo_gateway.state.locks import Locks, MemoryLocks, RedisLocks
from qbo_gateway.state.redis_client import RedisClient, connect_redis, ping
from qbo_gateway.state.topology import RedisTopology
from qbo_gateway.tokens.crypto import TokenCipher
from qbo_gateway.tokens.records import TokenStore
from qbo_gateway.tokens.store_redis import RedisTokenStore
from qbo_gateway.tokens.store_sqlite import SqliteTokenStore


@dataclass
class StateBackends:
    redis: RedisClient | None
    keys: RedisKeys
    availability: BackendAvailability
    tokens: TokenStore
    locks: Locks
    admission: AdmissionBackend
    cache: CacheBackend
    health: HealthStore
    meter: MeterBackend
    leases: LeasedAdmission | None = None  # Redis mode with leasing: its upkeep loop


def build_backends(
    *,
    topology: RedisTopology | None,
    prefix: str,
    state_dir: Path,
    replica_count: int,
    history_seconds: float,
    bucket_seconds: float = 60.0,
    cache_max_bytes: int,
    cache_max_entry_bytes: int,
    cipher: TokenCipher,
    policy: AdmissionPolicy,
    clock: Clock,
    script_clock: Clock | None,
    metrics: Metrics,
    lease_seconds: float = 0.0,
) -> StateBackends:
    """Each state backend for the mode. `script_clock` None: Redis scripts read Redis TIME."""
    keys = RedisKeys(prefix)
    if topology is None:
        return StateBackends(
            redis=None,
            keys=keys,
            availability=BackendAvailability(ping=None, metrics=metrics),
            tokens=SqliteTokenStore.in_dir(state_dir, cipher),
            locks=MemoryLocks(clock),
            admission=MemoryAdmission(policy, clock=clock),
            cache=MemoryCacheBackend(max_bytes=cache_max_bytes, clock=clock, metrics=metrics),
            health=MemoryHealthStore(
                history_seconds=history_seconds, bucket_seconds=bucket_seconds
            ),
            meter=MemoryMeterBackend(),
        )
    redis = connect_redis(topology)

    async def reachable() -> None:
        await ping(redis)

    availability = BackendAvailability(ping=reachable, metrics=metrics)
    # No lease may outlive an open circuit into its half-open probe.
    lease_seconds = min(lease_seconds, policy.recovery_seconds / 2)
    backends = StateBackends(
        redis=redis,
        keys=keys,
        availability=availability,
        tokens=RedisTokenStore(redis, keys, cipher),
        locks=RedisLocks(redis, keys),
        admission=FallbackAdmission(
            RedisAdmission(
                redis, policy, keys=keys, clock=script_clock, lease_seconds=lease_seconds
            ),
            MemoryAdmission(policy.shared_out(replica_count), clock=clock),
            availability=availability,
        ),
        # Stores go out after the reply, in batches; a lookup sees what is still queued.
        cache=WriteBehindCache(
            FallbackCache(
                RedisCacheBackend(redis, keys),
                MemoryCacheBackend(max_bytes=cache_max_bytes, clock=clock, metrics=metrics),
                availability=availability,
            ),
            clock=clock,
            metrics=metrics,
            bounds=QueueBounds(max_bytes=max(QueueBounds.max_bytes, 4 * cache_max_entry_bytes)),
        ),
        health=FallbackHealthStore(
            RedisHealthStore(
                redis, history_seconds=history_seconds, keys=keys, bucket_seconds=bucket_seconds
            ),
            MemoryHealthStore(history_seconds=history_seconds, bucket_seconds=bucket_seconds),
            availability=availability,
        ),
        # No in-process fallback: while Redis is down the meter keeps its counts pending.
        meter=RedisMeterBackend(redis, keys),
    )
    shared = backends.admission
    if lease_seconds > 0 and isinstance(shared, FallbackAdmission):
        backends.leases = backends.admission = LeasedAdmission(
            shared, policy, clock=clock, lease_seconds=lease_seconds, metrics=metrics
        )
    return backends
