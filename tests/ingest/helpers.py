"""Helpers for the ingest tests: reading back what ingest published (real broker), Aravis' simulated camera."""

from __future__ import annotations

import shutil
import subprocess
import time

from kafka import KafkaConsumer


def consume_all(settings, topic: str, expected: int, *, timeout_s: float = 30.0, idle_s: float = 2.0):
    """Read ``topic`` from the beginning until ``expected`` records arrived (and ``idle_s`` of
    silence after that, to catch extras) or ``timeout_s`` passed.  No consumer group."""
    consumer = KafkaConsumer(
        **settings.client_kwargs(),
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=32 * 1024 * 1024,
    )
    try:
        consumer.subscribe([topic])
        records = []
        deadline = time.monotonic() + timeout_s
        quiet_since = None
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=500)
            got = [r for recs in batch.values() for r in recs]
            records.extend(got)
            if len(records) >= expected:
                if got:
                    quiet_since = time.monotonic()
                elif quiet_since is None:
                    quiet_since = time.monotonic()
                if time.monotonic() - quiet_since >= idle_s:
                    break
        return records
    finally:
        consumer.close()


FAKE_CAMERA = shutil.which("arv-fake-gv-camera-0.8")


class FakeCamera:
    """``arv-fake-gv-camera-0.8`` bound to 127.0.0.1 (GVCP port 3956: one per machine at a time)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([FAKE_CAMERA, "-i", "127.0.0.1", "-s", "LW01"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        time.sleep(0.3)
        if self.proc.poll() is not None:
            raise RuntimeError(f"the fake camera did not start (another one on 127.0.0.1?): "
                               f"{self.proc.stderr.read().decode(errors='replace')}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
