"""The project's one exception root, and the tree under it.

Every error cardiowatch raises on purpose is a :class:`CardiowatchError`, so a caller can
catch "anything cardiowatch refused" in one place; the classes that reject a bad value
are also ``ValueError`` (a bad message, setting or file is a bad value). The root lives in
the lowest layer (``models``) so that every layer can derive from it::

    CardiowatchError
    ├── DetectorError                 models.autoencoder
    │   ├── NotFittedError            used before fit / load, or predict without a threshold
    │   ├── BundleError               models.bundle: bad bundle folder, key, value or file hash
    │   └── ExportError               models.export: TFLite conversion failed or not builtin-only
    ├── TreeEnsembleError             models.trees (also ValueError)
    ├── QRSPairModelError             models.qrs: bad QRS pair-model folder or file hash (also ValueError)
    ├── InvalidMessage                streaming.errors: a message rejected at the boundary
    │   └── MalformedMessage, FieldError, ValueOutOfRange, SequenceError
    ├── PolicyConfigError, PolicyStateError      streaming.errors (also ValueError)
    ├── KafkaSecurityError            streaming.kafka_security: half-configured TLS/SASL (also ValueError)
    ├── KafkaConnectError             streaming.kafka_security: start-up probe failed (also ConnectionError)
    │   ├── KafkaTLSError             untrusted broker certificate, refused handshake
    │   └── KafkaAuthError            SASL mechanism or credentials rejected
    ├── SettingsError                 services.settings (also ValueError)
    ├── RoutingConfigError            services.routing (also ValueError)
    ├── TokenFileError                services.ack_api (also ValueError)
    ├── ConsoleRecordError            services.console_view: a score record the console cannot use (also ValueError)
    ├── SignatureError                services.signing (also ValueError)
    ├── DeliveryTransportError        services.webhook: a webhook endpoint unreachable
    │   └── DeliveryTimeout
    ├── BrokerError                   services.broker (also RuntimeError)
    └── TopicLayoutError              services.topics: the cluster's topics do not fit the settings (also RuntimeError)
"""

from __future__ import annotations

__all__ = ["CardiowatchError"]


class CardiowatchError(Exception):
    """Root of every error raised on purpose by cardiowatch."""
