"""A real three-node RabbitMQ cluster for tests: a thin wrapper around `scripts/dev-cluster`.

Each node runs in its own network namespace (see the script's header), so a test can kill a node,
start it again, or cut its link silently and watch `pause_minority` pause it:

    def test_something(rabbit_cluster):
        connection = pika.BlockingConnection(pika.URLParameters(rabbit_cluster.urls[0]))
        ...
        leader = rabbit_cluster.leader(queue)       # 1, 2 or 3
        rabbit_cluster.kill(leader)
        ...
        rabbit_cluster.restart(leader)              # returns once it has rejoined

`rabbit_cluster` is session-scoped: it starts the cluster (fast when it already runs) and stops it at
the end of the session only if this session started it. Before each test that asks for it, it brings
the cluster back to "all three up" (killed nodes restarted, cut links healed), so a test need not
undo its own faults. Where the cluster cannot start, the test skips on a developer's machine and
fails when `CI` is set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import require

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "dev-cluster"


class ClusterError(RuntimeError):
    """scripts/dev-cluster failed; the message carries the end of its output."""


@dataclass
class RabbitCluster:
    script: Path = SCRIPT
    urls: list[str] = field(default_factory=list)
    #: seconds the last start() that had to start nodes took (None: every start found them running)
    start_seconds: float | None = None
    #: the cluster ran before this session: leave it running at the end
    keep_running: bool = False
    #: prefix of the script's namespace and link names
    netns_prefix: str = field(default_factory=lambda: os.environ.get("STORAGE_WORKER_CLUSTER_NETNS", "swc"))

    def run(self, *args: str, timeout: float = 240.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            done = subprocess.run([str(self.script), *args], capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"dev-cluster {' '.join(args)} took more than {timeout} s") from exc
        if check and done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
            raise ClusterError(f"dev-cluster {' '.join(args)} exited {done.returncode}:\n{tail}")
        return done

    # --------------------------------------------------------------------------------- lifecycle

    def pids(self) -> dict[int, int]:
        """Node number -> pid of its beam.smp, for the nodes that run."""
        out = self.run("pids").stdout
        return {int(n): int(pid) for n, pid in (line.split() for line in out.splitlines() if line.strip())}

    def running(self) -> bool:
        return bool(self.pids())

    def start(self) -> None:
        """Start the cluster, or bring a running one back to all three nodes up; waits until formed."""
        was_up = len(self.pids()) == 3
        began = time.monotonic()
        self.run("start")
        if not was_up:
            self.start_seconds = time.monotonic() - began
        self.urls = self.run("urls").stdout.split()

    def stop(self) -> None:
        self.run("stop")

    def wait_formed(self, timeout: float = 120.0) -> None:
        """Until every node answers AMQP and the cluster sees all three running, no partition."""
        self.run("wait", str(int(timeout)), timeout=timeout + 30)

    # ------------------------------------------------------------------------------------ faults

    def kill(self, n: int) -> None:
        """SIGKILL node n (1-3); returns once the process is gone."""
        self.run("kill", str(n))

    def halt(self, n: int | str) -> None:
        """Stop node n (1-3), or "all" nodes, gracefully (SIGTERM), keeping their data; restart(n),
        or start() after halt("all"), starts them again."""
        self.run("halt", str(n))

    def restart(self, n: int) -> None:
        """Start killed node n again; returns once it has rejoined the cluster."""
        self.run("restart", str(n))

    def cut(self, what: int | str, node: int | None = None) -> None:
        """Silent cuts (no RST, no FIN: peers and clients find out by timeouts):
        cut(n) takes node n's link down, from every peer and client (a minority: it pauses);
        cut("host") takes this machine's link down (tests and workers lose every node, the cluster
        stays whole); cut("host", n) drops traffic between this machine and node n only."""
        self.run("cut", str(what), *([str(node)] if node is not None else []))

    def heal(self, what: int | str, node: int | None = None) -> None:
        """Undo cut(what, node). Does not wait: a paused node restarts its app within seconds
        (wait_formed() waits for that)."""
        self.run("heal", str(what), *([str(node)] if node is not None else []))

    # ---------------------------------------------------------------------------------- queries

    @property
    def url_list(self) -> str:
        """The `;`-joined form of AMQP_URL for several nodes (CONTRACT §8)."""
        return ";".join(self.urls)

    def url(self, n: int) -> str:
        return self.urls[n - 1]

    def node_name(self, n: int) -> str:
        host = self.url(n).split("@", 1)[1].split(":", 1)[0]
        return f"rabbit@{host}"

    def answers(self, n: int) -> bool:
        """Whether node n accepts TCP connections on its AMQP port, tried from inside its own
        namespace (so this tells "paused" from "cut off" while its link is down)."""
        return self.run("answers", str(n), check=False).returncode == 0

    def leader(self, queue: str, vhost: str = "/") -> int:
        """The node (1-3) leading quorum queue `queue`."""
        return int(self.run("leader", queue, vhost).stdout.split()[0])

    def ctl(self, n: int, *args: str) -> str:
        """rabbitmqctl against node n; its stdout."""
        return self.run("ctl", str(n), *args).stdout

    def plugins(self, n: int, *args: str) -> str:
        """rabbitmq-plugins against node n; its stdout."""
        return self.run("plugins", str(n), *args).stdout

    def status(self) -> str:
        return self.run("status", check=False).stdout


def cluster_available() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "the RabbitMQ cluster needs root (network namespaces)"
    if shutil.which("ip") is None:
        return False, "the RabbitMQ cluster needs iproute2 (ip netns)"
    return True, ""


@pytest.fixture(scope="session")
def rabbit_cluster_session() -> Iterator[RabbitCluster]:
    ok, why = cluster_available()
    require(ok, why)
    cluster = RabbitCluster()
    cluster.keep_running = cluster.running()
    try:
        cluster.start()
    except ClusterError as exc:
        require(False, f"the three-node RabbitMQ cluster did not start: {exc}")
    try:
        yield cluster
    finally:
        if not cluster.keep_running:
            cluster.stop()


@pytest.fixture
def rabbit_cluster(rabbit_cluster_session: RabbitCluster) -> RabbitCluster:
    """The session's cluster with all three nodes up and formed (faults of earlier tests undone)."""
    try:
        rabbit_cluster_session.start()
    except ClusterError as exc:
        require(False, f"the three-node RabbitMQ cluster did not come back: {exc}")
    return rabbit_cluster_session
