"""The MQTT bridge's password from a file (a systemd credential, a Docker secret), against Debian's
mosquitto requiring a login."""

from __future__ import annotations

import subprocess
import time

import pytest
from pydantic import ValidationError

from storage.bridges.settings import BridgeSettings

from .helpers import MOSQUITTO, Mosquitto


def _connects(settings: BridgeSettings, timeout_s: float = 5.0) -> bool:
    from storage.bridges.mqtt import MqttSink

    sink = MqttSink(settings)
    sink.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not sink.connected():
            time.sleep(0.05)
        return sink.connected()
    finally:
        sink.close()


@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed (deploy/ci/system-deps.sh installs it)")
def test_mqtt_password_from_a_credential_file_logs_in(tmp_path, monkeypatch):
    pytest.importorskip("paho.mqtt.client")
    users = tmp_path / "mosquitto.passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(users), "bridge", "pa ss:word"], check=True, timeout=30)
    users.chmod(0o600)
    broker = Mosquitto(tmp_path, password_file=users)
    broker.start()
    try:
        creds = tmp_path / "credentials"  # $CREDENTIALS_DIRECTORY, as LoadCredential=mqtt-password:... gives it
        creds.mkdir()
        (creds / "mqtt-password").write_text("pa ss:word\n")
        for name, value in {"LINEWATCH_MQTT_HOST": "127.0.0.1", "LINEWATCH_MQTT_PORT": str(broker.port),
                            "LINEWATCH_MQTT_USERNAME": "bridge", "LINEWATCH_MQTT_PASSWORD": "not-this-one",
                            "LINEWATCH_MQTT_PASSWORD_FILE": str(creds / "mqtt-password")}.items():
            monkeypatch.setenv(name, value)
        settings = BridgeSettings()
        assert settings.mqtt_password == "pa ss:word"
        assert _connects(settings)

        (creds / "mqtt-password").write_text("wrong\n")
        assert not _connects(BridgeSettings(), timeout_s=2)  # the broker checks it: the file's password is sent
    finally:
        broker.stop()


def test_mqtt_password_file_missing_is_a_clear_error_and_empty_means_none(tmp_path, monkeypatch):
    monkeypatch.setenv("LINEWATCH_MQTT_PASSWORD_FILE", str(tmp_path / "mqtt-password"))
    with pytest.raises(ValidationError, match="LINEWATCH_MQTT_PASSWORD_FILE: cannot read .*mqtt-password"):
        BridgeSettings()
    (tmp_path / "mqtt-password").write_text("\n")  # SetCredential=mqtt-password:\n, no file installed
    assert BridgeSettings().mqtt_password is None
    monkeypatch.setenv("LINEWATCH_MQTT_PASSWORD", "inline")
    assert BridgeSettings().mqtt_password == "inline"
