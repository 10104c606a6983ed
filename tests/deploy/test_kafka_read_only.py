"""The Kafka container of the Compose and Kubernetes deployments runs with a read-only root file
system: the broker as the manifest starts it serves the deployment's clients (SASL_SSL, SCRAM), and
writes only to the mounts the manifest makes writable.

Docker and Kubernetes are not available here: ``tests/deploy/kafka_container.py`` builds the
container's file system in a mount namespace (what is real there, and what stands in for the
image's scripts, is listed at its top).
"""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.conftest import KAFKA_SH
from tests.deploy import kafka_container

from .test_manifests import COMPOSE, K8S

CERTS_SH = KAFKA_SH.parent / "certs.sh"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    why = kafka_container.namespaces_available()
    if why:
        pytest.skip(why)
    subprocess.run(["bash", str(KAFKA_SH), "fetch"], check=True, capture_output=True, timeout=600)
    d = tmp_path_factory.mktemp("kafka-ro") / "certs"
    # the names both READMEs give certs.sh
    subprocess.run(["bash", str(CERTS_SH), str(d), "kafka", "kafka.linewatch.svc"], check=True,
                   capture_output=True, timeout=120)
    return d


def _container(deployment: str, certs) -> kafka_container.Container:
    if deployment == "compose":
        return kafka_container.from_compose(yaml.safe_load((COMPOSE / "compose.yaml").read_text()), certs)
    docs = list(yaml.safe_load_all((K8S / "kafka.yaml").read_text()))
    config = yaml.safe_load((K8S / "config.yaml").read_text())["data"]
    return kafka_container.from_k8s(docs, config, certs)


@pytest.mark.parametrize("deployment", ["compose", "k8s"])
def test_kafka_serves_from_a_read_only_root(deployment, certs, tmp_path):
    c = _container(deployment, certs)
    assert c.image == f"apache/kafka:{kafka_container.kafka_version()}"  # the broker run here is the image's
    assert set(c.writable) == {"/var/lib/kafka/data", "/opt/kafka/config", "/opt/kafka/logs", "/tmp"}
    assert c.writable["/tmp"], "/tmp must allow exec: the zstd and snappy codecs load native code from it"

    # Compose recreates tmpfs mounts on a restart: the image's script writes its configuration again
    done = kafka_container.run_read_only(c, tmp_path, restart=deployment == "compose")
    log = (tmp_path / "container.log").read_text(errors="replace")
    out = done.stdout
    assert done.returncode == 0 and "DONE" in out, out + log[-6000:]
    for path in ("/", "/etc/kafka", "/opt/kafka", "/opt/kafka/bin", "/var/lib"):
        assert f"PROBE {path} read-only" in out, out  # the root is read-only, really
    assert "PROBE native: native codecs loaded" in out, out
    assert out.count("HEALTHY") == out.count("STOPPED rc=143") == (2 if deployment == "compose" else 1), out
    assert out.count("CLIENT 20 records back") == out.count("HEALTHY"), out  # the same records after a restart
    assert "Read-only file system" not in log and "AccessDeniedException" not in log, log[-6000:]

    # what was written, and where: configuration, logs, data, the JVM's files in /tmp
    written = {path: {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}
               for path in c.writable for d in [kafka_container.writable_dir(tmp_path, path)]}
    assert {"server.properties", "log4j.properties", "tools-log4j.properties"} <= written["/opt/kafka/config"]
    assert {"server.log", "kafkaServer-gc.log"} <= written["/opt/kafka/logs"]
    data = c.env["KAFKA_LOG_DIRS"].removeprefix("/var/lib/kafka/data").strip("/")
    assert f"{data}/meta.properties".lstrip("/") in written["/var/lib/kafka/data"], written
