"""RTSP through OpenCV's FFmpeg backend against GStreamer's RTSP server on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from ingest.messages import FrameMeta
from ingest.sources import OpenCVSource
from tests.pipeline.harness import free_port

from .helpers import consume_all


class RtspServer:
    """``tests/ingest/rtsp_server.py`` on a fixed loopback port; stop() and start() keep the port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/test"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.ingest.rtsp_server", "--port", str(self.port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.wait(10)
            raise RuntimeError(f"RTSP server did not start: {self.proc.stderr.read()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def rtsp_server():
    server = RtspServer()
    try:
        server.start()
    except RuntimeError as exc:
        if "apt-get install" in str(exc) or "no element" in str(exc):
            pytest.skip(f"GStreamer RTSP server unavailable: {exc}")
        raise
    yield server
    server.stop()


def test_frames_are_the_newest_not_a_backlog(rtsp_server):
    source = OpenCVSource(rtsp_server.url, open_timeout_s=10, read_timeout_s=3)
    with source:
        first = source.read()
        assert first.image.shape == (240, 320, 3)
        time.sleep(1.0)  # ten frames arrive meanwhile
        t0 = time.monotonic()
        source.read()  # the newest of them, at once
        immediate = time.monotonic() - t0
        t0 = time.monotonic()
        source.read()  # nothing queued behind it: waits for the next frame (10 frames/s)
        waited = time.monotonic() - t0
    assert immediate < 0.05
    assert 0.03 < waited < 0.5, waited


def test_server_going_away_and_coming_back_is_reconnected(rtsp_server, kafka_test_settings):
    from ingest.producer import FramePublisher
    from ingest.runner import CameraInfo, IngestRunner, ReconnectPolicy
    from ingest.topics import ensure_topics

    settings = kafka_test_settings
    ensure_topics(settings, partitions=1)
    source = OpenCVSource(rtsp_server.url, open_timeout_s=5, read_timeout_s=2)
    with FramePublisher(settings) as publisher:
        runner = IngestRunner(source, publisher, CameraInfo("rtsp-1", "L1", "S1"), max_frames=15,
                              reconnect=ReconnectPolicy(initial_s=0.3, max_s=1.0, max_attempts=20))
        thread = threading.Thread(target=runner.run)
        thread.start()
        deadline = time.monotonic() + 20
        while runner.stats.captured < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        rtsp_server.stop()
        time.sleep(1.5)
        rtsp_server.start()
        thread.join(40)
        assert not thread.is_alive()
    stats = runner.stats
    assert stats.end_reason == "max frames" and not stats.gave_up
    assert stats.read_errors >= 1 and stats.reconnects >= 1
    records = consume_all(settings, settings.topic("frames"), 15, timeout_s=20, idle_s=0.5)
    seqs = [FrameMeta.from_headers(r.headers).seq for r in records]
    assert len(seqs) == stats.published == 15 and seqs == sorted(seqs)
