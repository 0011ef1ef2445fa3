"""Which Redis the gateway talks to: one server, a Sentinel-managed master, or a cluster.

`RedisTopology` is what the `QBO_REDIS_*` settings describe; `check_topology` refuses a
combination that cannot work (each message names the setting at fault) so the daemon and
`check-config` stop before contacting anyone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

RedisMode = Literal["standalone", "sentinel", "cluster"]


@dataclass(frozen=True)
class RedisTopology:
    mode: RedisMode = "standalone"
    # standalone: the server; cluster: any node; sentinel: optional, only for the
    # master's user, password, database and TLS.
    url: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str = "mymaster"
    ca_file: str | None = None

    @property
    def tls(self) -> bool:
        return urlsplit(self.url or "").scheme == "rediss"


def parse_sentinels(value: str) -> tuple[tuple[str, int], ...]:
    """`host:port,host:port` -> pairs; ValueError says which item is wrong."""
    out: list[tuple[str, int]] = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{item!r} is not host:port")
        out.append((host.strip("[]"), int(port)))
    if not out:
        raise ValueError("no sentinel given (host:port,host:port,...)")
    return tuple(out)


def check_topology(
    *, mode: RedisMode, url: str | None, sentinels: str | None, ca_file: Path | None
) -> None:
    """Raise ValueError naming the setting when the Redis settings cannot work together."""
    scheme = urlsplit(url).scheme if url else ""
    if mode == "sentinel":
        if not sentinels:
            raise ValueError("QBO_REDIS_SENTINELS is required when QBO_REDIS_MODE=sentinel")
        if scheme == "unix":
            raise ValueError("QBO_REDIS_URL cannot be unix:// when QBO_REDIS_MODE=sentinel")
    elif sentinels:
        raise ValueError(
            f"QBO_REDIS_SENTINELS is set but QBO_REDIS_MODE={mode}: "
            "set QBO_REDIS_MODE=sentinel or unset QBO_REDIS_SENTINELS"
        )
    if mode == "cluster":
        if not url or scheme == "unix":
            raise ValueError(
                "QBO_REDIS_URL (redis:// or rediss:// of any cluster node) is required "
                "when QBO_REDIS_MODE=cluster"
            )
        if urlsplit(url).path.strip("/") not in ("", "0"):
            raise ValueError("QBO_REDIS_URL: Redis Cluster has database 0 only")
    if ca_file is not None and scheme != "rediss":
        raise ValueError("QBO_REDIS_CA_FILE is set but QBO_REDIS_URL is not a rediss:// URL")
