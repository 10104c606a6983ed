"""Run the real pipeline for tests and the benchmark: detector + writer as subprocesses.

:class:`Pipeline` owns, for one topic prefix: the ``linewatch-detector serve`` and
``linewatch-storage writer`` processes (real CLIs, logs in files), the database they write to,
and small probes (rows, committed offsets, dead letters, HTTP endpoints).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]


def cli(name: str, module: str) -> list[str]:
    """The installed console script next to this interpreter, else ``python -m module``."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_for(cond: Callable[[], bool], timeout: float, what: str,
             procs: list[subprocess.Popen] | None = None, logs: Callable[[], str] | None = None,
             interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        for p in procs or []:
            if p.poll() is not None:
                raise AssertionError(f"{p.args[-1] if p.args else p} exited with {p.returncode} while waiting "
                                     f"for {what}\n{logs() if logs else ''}")
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs() if logs else ''}")


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file the way the service decodes a frame (OpenCV colour, then RGB)."""
    bgr = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def train_tiny_checkpoint(root: Path) -> Path:
    """The real EAR + FADeR detector, tiny, trained for a few epochs on generated parts (seconds).

    Accuracy does not matter to the pipeline tests and the soak benchmark, only that the service
    runs the real model, fast.
    """
    from detector.models.ear_fader import EarFaderTrainConfig
    from detector.synthetic import make_toy_dataset
    from detector.workflow import train_model
    from tests.detector.conftest import tiny_config

    data = make_toy_dataset(root / "toy", n_train=16, n_good=4, n_bad=4, size=64, seed=0)
    tc = EarFaderTrainConfig(epochs_ear=2, epochs_fader=1, batch_size=8, auto_m=False, auto_q=False)
    out = root / "toy.pt"
    train_model(None, out, data=[data], configs=(tiny_config(), tc), product="toy", device="cpu", progress=False)
    return out


class Pipeline:
    """Detector and writer processes for one topic prefix and one database."""

    def __init__(self, settings, db_env: dict[str, str], db_url: str, log_dir: Path, checkpoint: str | Path, *,
                 partitions: int = 3, session_timeout_ms: int = 6000):
        from ingest.topics import ensure_topics

        self.settings = settings
        self.db_url = db_url
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint = str(checkpoint)
        self.detector_group = f"{settings.topic_prefix}-detector"
        self.writer_group = f"{settings.topic_prefix}-writer"
        ensure_topics(settings, partitions)
        self.env = dict(db_env)
        self.env.update(
            LINEWATCH_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
            LINEWATCH_TOPIC_PREFIX=settings.topic_prefix,
            LINEWATCH_WRITER_GROUP=self.writer_group,
            LINEWATCH_DETECTOR_GROUP=self.detector_group,
            LINEWATCH_DETECTOR_SESSION_TIMEOUT_MS=str(session_timeout_ms),
            LINEWATCH_WRITER_SESSION_TIMEOUT_MS=str(session_timeout_ms),
            PYTHONUNBUFFERED="1",
        )
        self.procs: list[subprocess.Popen] = []
        self._log_files: list[Path] = []
        self._engine = None

    # ------------------------------------------------------------------ processes
    def _start(self, kind: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        path = self.log_dir / f"{kind}-{len(self.procs)}.log"
        with open(path, "wb") as log:
            proc = subprocess.Popen(argv, env=env or self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        self.procs.append(proc)
        self._log_files.append(path)
        return proc

    def start_detector(self, *extra: str, http_port: int | None = None, env: dict[str, str] | None = None,
                       device: str = "cpu", model: bool = True):
        argv = [*cli("linewatch-detector", "detector.cli"), "serve", "--device", device, *extra]
        if model:
            argv += ["--model", self.checkpoint]
        if http_port is not None:
            argv += ["--http-port", str(http_port)]
        return self._start("detector", argv, {**self.env, **(env or {})})

    def start_writer(self, *extra: str):
        return self._start("writer", [*cli("linewatch-storage", "storage.cli"), "writer", *extra])

    def wait_ready(self, port: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
        def ready() -> bool:
            try:
                return http_get(port, "/readyz", timeout=2)[0] == 200
            except OSError:
                return False

        wait_for(ready, timeout, "the detector to be ready", [proc], self.logs)

    def logs(self, tail: int = 3000) -> str:
        out = []
        for p in self._log_files:
            try:
                text = p.read_text(errors="replace")
            except OSError:
                continue
            out.append(f"--- {p.name} ---\n{text[-tail:]}")
        return "\n".join(out)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        if self._engine is not None:
            self._engine.dispose()

    # ------------------------------------------------------------------ database
    @property
    def engine(self):
        if self._engine is None:
            from storage.db import make_engine

            self._engine = make_engine(self.db_url)
        return self._engine

    def rows(self) -> int:
        from sqlalchemy import func, select

        from storage.models import Inspection

        try:
            with self.engine.connect() as c:
                return int(c.scalar(select(func.count()).select_from(Inspection)))
        except Exception:  # noqa: BLE001 - table not there yet (writer migrating)
            return 0

    def inspections(self) -> list[Any]:
        from sqlalchemy import select

        from storage.models import Inspection

        with self.engine.connect() as c:
            return list(c.execute(select(Inspection)).all())

    # ------------------------------------------------------------------ Kafka probes
    def caught_up(self, group: str, stream: str) -> bool:
        """The group's committed offsets reached the end of every partition of ``stream``."""
        from kafka import KafkaConsumer, TopicPartition

        topic = self.settings.topic(stream)
        consumer = KafkaConsumer(**self.settings.client_kwargs(), group_id=group, enable_auto_commit=False)
        try:
            tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            ends = consumer.end_offsets(tps)
            committed = {tp: consumer.committed(tp) for tp in tps}
        finally:
            consumer.close(autocommit=False)
        return bool(tps) and all(ends[tp] == 0 or (committed[tp] is not None and committed[tp] >= ends[tp])
                                 for tp in tps)

    def committed(self, group: str, stream: str) -> dict[int, int | None]:
        """The group's committed offset per partition of ``stream`` (``None``: nothing committed)."""
        from kafka import KafkaConsumer, TopicPartition

        topic = self.settings.topic(stream)
        consumer = KafkaConsumer(**self.settings.client_kwargs(), group_id=group, enable_auto_commit=False)
        try:
            return {p: consumer.committed(TopicPartition(topic, p)) for p in consumer.partitions_for_topic(topic) or ()}
        finally:
            consumer.close(autocommit=False)

    def read_topic(self, stream: str, idle_s: float = 1.5, timeout_s: float = 30.0) -> list[Any]:
        """Every record of ``<prefix>.<stream>`` (no group), until ``idle_s`` of silence."""
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(**self.settings.client_kwargs(), group_id=None, auto_offset_reset="earliest",
                                 enable_auto_commit=False, fetch_max_bytes=64 * 1024 * 1024,
                                 max_partition_fetch_bytes=32 * 1024 * 1024)
        try:
            consumer.subscribe([self.settings.topic(stream)])
            out: list[Any] = []
            deadline = time.monotonic() + timeout_s
            quiet = time.monotonic()
            while time.monotonic() < deadline and time.monotonic() - quiet < idle_s:
                got = consumer.poll(timeout_ms=300)
                for recs in got.values():
                    out.extend(recs)
                    quiet = time.monotonic()
            return out
        finally:
            consumer.close()


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """A sample's value from Prometheus text format (``None`` if absent)."""
    want = "" if not labels else "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == name + want:
            return float(value)
    return None


def json_body(body: bytes) -> dict:
    return json.loads(body.decode())


def env_without_kafka() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LINEWATCH_")}
