"""Session fixtures shared by all test layers: the real local Kafka broker and the PhysioNet folder.

Only cross-cutting fixtures live here; each test file keeps its own.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.broker import LocalBroker
from services.settings import Topics

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data"

# Kafka topic names: [a-zA-Z0-9._-], at most 249 characters.
_TOPIC_UNSAFE = re.compile(r"[^a-zA-Z0-9._-]+")


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[LocalBroker]:
    """A real single-node Kafka broker on a free 127.0.0.1 port, one per test session.

    The project topics (``Topics()``) exist with 8 partitions. Stopped at session end; a
    watchdog also stops it if the test process dies without cleaning up.
    """
    broker = LocalBroker()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _topic_stem(request: pytest.FixtureRequest) -> str:
    return _TOPIC_UNSAFE.sub("-", request.node.name)[:120]


@pytest.fixture
def unique_topic(kafka_broker: LocalBroker, request: pytest.FixtureRequest) -> Callable[..., str]:
    """Factory: ``unique_topic(suffix="t", partitions=1) -> str`` creates a fresh topic.

    Names look like ``test.<test name>.<suffix>.<8 hex>`` so tests never share a topic.
    """

    def make(suffix: str = "t", partitions: int = 1) -> str:
        name = f"test.{_topic_stem(request)}.{_TOPIC_UNSAFE.sub('-', suffix)}.{uuid.uuid4().hex[:8]}"
        kafka_broker.create_topics([name], partitions)
        return name

    return make


@pytest.fixture
def make_topics(kafka_broker: LocalBroker, request: pytest.FixtureRequest) -> Callable[..., Topics]:
    """Factory: ``make_topics(partitions=8) -> Topics`` with a fresh name for every project topic.

    For tests that run a worker or dispatcher end to end: pass the result as
    ``KafkaSettings(bootstrap=kafka_broker.bootstrap, topics=...)``.
    """

    def make(partitions: int = 8) -> Topics:
        prefix = f"test.{_topic_stem(request)}.{uuid.uuid4().hex[:8]}"
        d = Topics()
        topics = Topics(
            ecg=f"{prefix}.{d.ecg}",
            hr=f"{prefix}.{d.hr}",
            scores=f"{prefix}.{d.scores}",
            alerts=f"{prefix}.{d.alerts}",
            deadletter=f"{prefix}.{d.deadletter}",
            alerts_deadletter=f"{prefix}.{d.alerts_deadletter}",
            acks=f"{prefix}.{d.acks}",
            alert_state=f"{prefix}.{d.alert_state}",
        )
        kafka_broker.create_topics(topics.all(), partitions, compact=[topics.alert_state])
        return topics

    return make


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """Path to the PhysioNet records in ``<repo>/../shared/data``.

    Skips the test when the folder is absent, or fails it when
    ``CARDIOWATCH_REQUIRE_DATA=1`` (CI with data must not skip silently).
    """
    if SHARED_DATA_DIR.is_dir():
        return SHARED_DATA_DIR
    reason = (f"PhysioNet records not found at {SHARED_DATA_DIR}; "
              "get them from PhysioNet, see README")
    if os.environ.get("CARDIOWATCH_REQUIRE_DATA") == "1":
        pytest.fail(f"CARDIOWATCH_REQUIRE_DATA=1 but {reason}", pytrace=False)
    pytest.skip(reason)
