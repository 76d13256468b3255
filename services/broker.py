"""Local broker: a real single-node Apache Kafka 4.1.1 (KRaft) for local runs, tests, demo, benchmarks.

The broker's life cycle (fetch jars, write ``server.properties``, format storage, start,
stop) has one implementation, ``deploy/kafka.sh``; this module drives it and owns the
two client-side steps that the script calls back into (``python -m services.broker
wait-ready|create-topics``): waiting until the broker answers a kafka-python admin call,
and creating the project's topics.

Examples
--------
>>> with LocalBroker() as broker:               # doctest: +SKIP
...     producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType

from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError

from models.errors import CardiowatchError
from services.settings import REPO_ROOT, KafkaSettings, SettingsError, Topics, kafka_security_from_env
from streaming.kafka_security import KafkaSecurity
from models.cli_help import HelpFormatter

__all__ = [
    "BrokerError",
    "KAFKA_SH",
    "LocalBroker",
    "create_topics",
    "free_port",
    "kafka_jars_cached",
    "main",
    "topic_partitions",
    "wait_ready",
]

KAFKA_SH = REPO_ROOT / "deploy" / "kafka.sh"

# Kafka's own bound on partitions per topic is far higher; 1024 matches
# CARDIOWATCH_PARTITIONS in settings.py.
_MAX_PARTITIONS = 1024
_LOG_TAIL_LINES = 40


class BrokerError(CardiowatchError, RuntimeError):
    """The local broker could not be fetched, started, reached or stopped."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _split_bootstrap(bootstrap: str) -> tuple[str, int]:
    first = bootstrap.split(",")[0]
    host, sep, port = first.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"bootstrap must be host:port, got {bootstrap!r}")
    return host, int(port)


def _log_tail(paths: Iterable[Path], lines: int = _LOG_TAIL_LINES) -> str:
    parts = []
    for path in paths:
        try:
            text = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            continue
        parts.append(f"--- last {len(text)} lines of {path} ---\n" + "\n".join(text))
    return "\n".join(parts) if parts else "(no broker log found)"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid_gone(pid: int) -> bool:
    """True when ``pid`` has exited (a zombie waiting for its parent counts as exited)."""
    if not _pid_alive(pid):
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no /proc: kill -0 is all there is
    return stat.rpartition(")")[2].split()[0] == "Z"


def _admin(bootstrap: str, timeout_s: float, security: KafkaSecurity | None = None) -> KafkaAdminClient:
    timeout_ms = max(int(timeout_s * 1000), 500)
    return KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="cardiowatch-broker-admin",
        bootstrap_timeout_ms=timeout_ms,
        request_timeout_ms=max(timeout_ms, 5000),
        **(security or KafkaSecurity()).kafka_python_kwargs(),
    )


