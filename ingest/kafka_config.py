"""Kafka connection settings and the topic-naming convention used by every stage.

Topic names follow ``<prefix>.<stream>``:

========================  ===================================================
``<prefix>.frames``       camera frames, key = camera id (order per camera)
``<prefix>.results``      one inspection result per frame, key = camera id
``<prefix>.deadletter``   messages a stage could not process, with the reason
========================  ===================================================

``prefix`` defaults to ``linewatch`` (``LINEWATCH_TOPIC_PREFIX``); a second line or a
test run uses its own prefix to stay isolated on a shared cluster.  Topics are never
auto-created: :func:`ingest.topics.ensure_topics` creates them with explicit partition counts.

Message size: a linewatch producer sends records up to ``kafka_max_message_bytes``
(``LINEWATCH_KAFKA_MAX_MESSAGE_BYTES``, default 16 MiB, key + value + headers).  The topics are
created with ``max.message.bytes`` a little above it, and the development broker
(``deploy/kafka/kafka.sh``) accepts 20 MiB, so frames up to that size pass end to end; a larger
frame is refused before sending with :class:`ingest.producer.FrameTooLargeError`.

Security: the default is PLAINTEXT, for a broker on loopback (the local stack, tests).  Between
hosts use SASL_SSL with SCRAM-SHA-512 (what deploy/compose and deploy/k8s configure)::

    LINEWATCH_KAFKA_SECURITY_PROTOCOL=SASL_SSL
    LINEWATCH_KAFKA_SASL_MECHANISM=SCRAM-SHA-512
    LINEWATCH_KAFKA_SASL_USERNAME=linewatch
    LINEWATCH_KAFKA_SASL_PASSWORD_FILE=/run/secrets/kafka_password   # a secret / credential (ingest.secrets)
    LINEWATCH_KAFKA_SSL_CAFILE=/run/secrets/kafka_ca.crt             # the CA that signed the broker's certificate

The broker's certificate must name the host clients connect to (hostnames are checked).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ingest.secrets import password_setting


class KafkaSettings(BaseSettings):
    """Where the broker is and how to authenticate; read from ``LINEWATCH_*`` variables."""

    model_config = SettingsConfigDict(env_prefix="LINEWATCH_", extra="ignore")

    kafka_bootstrap: str = Field("localhost:9092", description="comma-separated host:port list")
    kafka_client_id: str = "linewatch"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_sasl_password_file: Path | None = Field(
        None, description="file holding the SASL password (a Docker secret, a systemd credential); wins over "
        "kafka_sasl_password; an empty file gives kafka_sasl_password's (none when unset)")
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    topic_prefix: str = "linewatch"
    # kafka-python backs off reconnecting up to 30 s, which leaves a service idle that long after a
    # broker restart; the Java client's 1 s brings it back as soon as the broker serves again
    kafka_reconnect_backoff_max_ms: int = Field(1000, gt=0, description="longest wait between reconnect attempts")
    kafka_max_message_bytes: int = Field(
        16 * 1024 * 1024,
        gt=0,
        description="largest record (key + value + headers) a linewatch producer sends",
    )

    def topic(self, stream: Literal["frames", "results", "deadletter"]) -> str:
        return f"{self.topic_prefix}.{stream}"

    @model_validator(mode="after")
    def _password_from_file(self) -> "KafkaSettings":
        self.kafka_sasl_password = password_setting(
            self.kafka_sasl_password_file, "LINEWATCH_KAFKA_SASL_PASSWORD_FILE", self.kafka_sasl_password)
        return self

    def _require_password(self) -> None:
        # checked when connecting, not when the settings load: pods and units that share the SASL
        # settings but never talk to Kafka get no password, and must still start
        mechanism = (self.kafka_sasl_mechanism or "").upper()
        if (mechanism == "PLAIN" or mechanism.startswith("SCRAM")) and not self.kafka_sasl_password:
            where = (f"LINEWATCH_KAFKA_SASL_PASSWORD_FILE ({self.kafka_sasl_password_file}) is empty"
                     if self.kafka_sasl_password_file is not None else
                     "set LINEWATCH_KAFKA_SASL_PASSWORD_FILE (or LINEWATCH_KAFKA_SASL_PASSWORD)")
            raise ValueError(f"LINEWATCH_KAFKA_SASL_MECHANISM={self.kafka_sasl_mechanism} needs a password: {where}")

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments common to kafka-python's producer, consumer and admin client."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.kafka_bootstrap.split(",") if s.strip()],
            "client_id": self.kafka_client_id,
            "security_protocol": self.kafka_security_protocol,
            "reconnect_backoff_max_ms": self.kafka_reconnect_backoff_max_ms,
        }
        if self.kafka_sasl_mechanism:
            self._require_password()
            kwargs["sasl_mechanism"] = self.kafka_sasl_mechanism
            kwargs["sasl_plain_username"] = self.kafka_sasl_username
            kwargs["sasl_plain_password"] = self.kafka_sasl_password
        for key in ("cafile", "certfile", "keyfile"):
            value = getattr(self, f"kafka_ssl_{key}")
            if value:
                kwargs[f"ssl_{key}"] = value
        return kwargs
