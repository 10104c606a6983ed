"""The detector service in-process on the real broker, with a producer that refuses the first sends:
nothing may be committed before the results are acknowledged, and the batch must be redone."""

from __future__ import annotations

import threading
import time

import pytest
from kafka.errors import KafkaError
from kafka.future import Future

from ingest.producer import publish_folder
from ingest.topics import ensure_topics

from .harness import wait_for

pytestmark = pytest.mark.kafka


class FlakyProducer:
    """Wraps a KafkaProducer; the first ``fail`` sends come back as failed futures."""

    def __init__(self, real, fail: int):
        self.real = real
        self.fail = fail
        self.sent = 0

    def send(self, *args, **kwargs):
        self.sent += 1
        if self.sent <= self.fail:
            f = Future()
            f.failure(KafkaError("injected: broker did not acknowledge"))
            return f
        return self.real.send(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_results_not_acknowledged_are_neither_committed_nor_lost(kafka_test_settings, pipeline_checkpoint,
                                                                   frames_dir):
    from detector.service.routing import ModelHolder, load_routing
    from detector.service.service import DetectorService
    from detector.service.settings import ServiceSettings
    from tests.pipeline.harness import Pipeline

    settings = kafka_test_settings
    ensure_topics(settings, 2)
    metas = publish_folder(settings, frames_dir, camera_id="cam-f", product="toy", limit=10, partitions=None)
    group = f"{settings.topic_prefix}-detector"
    ss = ServiceSettings(model=pipeline_checkpoint, group=group, max_batch=4, max_wait_ms=20, device="cpu",
                         session_timeout_ms=6000, sample_rate=0.0)

    from detector.inference import Detector

    holder = ModelHolder(lambda p: Detector.load(p, device="cpu", batch_size=4))
    holder.load(load_routing(None, pipeline_checkpoint))
    service = DetectorService(settings, ss, holder)
    connect = service.loop.connect
    flaky: list[FlakyProducer] = []

    def connect_with_flaky_producer() -> None:
        connect()
        flaky.append(FlakyProducer(service.loop.producer, fail=3))
        service.loop.producer = flaky[0]

    service.loop.connect = connect_with_flaky_producer
    probe = Pipeline.__new__(Pipeline)  # only its Kafka probes
    probe.settings = settings
    committed_early: list[bool] = []

    def watch() -> None:  # while sends fail, the group must not commit anything
        while not flaky or flaky[0].sent <= 3:
            time.sleep(0.01)
        committed_early.append(any(v is not None for v in probe.committed(group, "frames").values()))

    t = threading.Thread(target=service.run, daemon=True)
    t.start()
    w = threading.Thread(target=watch, daemon=True)
    w.start()
    try:
        wait_for(lambda: service.scored >= 10 and probe.caught_up(group, "frames"), 120, "all frames scored")
    finally:
        service.stop()
        t.join(60)
    assert not t.is_alive()
    errors = service.metrics.registry.get_sample_value("linewatch_detector_errors_total", {"reason": "publish"})
    assert errors >= 1
    assert committed_early == [False]
    results = probe.read_topic("results")
    from detector.messages import InspectionResult

    ids = [InspectionResult.from_bytes(r.value).frame_id for r in results]
    assert set(ids) == {m.frame_id for m in metas}  # nothing lost; some may be there twice (at least once)
    assert not probe.read_topic("deadletter", idle_s=0.5)
    # every scored frame reached the drift monitor, per camera and model version, which compares
    # them with the training set's reference stored in the checkpoint
    (camera, version), = service.drift.tracks
    track = service.drift.tracks[(camera, version)]
    assert camera == "cam-f" and version == Detector.load(pipeline_checkpoint, device="cpu").version
    assert track.reference is not None and track.reference.source == "training"
    assert not track.baseline_scores
    # ... each frame once, though the batch whose results were not acknowledged was scored twice
    assert sorted(track.frame_ids) == sorted(m.frame_id for m in metas) and len(track.window) == len(metas)


def test_an_inference_batch_is_bounded_by_decoded_pixels_too(kafka_settings, pipeline_checkpoint):
    """Frames under the per-frame pixel limit still cannot pile up into one huge inference batch."""
    from datetime import datetime, timezone
    from types import SimpleNamespace

    import cv2
    import numpy as np

    from detector.inference import Detector
    from detector.service.routing import ModelHolder, load_routing
    from detector.service.service import DetectorService
    from detector.service.settings import ServiceSettings
    from ingest.messages import FrameMeta

    batches: list[list[int]] = []

    class Recording:  # the real detector, noting the pixels of every batch it is given
        def __init__(self, det):
            self.det = det

        def predict(self, frames):
            batches.append([f.shape[0] * f.shape[1] for f in frames])
            return self.det.predict(frames)

        def __getattr__(self, name):
            return getattr(self.det, name)

    holder = ModelHolder(lambda p: Recording(Detector.load(p, device="cpu", batch_size=8)))
    holder.load(load_routing(None, pipeline_checkpoint))
    ss = ServiceSettings(model=pipeline_checkpoint, max_batch=8, max_frame_pixels=40 * 40,
                         max_batch_pixels=3 * 30 * 30, device="cpu", sample_rate=0.0)
    service = DetectorService(kafka_settings, ss, holder)
    sent = []
    service.loop.send = lambda topic, key, value, headers=None: sent.append(value)
    now = datetime.now(timezone.utc)
    ok, png = cv2.imencode(".png", np.full((30, 30, 3), 128, np.uint8))
    records = []
    for i in range(8):
        meta = FrameMeta(frame_id=f"px-{i}", line="l", station="s", camera_id="cam-px", seq=i, captured_at=now,
                         content_type="image/png")
        records.append(SimpleNamespace(topic="t", partition=0, offset=i, key=b"cam-px", value=png.tobytes(),
                                       headers=meta.to_headers(), timestamp=int(now.timestamp() * 1000)))
    assert service.handle(records) == []
    assert len(sent) == 8
    assert [len(b) for b in batches] == [3, 3, 2]
    assert all(sum(b) <= 3 * 30 * 30 for b in batches)


def _png_records(camera: str, n: int, side: int = 30):
    from datetime import datetime, timezone
    from types import SimpleNamespace

    import cv2
    import numpy as np

    from ingest.messages import FrameMeta

    now = datetime.now(timezone.utc)
    records = []
    for i in range(n):
        ok, png = cv2.imencode(".png", np.full((side, side, 3), 40 + 10 * i, np.uint8))
        meta = FrameMeta(frame_id=f"{camera}-{i}", line="l", station="s", camera_id=camera, seq=i, captured_at=now,
                         content_type="image/png")
        records.append(SimpleNamespace(topic="t", partition=0, offset=i, key=camera.encode(), value=png.tobytes(),
                                       headers=meta.to_headers(), timestamp=int(now.timestamp() * 1000)))
    return records


def test_results_are_sent_while_the_next_batch_is_inferred(kafka_settings, pipeline_checkpoint):
    """One batch's results are encoded and sent in the worker while the next batch is inferred; all of
    them are out, in record order, before handle returns (the loop flushes and commits after it)."""
    from detector.inference import Detector
    from detector.messages import InspectionResult
    from detector.service.routing import ModelHolder, load_routing
    from detector.service.service import DetectorService
    from detector.service.settings import ServiceSettings

    first_sent = threading.Event()
    overlapped: list[bool] = []

    class WaitsForTheFirstResults:  # the second batch's inference starts only once batch 1 is being sent
        def __init__(self, det):
            self.det = det
            self.calls = 0

        def predict(self, frames):
            self.calls += 1
            if self.calls == 2:
                overlapped.append(first_sent.wait(20))
            return self.det.predict(frames)

        def __getattr__(self, name):
            return getattr(self.det, name)

    holder = ModelHolder(lambda p: WaitsForTheFirstResults(Detector.load(p, device="cpu", batch_size=4)))
    holder.load(load_routing(None, pipeline_checkpoint))
    service = DetectorService(kafka_settings, ServiceSettings(model=pipeline_checkpoint, max_batch=4, device="cpu",
                                                              sample_rate=0.0), holder)
    sent: list[tuple[str, str]] = []

    def send(topic, key, value, headers=None):
        sent.append((threading.current_thread().name, InspectionResult.from_bytes(value).frame_id))
        first_sent.set()

    service.loop.send = send
    records = _png_records("cam-ov", 10)
    assert service.handle(records) == []
    assert overlapped == [True]
    assert [fid for _, fid in sent] == [f"cam-ov-{i}" for i in range(10)]
    assert all(name.startswith("detector-results") for name, _ in sent)
    assert service._stats["scored"] == 10


def test_a_send_failing_in_the_worker_fails_the_batch_with_nothing_left_running(kafka_settings, pipeline_checkpoint):
    from detector.inference import Detector
    from detector.service.routing import ModelHolder, load_routing
    from detector.service.service import DetectorService
    from detector.service.settings import ServiceSettings
    from ingest.service_loop import RetryLater

    holder = ModelHolder(lambda p: Detector.load(p, device="cpu", batch_size=4))
    holder.load(load_routing(None, pipeline_checkpoint))
    service = DetectorService(kafka_settings, ServiceSettings(model=pipeline_checkpoint, max_batch=4, device="cpu",
                                                              sample_rate=0.0), holder)
    sent: list[bytes] = []

    def send(topic, key, value, headers=None):
        if len(sent) == 5:
            raise RetryLater("send failed: injected")
        sent.append(value)

    service.loop.send = send
    with pytest.raises(RetryLater, match="injected"):
        service.handle(_png_records("cam-rl", 12))
    assert len(sent) == 5  # the failing batch stopped there, and the third batch was never handed over
    time.sleep(0.2)
    assert len(sent) == 5
    service.loop.send = lambda topic, key, value, headers=None: sent.append(value)
    assert service.handle(_png_records("cam-rl", 12)) == [] and len(sent) == 17  # redone in full