def wait_ready(
    bootstrap: str,
    timeout_s: float = 90.0,
    pid: int | None = None,
    log_files: Sequence[Path] = (),
    security: KafkaSecurity | None = None,
) -> float:
    """Block until the broker at ``bootstrap`` answers a kafka-python admin call.

    Parameters
    ----------
    bootstrap : str
        ``host:port`` of the broker.
    timeout_s : float
        Give up after this many seconds.
    pid : int, optional
        The broker's process id; if that process exits, fail at once instead of waiting.
    log_files : sequence of Path
        Logs whose tail goes into the error message.
    security : KafkaSecurity, optional
        How to connect (default plaintext).

    Returns
    -------
    float
        Seconds waited.

    Raises
    ------
    BrokerError
        The broker process died or did not answer within ``timeout_s``; the message
        carries the log tail.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    host, port = _split_bootstrap(bootstrap)
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    last_error = "no attempt yet"
    while True:
        if pid is not None and not _pid_alive(pid):
            raise BrokerError(
                f"broker process {pid} exited before {bootstrap} became ready\n"
                + _log_tail(log_files))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        # A plain TCP probe first: cheap, and kafka-python logs every failed bootstrap.
        try:
            with socket.create_connection((host, port), timeout=min(1.0, remaining)):
                pass
        except OSError as exc:
            last_error = f"TCP connect: {exc}"
            time.sleep(min(0.2, max(remaining, 0)))
            continue
        try:
            admin = _admin(bootstrap, min(5.0, max(remaining, 0.5)), security)
            try:
                brokers = admin.describe_cluster().get("brokers", [])
            finally:
                admin.close()
            if brokers:
                return time.monotonic() - t0
            last_error = "metadata lists no brokers yet"
        except (KafkaError, OSError) as exc:  # OSError: a TLS handshake the broker is not ready for
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(0.2)
    raise BrokerError(
        f"broker at {bootstrap} not ready after {timeout_s:.0f} s (last error: {last_error})\n"
        + _log_tail(log_files))


def create_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int = 8,
    timeout_s: float = 30.0,
    security: KafkaSecurity | None = None,
    compact: Iterable[str] = (),
) -> list[str]:
    """Create topics that do not exist yet (replication factor 1); idempotent.

    Parameters
    ----------
    bootstrap : str
        ``host:port`` of the broker.
    names : iterable of str
        Topic names.
    partitions : int
        Partitions of each new topic, in [1, 1024]. Existing topics are left as they are.
    timeout_s : float
        Admin request timeout.
    security : KafkaSecurity, optional
        How to connect (default plaintext).
    compact : iterable of str
        Those of ``names`` to create with ``cleanup.policy=compact`` (state topics).

    Returns
    -------
    list of str
        The topics this call created (empty when all existed).

    Raises
    ------
    ValueError
        ``partitions`` out of range or an empty topic name.
    BrokerError
        The broker refused a topic for another reason than "already exists".
    """
    if not 1 <= partitions <= _MAX_PARTITIONS:
        raise ValueError(f"partitions must be in [1, {_MAX_PARTITIONS}], got {partitions}")
    wanted = list(dict.fromkeys(names))
    for name in wanted:
        if not name or not name.strip():
            raise ValueError(f"topic names must be non-empty, got {name!r}")
    admin = _admin(bootstrap, timeout_s, security)
    try:
        existing = set(admin.list_topics())
        missing = [n for n in wanted if n not in existing]
        if not missing:
            return []
        compacted = set(compact)
        response = admin.create_topics(
            {n: {"num_partitions": partitions, "replication_factor": 1,
                 **({"configs": {"cleanup.policy": "compact"}} if n in compacted else {})} for n in missing},
            timeout_ms=int(timeout_s * 1000),
            raise_errors=False,
            wait_for_metadata=True,
        )
    finally:
        admin.close()
    created: list[str] = []
    for topic in response["topics"]:
        code = topic["error_code"]
        if code == 0:
            created.append(topic["name"])
        elif code != TopicAlreadyExistsError.errno:  # lost a race with another creator
            raise BrokerError(
                f"creating topic {topic['name']!r} failed: error {code} "
                f"{topic.get('error_message') or ''}".rstrip())
    return created


def topic_partitions(bootstrap: str, names: Iterable[str], timeout_s: float = 30.0,
                     security: KafkaSecurity | None = None) -> dict[str, int]:
    """Return ``{topic: partition count}`` for the named topics that exist."""
    wanted = list(names)
    admin = _admin(bootstrap, timeout_s, security)
    try:
        existing = set(admin.list_topics())
        present = [n for n in wanted if n in existing]
        if not present:
            return {}
        described = admin.describe_topics(present)
    finally:
        admin.close()
    return {t["name"]: len(t["partitions"]) for t in described if t.get("error_code", 0) == 0}


def _run_script(args: Sequence[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    cmd = ["bash", str(KAFKA_SH), *args]
    env = dict(os.environ)
    # The script calls back into `python -m services.broker`: use this interpreter.
    env["CARDIOWATCH_PYTHON"] = sys.executable
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              env=env, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BrokerError(f"{' '.join(cmd)} timed out after {timeout_s:.0f} s") from exc


def kafka_jars_cached(timeout_s: float = 30.0) -> bool:
    """Whether the pinned Kafka jars are in the cache, so a start downloads nothing
    (``kafka.sh fetch --check``: the same test ``fetch`` makes before downloading)."""
    return _run_script(["fetch", "--check"], timeout_s).returncode == 0


class LocalBroker:
    """A real single-node Kafka broker on 127.0.0.1, started and stopped by this object.

    Parameters
    ----------
    port : int, optional
        Client port; a free one is chosen when omitted.
    data_dir : Path, optional
        Broker state folder (properties, pid, logs, KRaft data). When omitted a temporary
        folder is used and removed by :meth:`stop`.
    partitions : int
        Partitions of each project topic created by :meth:`start`, in [1, 1024].
    topics : Topics, optional
        Topic names to create on start (default ``Topics()``).
    ready_timeout_s : float
        How long :meth:`start` waits for the broker to answer.
    secure : bool
        Start a SASL_SSL broker (``kafka.sh start --security sasl_ssl``): TLS made at
        start-up, SCRAM users ``cardiowatch`` and ``admin``. :attr:`security` and
        :attr:`client_env` then say how to connect.
    mtls : bool
        With ``secure``: also an SSL listener that requires a client certificate
        (:attr:`mtls_bootstrap`).

    Examples
    --------
    >>> with LocalBroker(partitions=4) as broker:   # doctest: +SKIP
    ...     print(broker.bootstrap)
    127.0.0.1:40123
    """

    def __init__(
        self,
        port: int | None = None,
        data_dir: Path | None = None,
        partitions: int = 8,
        *,
        topics: Topics | None = None,
        ready_timeout_s: float = 120.0,
        secure: bool = False,
        mtls: bool = False,
    ) -> None:
        if port is not None and not 1 <= port <= 65535:
            raise ValueError(f"port must be in [1, 65535], got {port}")
        if not 1 <= partitions <= _MAX_PARTITIONS:
            raise ValueError(f"partitions must be in [1, {_MAX_PARTITIONS}], got {partitions}")
        if ready_timeout_s <= 0:
            raise ValueError(f"ready_timeout_s must be > 0, got {ready_timeout_s}")
        if mtls and not secure:
            raise ValueError("mtls=True needs secure=True")
        self.secure, self.mtls = secure, mtls
        self._mtls_port: int | None = None
        self._requested_port = port
        self._port: int | None = None
        self._owns_data_dir = data_dir is None
        self._data_dir = data_dir
        self.partitions = partitions
        self.topics = topics if topics is not None else Topics()
        self.ready_timeout_s = ready_timeout_s
        self.start_to_ready_s: float | None = None
        self._pid: int | None = None

    # -- state -------------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:PORT"`` of the running broker."""
        if self._port is None:
            raise BrokerError("LocalBroker is not started; call start() first")
        return f"127.0.0.1:{self._port}"

    @property
    def port(self) -> int:
        """Client port of the running broker."""
        if self._port is None:
            raise BrokerError("LocalBroker is not started; call start() first")
        return self._port

    # -- security (secure=True) ---------------------------------------------------------
    def _env_file(self, name: str) -> dict[str, str]:
        if not self.secure:
            return {}
        if self._data_dir is None or self._port is None:
            raise BrokerError("LocalBroker is not started; call start() first")
        lines = (self._data_dir / name).read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    @property
    def client_env(self) -> dict[str, str]:
        """``CARDIOWATCH_KAFKA_*`` settings of the SCRAM user ``cardiowatch`` (empty for a
        plaintext broker): put them in a service's environment."""
        return self._env_file("client.env")

    @property
    def security(self) -> KafkaSecurity:
        """How the services connect: :attr:`client_env` as a :class:`KafkaSecurity`."""
        return kafka_security_from_env(self.client_env)

    @property
    def admin_security(self) -> KafkaSecurity:
        """The SCRAM user ``admin`` (topic creation), or plaintext."""
        return kafka_security_from_env(self._env_file("admin.env"))

    @property
    def tls_dir(self) -> Path:
        """Folder of ``ca.pem``, ``client.pem`` and ``client.key`` (secure brokers)."""
        if not self.secure or self._data_dir is None:
            raise BrokerError("only a started LocalBroker(secure=True) has TLS material")
        return self._data_dir / "tls"

    @property
    def mtls_bootstrap(self) -> str:
        """``"127.0.0.1:PORT"`` of the listener that requires a client certificate."""
        if self._mtls_port is None:
            raise BrokerError("no mTLS listener: start LocalBroker(secure=True, mtls=True)")
        return f"127.0.0.1:{self._mtls_port}"

    @property
    def data_dir(self) -> Path | None:
        """Broker state folder (``server.log`` is in it); None before :meth:`start`."""
        return self._data_dir

    @property
    def pid(self) -> int | None:
        """Process id of the broker JVM, or None when it is not running."""
        if self._data_dir is None:
            return None
        try:
            pid = int((self._data_dir / "broker.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return None if _pid_gone(pid) else pid

    # -- life cycle --------------------------------------------------------------------
    @staticmethod
    def fetch(timeout_s: float = 600.0) -> None:
        """Fetch the Kafka jars into the cache (no-op when they are there)."""
        result = _run_script(["fetch"], timeout_s)
        if result.returncode != 0:
            raise BrokerError(f"deploy/kafka.sh fetch failed (exit {result.returncode}):\n"
                              f"{result.stderr.strip()}")

    def start(self) -> LocalBroker:
        """Fetch if needed, start the broker, wait until it answers, create the topics.

        Returns
        -------
        LocalBroker
            ``self``, started.

        Raises
        ------
        BrokerError
            Fetch, start or topic creation failed (the message carries the log tail).
        """
        if self._port is not None:
            raise BrokerError(f"LocalBroker already started on {self.bootstrap}")
        self.fetch()
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="cardiowatch-kafka-"))
            # kafka.sh's watchdog removes it if this process dies without stop().
            (self._data_dir / ".remove-when-orphaned").touch()
        # A port picked by free_port() can be taken by someone else before the JVM binds
        # it; with a chosen port, try again with another one.
        attempts = 1 if self._requested_port is not None else 3
        error = ""
        for _ in range(attempts):
            port = self._requested_port or free_port()
            mtls_port = free_port() if self.mtls else None
            t0 = time.monotonic()
            result = self._launch(port, mtls_port)
            if result.returncode == 0:
                self.start_to_ready_s = time.monotonic() - t0
                self._port, self._mtls_port = port, mtls_port
                self._pid = self.pid
                break
            error = result.stderr.strip()
            if "Address already in use" not in error:
                break
        if self._port is None:
            self._cleanup_data_dir()
            raise BrokerError(f"deploy/kafka.sh start failed:\n{error}")
        try:
            self.create_topics(self.topics.all(), self.partitions, compact=[self.topics.alert_state])
        except Exception:
            self.stop()
            raise
        return self

    def _launch(self, port: int, mtls_port: int | None) -> subprocess.CompletedProcess[str]:
        """``kafka.sh start`` on ``port`` from this broker's state folder; waits until it answers."""
        extra = ["--security", "sasl_ssl"] if self.secure else []
        if mtls_port is not None:
            extra += ["--mtls-port", str(mtls_port)]
        return _run_script(
            ["start", "--port", str(port), "--data-dir", str(self._data_dir),
             "--timeout-s", str(int(self.ready_timeout_s)), "--owner-pid", str(os.getpid()), *extra],
            self.ready_timeout_s + 60)

    def kill(self, timeout_s: float = 30.0) -> None:
        """SIGKILL the broker JVM, as a crash: no controlled shutdown, the log recovered at restart.

        The port and the state folder are kept, so :meth:`restart` brings the same broker
        back with the same log. For fault tests.

        Raises
        ------
        BrokerError
            The broker is not running, or its process is still there after ``timeout_s``.
        """
        pid = self.pid
        if self._port is None or pid is None:
            raise BrokerError("LocalBroker is not running; nothing to kill")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout_s
        while not _pid_gone(pid):
            if time.monotonic() > deadline:
                raise BrokerError(f"broker pid {pid} still there {timeout_s:.0f} s after SIGKILL")
            time.sleep(0.05)

    def restart(self) -> None:
        """Start a killed broker again: same port, same state folder (its log and
        metadata), same security; returns once it answers.

        Raises
        ------
        BrokerError
            Never started, still running, or the start failed (with the log tail).
        """
        if self._port is None or self._data_dir is None:
            raise BrokerError("LocalBroker is not started; call start() first")
        if self.pid is not None:
            raise BrokerError(f"broker pid {self.pid} is still running; kill() it first")
        t0 = time.monotonic()
        result = self._launch(self._port, self._mtls_port)
        if result.returncode != 0:
            raise BrokerError(f"deploy/kafka.sh start (restart on port {self._port}) failed:\n"
                              f"{result.stderr.strip()}")
        self.start_to_ready_s = time.monotonic() - t0
        self._pid = self.pid

    def create_topics(self, names: Iterable[str], partitions: int | None = None,
                      compact: Iterable[str] = ()) -> list[str]:
        """Create the named topics on this broker if missing; see :func:`create_topics`."""
        return create_topics(self.bootstrap, names,
                             self.partitions if partitions is None else partitions,
                             security=self.admin_security, compact=compact)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout_s``); idempotent."""
        if self._data_dir is not None and self._data_dir.exists():
            result = _run_script(["stop", "--data-dir", str(self._data_dir),
                                  "--timeout-s", str(int(timeout_s))], timeout_s + 30)
            if result.returncode != 0:
                raise BrokerError(f"deploy/kafka.sh stop failed (exit {result.returncode}):\n"
                                  f"{result.stderr.strip()}")
        # Never delete the state folder under a live JVM.
        if self._pid is not None and not _pid_gone(self._pid):
            raise BrokerError(f"broker pid {self._pid} still alive after deploy/kafka.sh stop")
        self._pid = None
        self._port = self._mtls_port = None
        self._cleanup_data_dir()

    def _cleanup_data_dir(self) -> None:
        if self._owns_data_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.bootstrap if self._port is not None else "stopped"
        return f"LocalBroker({where}, data_dir={self._data_dir})"


# -- CLI: `cardiowatch broker ...` and the script's call-backs ------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cardiowatch broker",
                                description="Local single-node Apache Kafka (deploy/kafka.sh).",
                                formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="fetch the Kafka jars into the cache", formatter_class=HelpFormatter)
    start = sub.add_parser("start", help="start the broker in the background and create topics",
                           formatter_class=HelpFormatter)
    start.add_argument("--port", type=int, default=None,
                       help="client port (default: from CARDIOWATCH_BOOTSTRAP, else 9092)")
    start.add_argument("--data-dir", type=Path, default=None, help="broker state folder")
    start.add_argument("--timeout-s", type=float, default=120.0, help="readiness timeout")
    start.add_argument("--fresh", action="store_true", help="wipe existing broker data first")
    for name, text in (("stop", "stop the broker"), ("status", "is the broker running?")):
        sp = sub.add_parser(name, help=text, formatter_class=HelpFormatter)
        sp.add_argument("--data-dir", type=Path, default=None, help="broker state folder")
    ct = sub.add_parser("create-topics", help="create the project topics (idempotent)", formatter_class=HelpFormatter)
    ct.add_argument("--bootstrap", default=None, help="host:port (default CARDIOWATCH_BOOTSTRAP)")
    ct.add_argument("--partitions", type=int, default=None,
                    help="partitions per topic (default CARDIOWATCH_PARTITIONS, else 8)")
    wr = sub.add_parser("wait-ready", help="wait until a broker answers (used by kafka.sh)", formatter_class=HelpFormatter)
    wr.add_argument("--bootstrap", required=True, help="host:port of the broker")
    wr.add_argument("--timeout-s", type=float, default=90.0, help="give up after this many seconds")
    wr.add_argument("--pid", type=int, default=None, help="the broker's process id: fail at once if it exits")
    wr.add_argument("--log", type=Path, action="append", default=[],
                    help="a log whose tail goes into the error (repeatable)")
    return p


def _apply_plan(settings: KafkaSettings) -> None:
    """Create the project's topics from the plan (``cardiowatch topics apply``), so a
    later ``topics apply`` finds them as planned."""
    from services.settings import WorkerSettings
    from services.topics import apply, plan

    report = apply(settings, plan(settings, WorkerSettings.from_env().app_id))
    print(f"created {len(report.created)} topic(s) on {settings.bootstrap}: "
          f"{', '.join(report.created) or '-'}", file=sys.stderr)
    for d in report.differing:
        print(f"cardiowatch broker: {d.describe()} (not changed)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run ``cardiowatch broker {fetch,start,stop,status,create-topics,wait-ready}``.

    Returns
    -------
    int
        Process exit status (``status`` returns 3 when the broker is not running).
    """
    args = _parser().parse_args(argv)
    # Failed bootstrap attempts are expected while waiting; keep kafka-python quiet.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    try:
        if args.command == "wait-ready":
            waited_s = wait_ready(args.bootstrap, args.timeout_s, args.pid, args.log,
                                  security=kafka_security_from_env(os.environ))
            print(f"broker at {args.bootstrap} ready after {waited_s:.1f} s", file=sys.stderr)
            return 0
        if args.command in ("create-topics", "start"):
            settings = KafkaSettings.from_env()
        if args.command == "create-topics":
            _apply_plan(replace(settings, bootstrap=args.bootstrap or settings.bootstrap,
                                partitions=args.partitions or settings.partitions))
            return 0
        if args.command == "fetch":
            LocalBroker.fetch()
            return 0
        if args.command == "start":
            port = args.port or _split_bootstrap(settings.bootstrap)[1]
            script_args = ["start", "--port", str(port), "--timeout-s", str(int(args.timeout_s))]
            if args.data_dir is not None:
                script_args += ["--data-dir", str(args.data_dir)]
            if args.fresh:
                script_args.append("--fresh")
            LocalBroker.fetch()
            result = _run_script(script_args, args.timeout_s + 60)
            sys.stderr.write(result.stderr)
            if result.returncode != 0:
                return result.returncode
            bootstrap = f"127.0.0.1:{port}"
            _apply_plan(replace(settings, bootstrap=bootstrap))
            print(bootstrap)
            return 0
        # stop / status
        script_args = [args.command]
        if args.data_dir is not None:
            script_args += ["--data-dir", str(args.data_dir)]
        result = _run_script(script_args, 120)
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        return result.returncode
    except (CardiowatchError, ValueError) as exc:  # BrokerError, SettingsError, TopicLayoutError
        print(f"cardiowatch broker: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
