"""Ingest on the real broker: folder -> frames topic, failures, SIGTERM, size limit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict

import cv2
import numpy as np
import pytest

from ingest.frames import Frame, check_complete, decode_image
from ingest.messages import SCHEMA_VERSION, FrameMeta
from ingest.producer import FramePublisher, FrameTooLargeError, publish_folder
from ingest.runner import CameraInfo, IngestRunner, ReconnectPolicy
from ingest.simulator import LineSimulator, write_normal_parts
from ingest.sources import FrameSource, OpenCVSource, SourceError
from ingest.topics import ensure_topics

from .helpers import consume_all


def test_folder_source_publishes_every_frame_with_headers_keys_and_order(kafka_test_settings, tmp_path):
    settings = kafka_test_settings
    ensure_topics(settings, partitions=3)
    folders = {"cam-a": tmp_path / "a", "cam-b": tmp_path / "b"}
    write_normal_parts(folders["cam-a"], 9, seed=1, width=96, height=80)
    write_normal_parts(folders["cam-b"], 6, seed=2, width=96, height=80)

    metas = {}
    for cam, folder in folders.items():
        metas[cam] = publish_folder(settings, folder, camera_id=cam, line="L7", station="S2",
                                    product="flange", partitions=None)
    assert [m.seq for m in metas["cam-a"]] == list(range(9))
    assert [m.seq for m in metas["cam-b"]] == list(range(6))

    records = consume_all(settings, settings.topic("frames"), 15)
    assert len(records) == 15
    by_camera: dict[str, list] = defaultdict(list)
    for rec in records:
        meta = FrameMeta.from_headers(rec.headers)
        headers = dict(rec.headers)
        assert headers["lw-schema"] == str(SCHEMA_VERSION).encode()
        assert rec.key == meta.camera_id.encode()
        assert (meta.line, meta.station, meta.product) == ("L7", "S2", "flange")
        assert meta.content_type == "image/png"
        assert meta.captured_at.tzinfo is not None
        by_camera[meta.camera_id].append((rec.partition, rec.offset, meta, rec.value))

    for cam, folder in folders.items():
        items = by_camera[cam]
        assert len({p for p, *_ in items}) == 1, "one camera -> one partition"
        items.sort(key=lambda t: t[1])  # broker order within the partition
        assert [m.seq for _, _, m, _ in items] == list(range(len(items)))
        files = sorted(folder.glob("*.png"))
        assert [m.part_id for _, _, m, _ in items] == [f.stem for f in files]
        assert len({m.frame_id for _, _, m, _ in items}) == len(items)
        for (_, _, meta, value), path in zip(items, files):
            check_complete(value, meta.content_type)
            # PNG is lossless: the consumer sees exactly the pixels of the file
            assert np.array_equal(decode_image(value), cv2.imread(str(path)))
    assert {m.frame_id for m in metas["cam-a"]} == {m.frame_id for *_, m, _ in by_camera["cam-a"]}


def test_passthrough_sends_files_byte_for_byte(kafka_test_settings, tmp_path):
    settings = kafka_test_settings
    sim = LineSimulator(seed=5, width=80, height=64)
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"img{i}.jpg"), sim.frame(i).image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    metas = publish_folder(settings, tmp_path, camera_id="cam-pt", passthrough=True, partitions=1)
    assert [m.content_type for m in metas] == ["image/jpeg"] * 3
    records = consume_all(settings, settings.topic("frames"), 3, idle_s=0.5)
    assert sorted(r.value for r in records) == sorted((tmp_path / f"img{i}.jpg").read_bytes() for i in range(3))


class FlakySource(FrameSource):
    """Fails to open twice, then yields frames but fails every 4th read."""

    name = "flaky"

    def __init__(self, total: int):
        super().__init__()
        self.total = total
        self.opens = 0
        self.reads = 0
        self.delivered = 0
        self.sim = LineSimulator(seed=9, width=64, height=64)

    def open(self):
        self.opens += 1
        if self.opens <= 2:
            raise SourceError("camera offline")
        self.is_open = True

    def read(self):
        self.reads += 1
        if self.reads % 4 == 0:
            raise SourceError("frame grab failed")
        if self.delivered >= self.total:
            return None
        self.delivered += 1
        return self.sim.frame(self.delivered)


def test_reconnects_with_backoff_and_counts_dropped_frames(kafka_test_settings):
    settings = kafka_test_settings
    ensure_topics(settings, partitions=1, streams=("frames",))
    source = FlakySource(total=10)
    policy = ReconnectPolicy(initial_s=0.05, factor=2.0, max_s=0.2, jitter=0.0)
    with FramePublisher(settings) as publisher:
        runner = IngestRunner(source, publisher, CameraInfo("cam-flaky", "L", "S"), reconnect=policy)
        started = time.monotonic()
        stats = runner.run()
        elapsed = time.monotonic() - started
    assert stats.end_reason == "end of source"
    assert stats.published == 10 and stats.captured == 10
    assert stats.read_errors == source.reads // 4 >= 3
    assert stats.dropped == stats.read_errors
    assert stats.reconnects == stats.read_errors + 1  # after the 2 failed opens, and after each failed read
    assert elapsed < 10
    records = consume_all(settings, settings.topic("frames"), 10, idle_s=0.5)
    assert sorted(FrameMeta.from_headers(r.headers).seq for r in records) == list(range(10))


def test_dead_camera_gives_up_after_max_attempts_without_hanging(kafka_test_settings):
    settings = kafka_test_settings
    ensure_topics(settings, partitions=1, streams=("frames",))
    policy = ReconnectPolicy(initial_s=0.05, factor=2.0, max_s=0.5, jitter=0.0, max_attempts=3)
    with FramePublisher(settings) as publisher:
        for target in ("/nonexistent/camera.mp4", "rtsp://127.0.0.1:1/stream"):
            source = OpenCVSource(target, open_timeout_s=3, read_timeout_s=2)
            runner = IngestRunner(source, publisher, CameraInfo("cam-dead", "L", "S"), reconnect=policy)
            started = time.monotonic()
            stats = runner.run()
            assert stats.gave_up and stats.end_reason == "gave up"
            assert stats.published == 0
            assert time.monotonic() - started < 15


class StalledCapture(OpenCVSource):
    """A camera whose read blocks forever after 3 frames (a stalled RTSP stream)."""

    def __init__(self, path):
        super().__init__(str(path), read_timeout_s=0.5, loop=True)
        self.count = 0

    def _read_once(self):
        self.count += 1
        if self.count > 3:
            threading.Event().wait()  # never returns
        return super()._read_once()


def test_stalled_camera_read_times_out_and_stop_ends_the_backoff(kafka_test_settings, tmp_path):
    settings = kafka_test_settings
    ensure_topics(settings, partitions=1, streams=("frames",))
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(5):
        writer.write(np.full((48, 64, 3), i * 40, np.uint8))
    writer.release()
    source = StalledCapture(video)
    policy = ReconnectPolicy(initial_s=30.0, max_s=30.0, jitter=0.0)  # long backoff: stop() must cut it
    with FramePublisher(settings) as publisher:
        runner = IngestRunner(source, publisher, CameraInfo("cam-stall", "L", "S"), reconnect=policy)
        threading.Timer(3.0, runner.stop).start()
        started = time.monotonic()
        stats = runner.run()
        elapsed = time.monotonic() - started
    assert stats.published == 3
    assert stats.read_errors == 1 and stats.dropped == 1
    assert stats.end_reason == "stopped"
    assert elapsed < 8


def test_sigterm_flushes_and_exits_zero(kafka_env, kafka_test_settings):
    settings = kafka_test_settings
    ensure_topics(settings, partitions=2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest.cli", "run", "--source", "sim:seed=4,width=128,height=128",
         "--camera-id", "cam-sig", "--fps", "25", "--partitions", "0", "--stats-interval", "1"],
        env=kafka_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # let it stream for a while: until 10 frames are on the broker
        seen = consume_all(settings, settings.topic("frames"), 10, timeout_s=60, idle_s=0)
        assert len(seen) >= 10 and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["end_reason"] == "stopped"
    assert stats["captured"] >= 10
    assert stats["published"] == stats["captured"] and stats["dropped"] == 0
    records = consume_all(settings, settings.topic("frames"), stats["published"], idle_s=1.0)
    seqs = sorted(FrameMeta.from_headers(r.headers).seq for r in records)
    assert seqs == list(range(stats["published"]))


def _noise_png(path, side):
    rng = np.random.default_rng(0)
    cv2.imwrite(str(path), rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8),
                [cv2.IMWRITE_PNG_COMPRESSION, 0])


def test_oversized_frame_is_refused_with_a_clear_error(kafka_test_settings, tmp_path):
    settings = kafka_test_settings.model_copy(update={"kafka_max_message_bytes": 200_000})
    _noise_png(tmp_path / "big.png", 300)  # ~270 kB of incompressible pixels
    with pytest.raises(FrameTooLargeError, match=r"above the limit of 200000 bytes.*LINEWATCH_KAFKA_MAX_MESSAGE_BYTES"):
        publish_folder(settings, tmp_path, camera_id="cam-big", partitions=1)

    # in the runner (a live camera), an oversized frame is dropped and counted, not fatal
    ensure_topics(settings, partitions=1, streams=("frames",))

    class TwoSizes(FrameSource):
        def __init__(self):
            super().__init__()
            self.frames = [np.zeros((32, 32, 3), np.uint8),
                           np.random.default_rng(1).integers(0, 256, (300, 300, 3), dtype=np.uint8),
                           np.zeros((32, 32, 3), np.uint8)]

        def open(self):
            self.is_open = True

        def read(self):
            return Frame(image=self.frames.pop(0)) if self.frames else None

    with FramePublisher(settings) as publisher:
        stats = IngestRunner(TwoSizes(), publisher, CameraInfo("cam-mix", "L", "S"), encoding="png").run()
    assert (stats.captured, stats.published, stats.oversized, stats.dropped) == (3, 2, 1, 1)


def test_frames_near_16_mib_pass_the_broker(kafka_test_settings, tmp_path):
    settings = kafka_test_settings
    _noise_png(tmp_path / "large.png", 2000)  # 12 MB frame
    size = (tmp_path / "large.png").stat().st_size
    assert 11_000_000 < size < settings.kafka_max_message_bytes
    metas = publish_folder(settings, tmp_path, camera_id="cam-large", passthrough=True, partitions=1)
    assert len(metas) == 1
    records = consume_all(settings, settings.topic("frames"), 1, idle_s=0.5)
    assert len(records) == 1 and len(records[0].value) == size


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "ingest.cli", "--help"], capture_output=True, text=True,
                         env={**os.environ}, timeout=60)
    assert out.returncode == 0 and "run" in out.stdout
    out = subprocess.run([sys.executable, "-m", "ingest.cli", "run", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "--camera-id" in out.stdout and "rtsp://" in out.stdout
