"""Shared test fixtures.

Kafka (real broker, never a fake):

* ``kafka_settings`` (session): :class:`ingest.kafka_config.KafkaSettings` for a running broker.
  If ``LINEWATCH_KAFKA_BOOTSTRAP`` is set, that cluster is used as it is (with any other
  ``LINEWATCH_KAFKA_*`` settings from the environment).  Otherwise one single-node KRaft broker
  is started for the whole session with ``deploy/kafka/kafka.sh`` (in a temporary directory, on
  a free port) the first time a test asks for it, and stopped at the end of the session.  Test
  runs that use no Kafka fixture never start it.
* ``topic_prefix`` (function): a prefix unique to the test; isolate a test with
  ``settings = kafka_settings.model_copy(update={"topic_prefix": topic_prefix})``.
* ``kafka_test_settings`` (function): exactly that copy, for convenience.
* ``kafka_env`` (function): ``os.environ`` plus ``LINEWATCH_KAFKA_BOOTSTRAP`` and
  ``LINEWATCH_TOPIC_PREFIX`` for the test, for CLI subprocesses.

Tests that use a Kafka fixture get the ``kafka`` marker automatically (``-m "not kafka"`` skips them).

Data: ``shared_dir`` (session) is ``LINEWATCH_SHARED_DIR`` or ``<repo>/../shared`` (skips if absent).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# The service's default backend, auto, exports each new checkpoint to ONNX at its first load (tens of
# CPU seconds for the tests' tiny models, every one of them new): the suite's services run on torch
# unless the caller chose (LINEWATCH_DETECTOR_BACKEND=auto runs them on the default).  The default's
# own behaviour is tested in tests/detector/test_export.py.
os.environ.setdefault("LINEWATCH_DETECTOR_BACKEND", "torch")
KAFKA_SH = REPO_ROOT / "deploy" / "kafka" / "kafka.sh"
_KAFKA_FIXTURES = {"kafka_settings", "topic_prefix", "kafka_test_settings", "kafka_env"}


def pytest_configure(config):
    # kafka-python 3.0 loads its protocol schemas with deprecated importlib.resources calls
    config.addinivalue_line("filterwarnings", "ignore:read_text is deprecated:DeprecationWarning")
    config.addinivalue_line("filterwarnings", "ignore:open_text is deprecated:DeprecationWarning")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _KAFKA_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kafka)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = Path(os.environ.get("LINEWATCH_SHARED_DIR") or REPO_ROOT.parent / "shared")
    if not path.is_dir():
        pytest.skip(f"shared data directory {path} not found (set LINEWATCH_SHARED_DIR)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_serving(settings, timeout_s: float = 60.0) -> None:
    """The broker accepts connections: wait until it also answers metadata requests."""
    from kafka import KafkaAdminClient

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(**settings.client_kwargs(), request_timeout_ms=10000)
            try:
                admin.describe_cluster()
                admin.list_topics()
                return
            finally:
                admin.close()
        except Exception as exc:  # noqa: BLE001 - keep retrying until the deadline
            last = exc
            time.sleep(0.5)
    raise RuntimeError(f"Kafka at {settings.kafka_bootstrap} does not answer: {last!r}")


@pytest.fixture(scope="session")
def kafka_settings(tmp_path_factory):
    from ingest.kafka_config import KafkaSettings

    if os.environ.get("LINEWATCH_KAFKA_BOOTSTRAP"):
        settings = KafkaSettings()
        _wait_until_serving(settings)
        yield settings
        return

    broker_dir = tmp_path_factory.mktemp("kafka")
    port = _free_port()
    env = {**os.environ, "KAFKA_WATCH_PID": str(os.getpid())}
    started = subprocess.run(
        ["bash", str(KAFKA_SH), "start", str(broker_dir), str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=600,  # the first run on a machine resolves the jars from Maven Central
    )
    if started.returncode != 0:
        subprocess.run(["bash", str(KAFKA_SH), "stop", str(broker_dir)], timeout=120)
        pytest.fail(f"could not start Kafka:\n{started.stderr[-4000:]}", pytrace=False)
    try:
        settings = KafkaSettings(
            kafka_bootstrap=f"127.0.0.1:{port}",
            kafka_client_id="linewatch-tests",
            kafka_security_protocol="PLAINTEXT",
        )
        _wait_until_serving(settings)
        yield settings
    finally:
        subprocess.run(["bash", str(KAFKA_SH), "stop", str(broker_dir)], timeout=120)


@pytest.fixture
def topic_prefix(request) -> str:
    name = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:40]
    return f"lwtest-{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def kafka_test_settings(kafka_settings, topic_prefix):
    return kafka_settings.model_copy(update={"topic_prefix": topic_prefix})


@pytest.fixture
def kafka_env(kafka_settings, topic_prefix) -> dict[str, str]:
    env = dict(os.environ)
    env["LINEWATCH_KAFKA_BOOTSTRAP"] = kafka_settings.kafka_bootstrap
    env["LINEWATCH_TOPIC_PREFIX"] = topic_prefix
    return env
