"""The clients' SASL_SSL / SCRAM-SHA-512 settings against a real broker offering that listener.

A broker of its own from ``deploy/kafka/kafka.sh`` (``KAFKA_SASL_SSL_PORT``), with certificates
from ``deploy/kafka/certs.sh`` (a throw-away CA): the settings the Compose and Kubernetes deployments give the
services (LINEWATCH_KAFKA_SECURITY_PROTOCOL=SASL_SSL, SCRAM-SHA-512, the password from a file, the
CA file) create topics, produce and consume; a wrong password or an untrusted certificate does not
get through.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import KAFKA_SH, _free_port

CERTS_SH = KAFKA_SH.parent / "certs.sh"

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


def _certificates(d) -> None:
    """The deployments' script: ca.crt, kafka.keystore.p12 (+ its password) for 127.0.0.1 and
    localhost; and a second CA that signed nothing (a client trusting only it must refuse)."""
    subprocess.run(["bash", str(CERTS_SH), str(d), "localhost", "127.0.0.1"], check=True, capture_output=True,
                   timeout=120)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key",
                    "-out", "other.crt", "-days", "2", "-subj", "/CN=someone else"], cwd=d, check=True,
                   capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def sasl_ssl_broker(tmp_path_factory):
    d = tmp_path_factory.mktemp("kafka-sasl")
    _certificates(d)
    port, sport = _free_port(), _free_port()
    env = {**os.environ, "KAFKA_WATCH_PID": str(os.getpid()), "KAFKA_SASL_SSL_PORT": str(sport),
           "KAFKA_SSL_KEYSTORE": str(d / "kafka.keystore.p12"),
           "KAFKA_SSL_KEYSTORE_PASSWORD": (d / "keystore_password").read_text().strip(),
           "KAFKA_SCRAM_USER": "linewatch", "KAFKA_SCRAM_PASSWORD": (d / "kafka_password").read_text().strip()}
    started = subprocess.run(["bash", str(KAFKA_SH), "start", str(d / "broker"), str(port)], env=env,
                             capture_output=True, text=True, timeout=600)
    try:
        if started.returncode != 0:
            pytest.fail(f"could not start Kafka with SASL_SSL:\n{started.stderr[-4000:]}", pytrace=False)
        yield d, sport
    finally:
        subprocess.run(["bash", str(KAFKA_SH), "stop", str(d / "broker")], timeout=120)


def _settings(d, sport, **overrides):
    from ingest.kafka_config import KafkaSettings

    values = dict(kafka_bootstrap=f"127.0.0.1:{sport}", kafka_security_protocol="SASL_SSL",
                  kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="linewatch",
                  kafka_sasl_password_file=d / "kafka_password", kafka_ssl_cafile=str(d / "ca.crt"),
                  topic_prefix="sasl")
    values.update(overrides)
    return KafkaSettings(**values)


def test_clients_connect_with_scram_over_tls(sasl_ssl_broker):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from ingest.topics import ensure_topics

    d, sport = sasl_ssl_broker
    settings = _settings(d, sport)
    assert settings.client_kwargs()["sasl_plain_password"] == (d / "kafka_password").read_text().strip()
    ensure_topics(settings, 1)
    producer = KafkaProducer(**settings.client_kwargs())
    try:
        producer.send(settings.topic("frames"), key=b"cam-1", value=b"over TLS").get(timeout=30)
    finally:
        producer.close()
    consumer = KafkaConsumer(**settings.client_kwargs(), auto_offset_reset="earliest", consumer_timeout_ms=10000)
    try:
        consumer.assign([TopicPartition(settings.topic("frames"), 0)])
        values = [next(consumer).value]
    finally:
        consumer.close()
    assert values == [b"over TLS"]


@pytest.mark.parametrize("case", ["wrong password", "untrusted certificate", "plaintext"])
def test_wrong_credentials_or_certificate_do_not_get_through(sasl_ssl_broker, case):
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    d, sport = sasl_ssl_broker
    (d / "wrong").write_text("not-the-password\n")
    overrides = {"wrong password": {"kafka_sasl_password_file": d / "wrong"},
                 "untrusted certificate": {"kafka_ssl_cafile": str(d / "other.crt")},
                 "plaintext": {"kafka_security_protocol": "PLAINTEXT", "kafka_sasl_mechanism": None}}[case]
    settings = _settings(d, sport, **overrides)
    with pytest.raises(KafkaError):
        admin = KafkaAdminClient(**settings.client_kwargs(), request_timeout_ms=3000, bootstrap_timeout_ms=3000)
        admin.close()


def test_sasl_password_file_wins_and_a_missing_one_is_a_clear_error(tmp_path):
    from ingest.kafka_config import KafkaSettings

    (tmp_path / "pw").write_text("from-file\n")
    settings = KafkaSettings(kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="u",
                             kafka_sasl_password="from-env", kafka_sasl_password_file=tmp_path / "pw")
    assert settings.client_kwargs()["sasl_plain_password"] == "from-file"
    with pytest.raises(ValueError, match="LINEWATCH_KAFKA_SASL_PASSWORD_FILE: cannot read .*nope"):
        KafkaSettings(kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_password_file=tmp_path / "nope")


def test_sasl_password_from_a_systemd_credential(tmp_path, monkeypatch):
    """The units' layout: LINEWATCH_KAFKA_SASL_PASSWORD_FILE=%d/kafka-password, i.e. a file in
    $CREDENTIALS_DIRECTORY; without /etc/linewatch/kafka-password systemd hands an empty line
    (SetCredential=), which is no password: fine for PLAINTEXT, a clear error once SCRAM needs one."""
    from ingest.kafka_config import KafkaSettings

    creds = tmp_path / "credentials"
    creds.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.setenv("LINEWATCH_KAFKA_SASL_PASSWORD_FILE", str(creds / "kafka-password"))
    (creds / "kafka-password").write_text("s3cret:from=credential\n")
    monkeypatch.setenv("LINEWATCH_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("LINEWATCH_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("LINEWATCH_KAFKA_SASL_USERNAME", "linewatch")
    assert KafkaSettings().client_kwargs()["sasl_plain_password"] == "s3cret:from=credential"

    (creds / "kafka-password").write_text("\n")  # SetCredential=kafka-password:\n
    empty = KafkaSettings()  # loads: units that share the settings but never connect must start
    with pytest.raises(ValueError, match=r"SCRAM-SHA-512 needs a password: LINEWATCH_KAFKA_SASL_PASSWORD_FILE "
                                         r"\(.*kafka-password\) is empty"):
        empty.client_kwargs()
    monkeypatch.setenv("LINEWATCH_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    monkeypatch.delenv("LINEWATCH_KAFKA_SASL_MECHANISM")
    assert "sasl_plain_password" not in KafkaSettings().client_kwargs()

    (creds / "kafka-password").unlink()
    with pytest.raises(ValueError, match="LINEWATCH_KAFKA_SASL_PASSWORD_FILE: cannot read .*kafka-password"):
        KafkaSettings()


@pytest.mark.parametrize("service", ["detector serve", "bridge mqtt", "bridge opcua"])
def test_a_service_without_its_sasl_password_stops_with_a_clear_error(service, tmp_path, monkeypatch, capsys):
    """The check made when connecting (not when the settings load) still reaches the operator as one
    line naming the setting, before any model is loaded, not as a traceback."""
    (tmp_path / "kafka-password").write_text("\n")  # SetCredential=kafka-password:\n, no file installed
    for name, value in {"LINEWATCH_KAFKA_BOOTSTRAP": f"127.0.0.1:{_free_port()}",
                        "LINEWATCH_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                        "LINEWATCH_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "LINEWATCH_KAFKA_SASL_USERNAME": "linewatch",
                        "LINEWATCH_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "kafka-password"),
                        "LINEWATCH_DETECTOR_MODEL": str(tmp_path / "no-model.pt"),
                        "LINEWATCH_MODEL_STORE_DIR": str(tmp_path / "models")}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LINEWATCH_KAFKA_SASL_PASSWORD", raising=False)
    if service == "detector serve":
        from detector.cli import main
    else:
        from storage.bridges.cli import main
    rc = main(service.split()[1:] + (["--endpoint", f"opc.tcp://127.0.0.1:{_free_port()}/t/"]
                                     if service == "bridge opcua" else []))
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err
    assert "SCRAM-SHA-512 needs a password: LINEWATCH_KAFKA_SASL_PASSWORD_FILE" in err, err
