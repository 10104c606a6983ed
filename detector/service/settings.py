"""Settings of the detector service, from ``LINEWATCH_DETECTOR_*`` environment variables.

Kafka connection settings are :class:`ingest.kafka_config.KafkaSettings` (``LINEWATCH_KAFKA_*``,
``LINEWATCH_TOPIC_PREFIX``); every option below can also be given on the ``serve`` command line,
which wins over the environment.

====================================  ======================  ================================================
variable                              default                 meaning
====================================  ======================  ================================================
``LINEWATCH_DETECTOR_MODEL``          (none)                  default checkpoint (frames no route matches)
``LINEWATCH_DETECTOR_ROUTES``         (none)                  routing file, JSON or YAML (:mod:`.routing`)
``LINEWATCH_DETECTOR_GROUP``          ``linewatch-detector``  Kafka consumer group on ``<prefix>.frames``
``LINEWATCH_DETECTOR_MAX_BATCH``      ``8``                   frames per inference batch
``LINEWATCH_DETECTOR_MAX_WAIT_MS``    ``50``                  longest a partial batch waits for more frames
``LINEWATCH_DETECTOR_BATCHES_PER_COMMIT`` ``4``                 with a backlog, up to this many batches are taken
                                                              at once: each is published as soon as it is scored
                                                              (its acks arrive while the next one is inferred),
                                                              one commit after all acks; 1 = batch by batch
``LINEWATCH_DETECTOR_DEVICE``         ``auto``                ``auto`` / ``cpu`` / ``cuda``
``LINEWATCH_DETECTOR_BACKEND``        ``torch``               ``torch`` / ``onnxruntime`` / ``openvino`` /
                                                              ``torchscript`` / ``auto`` (the fastest, timed
                                                              at load; :mod:`detector.runtimes`)
``LINEWATCH_DETECTOR_PRECISION``      ``fp32``                ``int8``: an export folder's int8 model
``LINEWATCH_DETECTOR_THREADS``        half the usable CPUs,   CPU threads for inference (torch intra- and
                                      1 to 4                  inter-op pools, onnxruntime, OpenVINO); see
                                                              :func:`default_threads`
``LINEWATCH_DETECTOR_SAMPLE_RATE``    ``0.01``                fraction of normal frames whose image is attached
                                                              to the result (retraining sample; deterministic
                                                              per frame id)
``LINEWATCH_DETECTOR_HEATMAP_MAX_SIDE`` ``512``               heatmap PNG downscaled to this longer side
``LINEWATCH_DETECTOR_MAX_FRAME_BYTES`` Kafka record limit     larger payloads are dead-lettered (``oversized``)
``LINEWATCH_DETECTOR_MAX_FRAME_PIXELS`` ``40000000``          larger images (by their header) are dead-lettered
``LINEWATCH_DETECTOR_MAX_BATCH_PIXELS`` ``80000000``          decoded pixels one inference batch may hold (at
                                                              least one frame's limit)
``LINEWATCH_DETECTOR_MAX_CAPTURE_AGE_S`` ``604800`` (7 days)  frames captured longer before the broker got them
                                                              are dead-lettered (``schema``)
``LINEWATCH_DETECTOR_MAX_CAPTURE_AHEAD_S`` ``300``            ... or captured this far after it (clock skew)
``LINEWATCH_DETECTOR_ATTACH_MAX_BYTES`` ``4194304``           attached frames above this are re-encoded as JPEG
``LINEWATCH_DETECTOR_HTTP_PORT``      (off)                   ``/healthz`` ``/readyz`` ``/metrics``
``LINEWATCH_DETECTOR_LOG_FORMAT``     ``logfmt``              ``logfmt`` or ``json``
``LINEWATCH_DETECTOR_TOPIC_PARTITIONS`` ``6``                 partitions for topics the service must create
``LINEWATCH_DETECTOR_STORE_POLL_S``   ``1.0``                 how often the model store is checked (stat only)
``LINEWATCH_MODEL_STORE_DIR``         ``<data dir>/models``   model store followed for active versions and
                                                              dashboard thresholds (:mod:`.store_reload`)
====================================  ======================  ================================================
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LINEWATCH_DETECTOR_", extra="ignore", protected_namespaces=())

    model: Path | None = Field(None, description="default checkpoint")
    routes: Path | None = Field(None, description="routing file (JSON or YAML)")
    group: str = "linewatch-detector"
    max_batch: int = Field(8, ge=1, le=1024)
    max_wait_ms: int = Field(50, ge=0)
    batches_per_commit: int = Field(4, ge=1, le=64)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: the fastest installed runtime, timed at load; torch when the onnx/openvino extras are absent
    # or the checkpoint's ONNX export fails (logged).  Why the default: detector/BENCHMARK.md.
    backend: Literal["auto", "torch", "torchscript", "onnxruntime", "openvino"] = "auto"
    precision: Literal["fp32", "int8"] = "fp32"
    threads: int | None = Field(None, ge=1, le=256, description="CPU inference threads (default: default_threads())")
    sample_rate: float = Field(0.01, ge=0.0, le=1.0)
    heatmap_max_side: int = Field(512, ge=8)
    max_frame_bytes: int | None = Field(None, gt=0, description="default: the Kafka record limit")
    max_frame_pixels: int = Field(40_000_000, gt=0)
    max_batch_pixels: int = Field(80_000_000, gt=0)
    max_capture_age_s: float = Field(7 * 24 * 3600.0, gt=0)
    max_capture_ahead_s: float = Field(300.0, ge=0)
    attach_max_bytes: int = Field(4 * 1024 * 1024, gt=0)
    http_port: int | None = Field(None, ge=0, le=65535)
    http_host: str = "0.0.0.0"
    log_format: Literal["logfmt", "json"] = "logfmt"
    log_level: str = "INFO"
    topic_partitions: int = Field(6, ge=1)
    session_timeout_ms: int = Field(10_000, ge=1000)
    max_poll_interval_ms: int = Field(300_000, ge=1000)
    flush_timeout_s: float = Field(60.0, gt=0)
    stall_after_s: float = Field(120.0, gt=0, description="/healthz fails when the loop is stuck this long")
    store_poll_s: float = Field(1.0, ge=0, description="how often the model store is checked for changes")

    def inference_threads(self) -> int:
        return self.threads or default_threads()


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (a container's
    CPU limit, which neither the affinity mask nor torch's default sees)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def default_threads() -> int:
    """Half the usable CPUs, between 1 and 4.

    torch's default, one thread per core, assumes the process has the machine to itself; the detector
    shares it with the broker, the writer and its own replicas (one per partition), and torch's
    spinning worker threads oversubscribed that way cost many times the CPU for the same frames.
    Half leaves room for decoding, Kafka I/O and the neighbours; past about 4 threads the small
    inference batches gain little.  Set LINEWATCH_DETECTOR_THREADS when the process owns its CPUs.
    """
    return max(1, min(4, usable_cpus() // 2))
