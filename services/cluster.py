"""Local cluster: a real three-node Apache Kafka (KRaft) on 127.0.0.1, for the broker-loss test.

The life cycle is ``deploy/kafka-cluster.sh``'s; this object drives it (start, SIGKILL one
node, start it again, stop) the way :class:`services.broker.LocalBroker` drives the
single-node ``deploy/kafka.sh``.

Examples
--------
>>> with LocalCluster() as cluster:                  # doctest: +SKIP
...     cluster.kill(2)                              # SIGKILL node 2
...     cluster.restart(2)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType

from services.broker import BrokerError
from services.settings import REPO_ROOT

__all__ = ["CLUSTER_SH", "LocalCluster"]

CLUSTER_SH = REPO_ROOT / "deploy" / "kafka-cluster.sh"


def _script(args: list[str], timeout_s: float) -> str:
    env = dict(os.environ, CARDIOWATCH_PYTHON=sys.executable)
    try:
        r = subprocess.run(["bash", str(CLUSTER_SH), *args], capture_output=True, text=True,
                           timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BrokerError(f"deploy/kafka-cluster.sh {args[0]} timed out after {timeout_s:.0f} s") from exc
    if r.returncode != 0:
        raise BrokerError(f"deploy/kafka-cluster.sh {args[0]} failed (exit {r.returncode}):\n{r.stderr.strip()}")
    return r.stdout.strip()


class LocalCluster:
    """A real ``nodes``-node KRaft cluster (each node broker and controller) on 127.0.0.1.

    Parameters
    ----------
    nodes : int
        In [1, 9]; 3 gives replication 3 with ``min.insync.replicas`` 2.
    data_dir : Path, optional
        State folder; a temporary one (removed by :meth:`stop`) when omitted.
    ready_timeout_s : float
        How long :meth:`start` and :meth:`restart` wait for a node to answer.
    """

    def __init__(self, nodes: int = 3, data_dir: Path | None = None, ready_timeout_s: float = 120.0) -> None:
        if not 1 <= nodes <= 9:
            raise ValueError(f"nodes must be in [1, 9], got {nodes}")
        if ready_timeout_s <= 0:
            raise ValueError(f"ready_timeout_s must be > 0, got {ready_timeout_s}")
        self.nodes = nodes
        self.ready_timeout_s = ready_timeout_s
        self._owns_data_dir = data_dir is None
        self._data_dir = data_dir
        self._bootstrap: str | None = None

    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:P1,127.0.0.1:P2,..."``: every node, so losing one is survivable."""
        if self._bootstrap is None:
            raise BrokerError("LocalCluster is not started; call start() first")
        return self._bootstrap

    def node_port(self, node: int) -> int:
        """Client port of ``node`` (1-based)."""
        self._check_node(node)
        assert self._data_dir is not None
        return int((self._data_dir / f"node-{node}" / "broker.port").read_text())

    def _check_node(self, node: int) -> None:
        if self._data_dir is None or self._bootstrap is None:
            raise BrokerError("LocalCluster is not started; call start() first")
        if not 1 <= node <= self.nodes:
            raise ValueError(f"node must be in [1, {self.nodes}], got {node}")

    def start(self) -> LocalCluster:
        """Start every node and wait until each answers; returns ``self``."""
        if self._bootstrap is not None:
            raise BrokerError(f"LocalCluster already started on {self._bootstrap}")
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="cardiowatch-kafka-cluster-"))
            (self._data_dir / ".remove-when-orphaned").touch()  # the script's watchdog removes it
        try:
            out = _script(["start", "--data-dir", str(self._data_dir), "--nodes", str(self.nodes),
                           "--timeout-s", str(int(self.ready_timeout_s)), "--owner-pid", str(os.getpid())],
                          self.ready_timeout_s * self.nodes + 120)
        except BrokerError:
            self._cleanup()
            raise
        self._bootstrap = out.splitlines()[-1]
        return self

    def kill(self, node: int) -> None:
        """SIGKILL ``node``, as a crash: no controlled shutdown, no leadership handed over."""
        self._check_node(node)
        _script(["kill-node", "--data-dir", str(self._data_dir), "--node", str(node)], 60)

    def restart(self, node: int) -> None:
        """Start ``node`` again from its state and wait until it answers."""
        self._check_node(node)
        _script(["start-node", "--data-dir", str(self._data_dir), "--node", str(node),
                 "--timeout-s", str(int(self.ready_timeout_s))], self.ready_timeout_s + 60)

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop every node (SIGTERM, then SIGKILL after ``timeout_s``); idempotent."""
        if self._data_dir is not None and self._data_dir.exists():
            _script(["stop", "--data-dir", str(self._data_dir), "--timeout-s", str(int(timeout_s))],
                    timeout_s + 60)
        self._bootstrap = None
        self._cleanup()

    def _cleanup(self) -> None:
        if self._owns_data_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalCluster({self._bootstrap or 'stopped'}, nodes={self.nodes}, data_dir={self._data_dir})"
