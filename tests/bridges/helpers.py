"""Bridge test parts: mosquitto, a results topic with bridge processes on it, an MQTT subscriber."""

from __future__ import annotations

import getpass
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.ingest.helpers import consume_all
from tests.pipeline.harness import free_port, http_get

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


class Mosquitto:
    """One mosquitto process on a fixed loopback port; stop() and start() again keep the port."""

    def __init__(self, workdir: Path, password_file: Path | None = None) -> None:
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        # started as root, mosquitto drops to the user "mosquitto", who cannot read a test's files: stay us
        login = (f"allow_anonymous false\npassword_file {password_file}\nuser {getpass.getuser()}\n"
                 if password_file else "allow_anonymous true\n")
        self.conf.write_text(f"listener {self.port} 127.0.0.1\n{login}persistence false\n")
        self.log = workdir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT)
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


class ResultsLine:
    """``<prefix>.results`` on the real broker, a producer for it and ``linewatch-bridge`` processes."""

    def __init__(self, settings, env: dict[str, str], tmp_path: Path, kind: str) -> None:
        from kafka import KafkaProducer

        from ingest.topics import ensure_topics

        self.settings = settings
        self.kind = kind
        self.group = f"{settings.topic_prefix}-bridge"
        ensure_topics(settings, partitions=2)
        self.env = dict(env)
        self.tmp_path = tmp_path
        self.producer = KafkaProducer(**settings.client_kwargs(), acks="all")
        self.procs: list[subprocess.Popen] = []
        self.http_port = 0

    def publish(self, results) -> None:
        for r in results:
            self.producer.send(self.settings.topic("results"), key=r.camera_id.encode(), value=r.to_bytes())
        self.producer.flush(30)

    def publish_raw(self, value: bytes, key: bytes = b"cam-x") -> None:
        self.producer.send(self.settings.topic("results"), key=key, value=value)
        self.producer.flush(30)

    def start_bridge(self, *extra: str) -> subprocess.Popen:
        self.http_port = free_port()
        log = open(self.tmp_path / f"bridge-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "storage.bridges.cli", self.kind, "--from", "earliest", "--group", self.group,
             "--http-port", str(self.http_port), *extra],
            env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def log_text(self) -> str:
        return "\n".join((self.tmp_path / f"bridge-{i}.log").read_text(errors="replace") for i in range(len(self.procs)))

    def http(self, path: str) -> tuple[int, str]:
        status, body = http_get(self.http_port, path, timeout=2)
        return status, body.decode()

    def committed(self) -> int:
        """Sum of the group's committed offsets over the results partitions."""
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(**self.settings.client_kwargs())
        try:
            offsets = admin.list_group_offsets(self.group).get(self.group, {})
        finally:
            admin.close()
        return sum(max(0, o.offset) for tp, o in offsets.items() if tp.topic == self.settings.topic("results"))

    def dead_letters(self, expect: int) -> list:
        return consume_all(self.settings, self.settings.topic("deadletter"), expect, timeout_s=15, idle_s=0.5)

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        self.producer.close()


class Subscriber:
    """An MQTT client subscribed to ``<root>/#`` with QoS 1, collecting every message.

    ``messages``: ``(topic, payload as JSON, qos, retained, unix arrival time)``.
    """

    def __init__(self, port: int, topic: str = "linewatch/#") -> None:
        import paho.mqtt.client as mqtt

        self.messages: list = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "MQTT subscription not acknowledged"

    def _on_message(self, client, userdata, msg) -> None:
        arrived = time.time()
        with self._lock:
            self.messages.append((msg.topic, json.loads(msg.payload), msg.qos, bool(msg.retain), arrived))

    def snapshot(self) -> list:
        with self._lock:
            return list(self.messages)

    def frame_ids(self) -> set[str]:
        return {m[1]["frame_id"] for m in self.snapshot()}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
