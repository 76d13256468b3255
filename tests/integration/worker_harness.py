"""Helpers for end-to-end worker tests: run ``cardiowatch worker`` as a real process
against the session's real Kafka broker, feed it, and read its topics back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer

from services.broker import free_port
from services.settings import REPO_ROOT, Topics
from streaming.kafka_security import KafkaSecurity

__all__ = ["WorkerProcess", "produce", "read_all", "read_to_end", "read_until", "wait_for_no_lag"]


@dataclass
class WorkerProcess:
    bootstrap: str
    topics: Topics
    workdir: Path
    app_id: str
    partitions: int = 4
    proc: subprocess.Popen | None = None
    port: int = 0
    extra_env: dict[str, str] | None = None

    def env(self) -> dict[str, str]:
        t = self.topics
        env = dict(
            os.environ, CARDIOWATCH_BOOTSTRAP=self.bootstrap, CARDIOWATCH_PARTITIONS=str(self.partitions),
            CARDIOWATCH_TOPIC_ECG=t.ecg, CARDIOWATCH_TOPIC_HR=t.hr, CARDIOWATCH_TOPIC_SCORES=t.scores,
            CARDIOWATCH_TOPIC_ALERTS=t.alerts, CARDIOWATCH_TOPIC_DEADLETTER=t.deadletter,
            CARDIOWATCH_TOPIC_ALERTS_DEADLETTER=t.alerts_deadletter, CARDIOWATCH_TOPIC_ACKS=t.acks,
            CARDIOWATCH_TOPIC_ALERT_STATE=t.alert_state,
            CARDIOWATCH_APP_ID=self.app_id, CARDIOWATCH_DATA_DIR=str(self.workdir / "faust"),
            CARDIOWATCH_METRICS_PORT=str(self.port), CARDIOWATCH_BATCH_WITHIN_S="0.1",
            PYTHONUNBUFFERED="1")
        return {**env, **(self.extra_env or {})}  # a test's own settings win

    def start(self, timeout_s: float = 180.0) -> WorkerProcess:
        self.port = free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "worker.log", "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "services.cli", "worker"],
                                     env=self.env(), cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2).read()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker did not serve /metrics in {timeout_s} s:\n{self.log_tail()}")
                time.sleep(0.5)

    def metrics(self) -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()

    def log_tail(self, n: int = 4000) -> str:
        p = self.workdir / "worker.log"
        return p.read_text()[-n:] if p.exists() else ""

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def produce(bootstrap: str, records: Iterable[tuple[str, bytes | None, bytes | None]],
            security: KafkaSecurity | None = None) -> int:
    """Send (topic, key, value) records in order and wait for every ack."""
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=2_000_000,
                      **(security or KafkaSecurity()).kafka_python_kwargs())
    n = 0
    for topic, key, value in records:
        p.send(topic, key=key, value=value)
        n += 1
    p.flush(60)
    p.close()
    return n


def read_until(bootstrap: str, topic: str, done: Callable[[list], bool], timeout_s: float,
               decode: Callable = json.loads, security: KafkaSecurity | None = None) -> list:
    """Read ``topic`` from the start until ``done(records)`` or the timeout."""
    c = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                      enable_auto_commit=False, group_id=None, consumer_timeout_ms=1000,
                      **(security or KafkaSecurity()).kafka_python_kwargs())
    out: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not done(out):
            for rec in c:
                out.append((rec.key, decode(rec.value)))
                if done(out):
                    break
    finally:
        c.close()
    return out


def read_all(bootstrap: str, topic: str, settle_s: float = 3.0) -> list:
    """Everything currently in ``topic`` (stops after ``settle_s`` with nothing new)."""
    c = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                      enable_auto_commit=False, group_id=None, consumer_timeout_ms=int(settle_s * 1000))
    try:
        return [(rec.key, json.loads(rec.value)) for rec in c]
    finally:
        c.close()


def read_to_end(bootstrap: str, topic: str, timeout_s: float = 60.0, decode: Callable = json.loads) -> list:
    """Every record of ``topic`` up to its end offsets at the call, as (key, value); raises
    ``AssertionError`` if they cannot be read within ``timeout_s`` (unlike
    :func:`read_all`, never returns early because the broker was slow to answer)."""
    from kafka import TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                      auto_offset_reset="earliest")
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
        assert tps, f"no partitions for {topic}"
        c.assign(tps)
        c.seek_to_beginning(*tps)
        end = c.end_offsets(tps)
        out: list = []
        deadline = time.monotonic() + timeout_s
        while any(c.position(tp) < end[tp] for tp in tps):
            assert time.monotonic() < deadline, f"could not read {topic} to its end in {timeout_s} s"
            for tp, recs in c.poll(timeout_ms=500).items():
                out += [(r.key, decode(r.value)) for r in recs if r.offset < end[tp]]
        return out
    finally:
        c.close()


def wait_for_no_lag(bootstrap: str, group: str, topics: Iterable[str], timeout_s: float,
                    security: KafkaSecurity | None = None) -> dict[str, int]:
    """Wait until consumer group ``group`` has committed every partition of ``topics`` up
    to its end offset (zero lag), polling with a deadline; return the end offsets.

    A consumer that commits only after its output is sent (the worker, the dispatcher)
    has then produced everything it will for what is in ``topics`` now: the fact a test
    waits for before asserting that something did *not* happen, instead of a sleep.
    Raises ``AssertionError`` naming the lag when the deadline passes."""
    from kafka import KafkaAdminClient, TopicPartition

    kw = (security or KafkaSecurity()).kafka_python_kwargs()
    names = list(topics)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **kw)
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **kw)
    try:
        tps = [TopicPartition(t, p) for t in names for p in sorted(c.partitions_for_topic(t) or ())]
        assert tps, f"no partitions for {names}"
        end = c.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        while True:
            committed = admin.list_group_offsets(group).get(group, {})
            done = {tp: max(0, committed[tp].offset) if tp in committed else 0 for tp in tps}
            lag = {f"{tp.topic}[{tp.partition}]": end[tp] - done[tp] for tp in tps if done[tp] < end[tp]}
            if not lag:
                return {f"{tp.topic}[{tp.partition}]": end[tp] for tp in tps}
            if time.monotonic() > deadline:
                raise AssertionError(f"group {group} still behind after {timeout_s} s: {lag}")
            time.sleep(0.2)
    finally:
        c.close()
        admin.close()
