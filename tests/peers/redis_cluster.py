"""Run a throwaway three-primary Redis Cluster on free loopback ports (no persistence, no
replicas), for tests of the gateway's hash-tagged keys and per-slot commands."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from tests.peers.binaries import find_binary
from tests.peers.ports import free_port, wait_for_port
from tests.peers.process import ManagedProcess, PeerServer

CLUSTER_SLOTS = 16384


class RedisCluster(PeerServer):
    """Three ``redis-server --cluster-enabled yes`` primaries on 127.0.0.1, joined by
    ``redis-cli --cluster create``; each node keeps its ``nodes.conf`` in its own directory."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path, *, nodes: int = 3) -> None:
        if nodes < 3:
            raise ValueError("redis-cli --cluster create needs at least three primaries")
        self.workdir = Path(workdir)
        self.ports: list[int] = []
        while len(self.ports) < nodes:  # distinct ports; the cluster bus uses port + 10000
            port = free_port()
            if port not in self.ports and port + 10000 <= 65535:
                self.ports.append(port)
        self._processes: list[ManagedProcess] = []

    @property
    def url(self) -> str:
        """``redis://`` URL of the first node (a cluster client discovers the others)."""
        return f"redis://{self.host}:{self.ports[0]}/0"

    @property
    def addresses(self) -> list[str]:
        """``host:port`` of every node."""
        return [f"{self.host}:{port}" for port in self.ports]

    def start(self, timeout: float = 20.0) -> None:
        """Start the nodes, create the cluster, and wait until every node says it is ok."""
        server = find_binary("redis-server")
        cli = find_binary("redis-cli")
        if server is None or cli is None:
            raise RuntimeError(
                "redis-server/redis-cli are not installed (run scripts/install-deps)"
            )
        deadline = time.monotonic() + timeout
        try:
            for port in self.ports:
                self._start_node(server, port, deadline)
            self._create(cli, deadline)
            self._wait_ok(cli, deadline)
        except BaseException:
            logs = "\n".join(p.log_tail(15) for p in self._processes)
            self.stop()
            raise RuntimeError(f"Redis Cluster did not start:\n{logs}") from None

    def _start_node(self, binary: str, port: int, deadline: float) -> None:
        node_dir = self.workdir / f"node-{port}"
        node_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            binary,
            "--bind", self.host,
            "--port", str(port),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", "5000",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(node_dir),
        ]  # fmt: skip
        process = ManagedProcess(argv, node_dir / "redis.log", cwd=node_dir)
        self._processes.append(process)
        popen = process.start()
        wait_for_port(self.host, port, max(deadline - time.monotonic(), 0.1), process=popen)

    def _create(self, cli: str, deadline: float) -> None:
        done = subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *self.addresses,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=max(deadline - time.monotonic(), 1.0),
        )
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")

    def cluster_info(self, port: int, cli: str | None = None) -> dict[str, str]:
        """``CLUSTER INFO`` of one node as a dict."""
        cli = cli or find_binary("redis-cli") or "redis-cli"
        done = subprocess.run(
            [cli, "-h", self.host, "-p", str(port), "cluster", "info"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=5,
        )
        pairs = (line.strip().split(":", 1) for line in done.stdout.splitlines() if ":" in line)
        return {key: value for key, value in pairs}

    def _wait_ok(self, cli: str, deadline: float) -> None:
        while True:
            infos = [self.cluster_info(port, cli) for port in self.ports]
            if all(
                info.get("cluster_state") == "ok"
                and info.get("cluster_slots_ok") == str(CLUSTER_SLOTS)
                and info.get("cluster_known_nodes") == str(len(self.ports))
                for info in infos
            ):
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"cluster not ok in time: {infos}")
            time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every node and remove its directory (nodes.conf, log); a no-op when stopped."""
        processes, self._processes = self._processes, []
        for process in processes:
            process.stop(timeout)
            shutil.rmtree(process.log_path.parent, ignore_errors=True)
