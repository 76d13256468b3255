"""Local broker: real Kafka round trips, project topics, clean stop, readiness errors."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer

from services.broker import (
    BrokerError,
    LocalBroker,
    create_topics,
    free_port,
    main,
    topic_partitions,
    wait_ready,
)
from services.settings import Topics

pytestmark = pytest.mark.integration


def _java_processes_for(data_dir: Path) -> list[str]:
    return [line for line in _processes_for(data_dir) if "kafka.Kafka" in line]


def _processes_for(data_dir: Path) -> list[str]:
    """Every process whose command line names ``data_dir`` (the JVM and kafka.sh helpers)."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if str(data_dir) in line]


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_project_topics_exist_with_expected_partitions(kafka_broker: LocalBroker) -> None:
    counts = topic_partitions(kafka_broker.bootstrap, Topics().all())
    assert counts == {name: 8 for name in Topics().all()}


def test_create_topics_is_idempotent(kafka_broker: LocalBroker, unique_topic) -> None:
    name = unique_topic("idem", partitions=3)
    assert kafka_broker.create_topics([name], 5) == []   # exists: left as it is
    assert topic_partitions(kafka_broker.bootstrap, [name]) == {name: 3}
    with pytest.raises(ValueError, match="partitions must be in"):
        create_topics(kafka_broker.bootstrap, ["x"], partitions=0)


def test_kafka_python_round_trip_keeps_per_key_order(kafka_broker: LocalBroker, unique_topic) -> None:
    topic = unique_topic("roundtrip", partitions=4)
    n_keys, per_key = 10, 20
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all", linger_ms=5)
    try:
        for i in range(per_key):
            for k in range(n_keys):
                producer.send(topic, key=f"patient-{k}".encode(), value=f"{k}:{i}".encode())
        producer.flush(timeout=30)
    finally:
        producer.close()

    consumer = KafkaConsumer(topic, bootstrap_servers=kafka_broker.bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             group_id=None, consumer_timeout_ms=1000)
    seen: dict[str, list[int]] = defaultdict(list)
    partitions_of: dict[str, set[int]] = defaultdict(set)
    deadline = time.monotonic() + 30
    try:
        while sum(map(len, seen.values())) < n_keys * per_key and time.monotonic() < deadline:
            for record in consumer:
                key = record.key.decode()
                k, i = record.value.decode().split(":")
                assert key == f"patient-{k}"
                seen[key].append(int(i))
                partitions_of[key].add(record.partition)
    finally:
        consumer.close()
    assert sum(map(len, seen.values())) == n_keys * per_key
    for key, values in seen.items():
        assert values == list(range(per_key)), key
        assert len(partitions_of[key]) == 1, f"{key} spread over {partitions_of[key]}"
    # 10 keys over 4 partitions: the default partitioner uses more than one.
    assert len(set().union(*partitions_of.values())) > 1


def test_aiokafka_round_trip(kafka_broker: LocalBroker, unique_topic) -> None:
    """Faust rides on aiokafka: it must speak to Kafka 4.1 too."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = unique_topic("aio", partitions=2)

    async def run() -> list[bytes]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
        await producer.start()
        try:
            for i in range(5):
                await producer.send_and_wait(topic, key=b"p1", value=str(i).encode())
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_broker.bootstrap,
                                    auto_offset_reset="earliest", group_id=f"g-{topic}")
        await consumer.start()
        got: list[bytes] = []
        try:
            async with asyncio.timeout(30):
                async for msg in consumer:
                    got.append(msg.value)
                    if len(got) == 5:
                        break
        finally:
            await consumer.stop()
        return got

    assert asyncio.run(run()) == [b"0", b"1", b"2", b"3", b"4"]


def test_stop_leaves_no_java_process(tmp_path: Path) -> None:
    data_dir = tmp_path / "broker"
    broker = LocalBroker(data_dir=data_dir, partitions=1)
    broker.start()
    pid = broker.pid
    assert pid is not None
    assert _java_processes_for(data_dir)
    assert main(["status", "--data-dir", str(data_dir)]) == 0
    broker.stop()
    assert _wait_gone(pid, 1.0), f"broker pid {pid} still alive after stop()"
    assert _java_processes_for(data_dir) == []
    deadline = time.monotonic() + 3.0   # the watchdog notices within its 1 s poll
    while _processes_for(data_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_for(data_dir) == []
    assert main(["status", "--data-dir", str(data_dir)]) == 3
    broker.stop()  # idempotent
    with pytest.raises(BrokerError, match="not started"):
        _ = broker.bootstrap


def test_broker_dies_with_its_owner() -> None:
    """A test process killed without cleanup leaves no JVM and no temp folder (watchdog)."""
    script = textwrap.dedent("""
        import os
        from services.broker import LocalBroker
        b = LocalBroker(partitions=1).start()
        print(b.pid, b.data_dir, flush=True)
        os._exit(0)   # no stop(): simulate a crashed test session
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=180, cwd=Path(__file__).resolve().parents[2], check=True)
    pid_text, data_dir_text = out.stdout.strip().splitlines()[-1].split(" ", 1)
    pid, data_dir = int(pid_text), Path(data_dir_text)
    assert _wait_gone(pid, 45.0), f"orphaned broker pid {pid} still alive"
    deadline = time.monotonic() + 10
    while (data_dir.exists() or _processes_for(data_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_for(data_dir) == []
    assert not data_dir.exists(), f"orphaned broker left {data_dir}"


def test_wait_ready_times_out_with_a_clear_error(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("line one\nBindException: Address already in use\n")
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(BrokerError, match=rf"127.0.0.1:{port} not ready after 1 s") as info:
        wait_ready(f"127.0.0.1:{port}", timeout_s=1.0, log_files=[log])
    assert time.monotonic() - t0 < 5
    assert "Address already in use" in str(info.value)


def test_wait_ready_fails_fast_when_the_process_is_gone() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with pytest.raises(BrokerError, match=f"process {proc.pid} exited"):
        wait_ready(f"127.0.0.1:{free_port()}", timeout_s=30.0, pid=proc.pid)


def test_local_broker_validates_arguments() -> None:
    with pytest.raises(ValueError, match="port must be in"):
        LocalBroker(port=70000)
    with pytest.raises(ValueError, match="partitions must be in"):
        LocalBroker(partitions=0)
    with pytest.raises(ValueError, match="bootstrap must be host:port"):
        wait_ready("nohost", timeout_s=1)
