"""Bridge settings, read from ``LINEWATCH_*`` environment variables (pydantic-settings).

=====================================  ====================================  ==========================================
variable                               default                               meaning
=====================================  ====================================  ==========================================
``LINEWATCH_BRIDGE_GROUP``             ``linewatch-bridge-<kind>``           Kafka consumer group
``LINEWATCH_BRIDGE_START``             ``latest``                            where a *new* group starts: ``latest``
                                                                             (only verdicts from now on) or
                                                                             ``earliest``
``LINEWATCH_BRIDGE_BATCH_SIZE``        ``100``                               results per poll / commit
``LINEWATCH_BRIDGE_ACK_TIMEOUT_S``     ``5``                                 a batch not acknowledged by then is
                                                                             redone after a backoff (nothing is
                                                                             committed)
``LINEWATCH_MQTT_HOST``                ``localhost``                         MQTT broker
``LINEWATCH_MQTT_PORT``                ``1883``                              (8883 is usual with TLS)
``LINEWATCH_MQTT_USERNAME`` / ``..._PASSWORD``                               broker login (optional)
``LINEWATCH_MQTT_PASSWORD_FILE``       unset                                 file holding the password (a Docker
                                                                             secret, a systemd credential); wins
                                                                             over ``..._PASSWORD``; empty: that one
``LINEWATCH_MQTT_CAFILE``              unset                                 CA file: turns TLS on
``LINEWATCH_MQTT_CLIENT_ID``           ``linewatch-bridge-<host>``           MQTT client id (persistent session)
``LINEWATCH_MQTT_TOPIC_ROOT``          ``linewatch``                         verdicts go to ``<root>/<line>/<camera>``
``LINEWATCH_OPCUA_ENDPOINT``           ``opc.tcp://0.0.0.0:4840/linewatch/``  where the OPC UA server listens
``LINEWATCH_OPCUA_NAMESPACE``          ``urn:linewatch``                     namespace URI of the camera nodes
=====================================  ====================================  ==========================================
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ingest.secrets import password_setting


class BridgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LINEWATCH_", extra="ignore")

    bridge_group: str | None = None
    bridge_start: Literal["latest", "earliest"] = "latest"
    bridge_batch_size: int = Field(100, ge=1, le=10000)
    bridge_ack_timeout_s: float = Field(5.0, gt=0)

    mqtt_host: str = "localhost"
    mqtt_port: int = Field(1883, gt=0, lt=65536)
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_password_file: Path | None = None
    mqtt_cafile: str | None = None
    mqtt_client_id: str = Field(default_factory=lambda: f"linewatch-bridge-{socket.gethostname()}")
    mqtt_topic_root: str = "linewatch"
    mqtt_keepalive_s: int = Field(30, ge=5)

    opcua_endpoint: str = "opc.tcp://0.0.0.0:4840/linewatch/"
    opcua_namespace: str = "urn:linewatch"

    @model_validator(mode="after")
    def _password_from_file(self) -> "BridgeSettings":
        self.mqtt_password = password_setting(self.mqtt_password_file, "LINEWATCH_MQTT_PASSWORD_FILE",
                                              self.mqtt_password)
        return self

    def group(self, kind: str) -> str:
        return self.bridge_group or f"linewatch-bridge-{kind}"
