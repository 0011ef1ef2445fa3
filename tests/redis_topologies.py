"""Real Redis topologies for tests, started from the redis-server binary on free ports.

- `RedisClusterSet`: 3 masters + 3 replicas joined by `redis-cli --cluster create`.
- `SentinelSet`: a master, its replica and 3 sentinels (`redis-server --sentinel`).
- a TLS server with a CA made here (`tls_server`) and an ACL user instead of `default`.

Failover timings are short (1 s node timeout / down-after) so a failover test takes
seconds; each set can kill its master and wait until a replica has taken over.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass

import pytest
import redis as sync_redis

from qbo_gateway.state.redis_client import RedisClient, connect_redis
from qbo_gateway.state.topology import RedisTopology
from tests.redis_server import RedisServer, free_port
from tests.tls_files import TlsFiles

# Every shared-state behaviour suite runs on each of these (ids as they appear in test names).
REDIS_TARGETS = ("redis", "redis-sentinel", "redis-cluster", "redis-tls")
NODE_TIMEOUT_MS = 1000
ACL_USER, ACL_PASSWORD = "gateway", "acl-pass-0123456789"


def _wait(what: str, check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except (sync_redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(0.05)  # waiting on another process, not on test time
    raise RuntimeError(f"timed out waiting for {what} ({last!r})")


@dataclass
class Target:
    """One topology as the gateway sees it: the settings and a client factory."""

    name: str
    topology: RedisTopology

    def client(self) -> RedisClient:
        return connect_redis(self.topology)


class RedisClusterSet:
    def __init__(self) -> None:
        self.nodes = [
            RedisServer(
                extra=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    # The bus port defaults to port + 10000, which may not exist.
                    "--cluster-port",
                    str(free_port()),
                    "--cluster-node-timeout",
                    str(NODE_TIMEOUT_MS),
                    # A shard without its master must not stop the others answering.
                    "--cluster-require-full-coverage",
                    "no",
                ]
            )
            for _ in range(6)
        ]

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli") or "redis-cli"
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        _wait("cluster_state:ok", self._all_ok)
        _wait("a replica for every master", self._replicated)

    def _replicated(self) -> bool:
        slots = sync_redis.Redis(port=self.nodes[0].port, socket_timeout=1).cluster("slots")
        return all(len(entry) >= 4 for entry in slots)

    def _all_ok(self) -> bool:
        for node in self.nodes:
            if node.proc is None:
                continue
            info = sync_redis.Redis(port=node.port, socket_timeout=1).cluster("info")
            if info.get("cluster_state") != "ok":
                return False
        return True

    @property
    def target(self) -> Target:
        url = f"redis://127.0.0.1:{self.nodes[0].port}/0"
        return Target("cluster", RedisTopology(mode="cluster", url=url))

    def master_of(self, key: str) -> RedisServer:
        """The node serving `key`'s slot right now."""
        any_up = next(n for n in self.nodes if n.proc is not None)
        client = sync_redis.Redis(port=any_up.port, socket_timeout=1)
        slot = int(client.cluster("keyslot", key))
        for start, end, master, *_ in client.cluster("slots"):
            if int(start) <= slot <= int(end):
                port = int(master[1])
                return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"no node serves slot {slot}")

    def replica_of(self, key: str) -> RedisServer:
        """A replica of the node serving `key`."""
        master = self.master_of(key)
        info = sync_redis.Redis(port=master.port, socket_timeout=1).info("replication")
        port = int(info["slave0"]["port"])
        return next(n for n in self.nodes if n.port == port)

    def wait_promoted(self, key: str, dead: RedisServer) -> RedisServer:
        """Block until another node serves `key` and the cluster says ok again."""
        _wait("a replica promoted", lambda: self.master_of(key) is not dead)
        _wait("cluster_state:ok", self._all_ok)
        return self.master_of(key)

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


def _answers(proc: subprocess.Popen[bytes], port: int) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"redis-server exited (port {port} taken?)")
    return bool(sync_redis.Redis(port=port, socket_timeout=0.5).ping())


