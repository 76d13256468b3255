"""Put on ``PYTHONPATH`` of a worker process by the first-start test: the topics Faust
declares (its changelogs and leader topic) stay out of the producer's cached cluster
metadata until the producer itself asks the broker about them.

That is the state the worker's producer is in when the one refresh Faust requests right
after declaring a topic (``force_metadata_update``, "Fixes #499" in faust's aiokafka
driver) is answered before the broker has published the topic: on KRaft a CreateTopics
response comes back once the controller has committed the topic, the broker's metadata
cache catches up a little later, and the producer's next refresh of its own is
``producer_metadata_max_age_ms`` (5 min) away. A multi-broker cluster whose bootstrap
broker lags, or leaders moving after a broker loss, leave the same hole. A client that
asks for metadata it lacks (aiokafka's ``send`` does, through ``_wait_on_metadata``) gets
the topic at once; one that reads the cache and trusts it does not. Nothing else in the
worker is touched."""

from aiokafka import cluster as _cluster
from faust.transport.drivers import aiokafka as _driver

_declared: set[str] = set()
_create_topic = _driver.Producer.create_topic
_update_metadata = _cluster.ClusterMetadata.update_metadata


def _hide(md: _cluster.ClusterMetadata, asked: set[str]) -> None:
    with md._lock:
        for topic in _declared - asked:
            md._partitions.pop(topic, None)


async def _create_topic_published_late(self, topic, *args, **kwargs):  # type: ignore[no-untyped-def]
    _declared.add(topic)
    await _create_topic(self, topic, *args, **kwargs)
    client = self._ensure_producer().client
    client.cluster._late_client = client
    _hide(client.cluster, client._topics)  # _topics: what this producer asked about by name


def _update_metadata_published_late(self, metadata):  # type: ignore[no-untyped-def]
    _update_metadata(self, metadata)
    client = getattr(self, "_late_client", None)
    if client is not None:
        _hide(self, client._topics)


_driver.Producer.create_topic = _create_topic_published_late  # type: ignore[method-assign]
_cluster.ClusterMetadata.update_metadata = _update_metadata_published_late  # type: ignore[method-assign]