class SentinelSet:
    MASTER = "mymaster"

    def __init__(self) -> None:
        self.master = RedisServer()
        self.replica = RedisServer(extra=["--replicaof", "127.0.0.1", str(self.master.port)])
        self.sentinel_ports: list[int] = []
        self.sentinels: list[subprocess.Popen[bytes]] = []
        self.dir = self.master.dir

    def start(self) -> None:
        self.master.start()
        self.replica.start()
        self.sentinel_ports = [self._start_sentinel() for _ in range(3)]
        _wait("sentinels that know each other and the replica", self._ready)

    def _start_sentinel(self) -> int:
        """Start one sentinel on a free port; another port if that one was taken meanwhile."""
        exe = shutil.which("redis-server") or "redis-server"
        for _ in range(5):
            port = free_port()
            conf = self.dir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {self.MASTER} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.MASTER} {NODE_TIMEOUT_MS}\n"
                f"sentinel failover-timeout {self.MASTER} 5000\n"
                f"sentinel parallel-syncs {self.MASTER} 1\n"
            )
            proc = subprocess.Popen(
                [exe, str(conf), "--sentinel", "--logfile", str(self.dir / f"s{port}.log")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.sentinels.append(proc)
            try:
                _wait(f"sentinel on {port}", lambda p=proc, n=port: _answers(p, n), timeout=10)
                return port
            except RuntimeError:
                proc.kill()
                proc.wait(timeout=10)
                self.sentinels.remove(proc)
        raise RuntimeError("no sentinel could start")

    def _ready(self) -> bool:
        for port in self.sentinel_ports:
            s = sync_redis.Redis(port=port, socket_timeout=1)
            state = s.sentinel_master(self.MASTER)
            if int(state["num-other-sentinels"]) < 2 or int(state["num-slaves"]) < 1:
                return False
        link = sync_redis.Redis(port=self.replica.port, socket_timeout=1).info("replication")
        return bool(link.get("master_link_status") == "up")

    @property
    def target(self) -> Target:
        return Target(
            "sentinel",
            RedisTopology(
                mode="sentinel",
                sentinels=tuple(("127.0.0.1", p) for p in self.sentinel_ports),
                sentinel_master=self.MASTER,
            ),
        )

    def current_master_port(self) -> int:
        for port in self.sentinel_ports:
            try:
                _, master_port = sync_redis.Redis(
                    port=port, socket_timeout=1
                ).sentinel_get_master_addr_by_name(self.MASTER)
                return int(master_port)
            except (sync_redis.RedisError, OSError):
                continue
        raise RuntimeError("no sentinel answers")

    def master_of(self, key: str) -> RedisServer:
        """The master (every key lives there); `key` keeps the cluster's signature."""
        port = self.current_master_port()
        return self.master if port == self.master.port else self.replica

    def wait_promoted(self, key: str, dead: RedisServer) -> RedisServer:
        _wait("sentinel promotes the replica", lambda: self.current_master_port() != dead.port)
        new = self.replica if self.current_master_port() == self.replica.port else self.master
        _wait(
            "the new master takes writes",
            lambda: (
                sync_redis.Redis(port=new.port, socket_timeout=1).info("replication")["role"]
                == "master"
            ),
        )
        return new

    def cleanup(self) -> None:
        for proc in self.sentinels:
            proc.kill()
            proc.wait(timeout=10)
        self.replica.cleanup()
        self.master.cleanup()


def tls_acl_server(tls: TlsFiles) -> RedisServer:
    """A TLS-only server where `default` is off and the gateway logs in as an ACL user."""
    return RedisServer(
        tls=tls,
        extra=[
            "--user",
            "default",
            "off",
            "--user",
            ACL_USER,
            "on",
            f">{ACL_PASSWORD}",
            "~*",
            "&*",
            "+@all",
            "-@admin",  # as on managed Redis: no CONFIG, DEBUG, SHUTDOWN ...
        ],
        username=ACL_USER,
        password=ACL_PASSWORD,
    )


def tls_target(server: RedisServer, tls: TlsFiles) -> Target:
    return Target("tls-acl", RedisTopology(url=server.url, ca_file=str(tls.ca_cert)))


def redis_target(request: pytest.FixtureRequest, kind: str) -> Target:
    """The session's Redis of one topology (`kind` from REDIS_TARGETS), started on demand."""
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return Target("standalone", RedisTopology(url=server.url))
    if kind == "redis-sentinel":
        sentinels: SentinelSet = request.getfixturevalue("redis_sentinel")
        return sentinels.target
    if kind == "redis-cluster":
        cluster: RedisClusterSet = request.getfixturevalue("redis_cluster")
        return cluster.target
    if kind == "redis-tls":
        tls: TlsFiles = request.getfixturevalue("tls_files")
        return tls_target(request.getfixturevalue("redis_tls_server"), tls)
    raise ValueError(kind)
