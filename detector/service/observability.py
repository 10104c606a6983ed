"""Metrics, health endpoints and structured logs of the detector service.

HTTP (``--http-port``):

* ``/healthz`` — liveness: 200 while the consume loop is turning (it has polled or finished a
  batch within ``LINEWATCH_DETECTOR_STALL_AFTER_S``), 503 when it is stuck.
* ``/readyz`` — readiness: 200 once the models are loaded and the consumer polls, 503 while
  starting or shutting down.  Both answer a small JSON document (model versions, partitions, ...).
* ``/metrics`` — Prometheus text format:

  ==========================================  =========  ===================================================
  metric                                      type       meaning
  ==========================================  =========  ===================================================
  ``linewatch_detector_frames_total``         counter    frames scored (``rate()`` = frames/s)
  ``linewatch_detector_flagged_total``        counter    frames scored above threshold
  ``linewatch_detector_frames_per_second``    gauge      throughput over the last ~10 s
  ``linewatch_detector_batch_seconds``        histogram  a batch from its first record to the commit
  ``linewatch_detector_stage_seconds``        histogram  per stage: decode, infer, encode, publish, commit
  ``linewatch_detector_batch_size``           histogram  records per batch
  ``linewatch_detector_consumer_lag``         gauge      records behind the partition end, per partition
  ``linewatch_detector_consumer_lag_total``   gauge      sum over the assigned partitions
  ``linewatch_detector_errors_total``         counter    by ``reason``: dead-letter classes (``empty``,
                                                         ``oversized``, ``schema``, ``undecodable``,
                                                         ``no-model``, ``inference``) and ``publish``,
                                                         ``commit``, ``result-too-large``
  ``linewatch_detector_dead_letters_total``   counter    messages sent to the dead-letter topic
  ``linewatch_detector_model_info``           gauge      1 per active (path, version)
  ``linewatch_detector_model_swaps_total``    counter    model snapshots activated after start-up
  ==========================================  =========  ===================================================

Logs: one line per event, ``logfmt`` (``ts=... level=info logger=... msg="batch" frames=8 ...``) or
``json``; fields are passed as ``extra={"kv": {...}}``.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import deque
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


class ServiceMetrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        p = "linewatch_detector_"
        self.frames = Counter(p + "frames", "frames scored", registry=r)
        self.flagged = Counter(p + "flagged", "frames scored above threshold", registry=r)
        self.fps = Gauge(p + "frames_per_second", "frames scored per second over the last ~10 s", registry=r)
        lat = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
        self.batch_seconds = Histogram(p + "batch_seconds", "batch time from first record to commit",
                                       buckets=lat, registry=r)
        self.stage_seconds = Histogram(p + "stage_seconds", "time per batch stage", ["stage"], buckets=lat,
                                       registry=r)
        self.batch_size = Histogram(p + "batch_size", "records per batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.lag = Gauge(p + "consumer_lag", "records behind the end of the partition", ["topic", "partition"],
                         registry=r)
        self.lag_total = Gauge(p + "consumer_lag_total", "records behind, all assigned partitions", registry=r)
        self.errors = Counter(p + "errors", "errors by reason", ["reason"], registry=r)
        self.dead_letters = Counter(p + "dead_letters", "messages sent to the dead-letter topic", registry=r)
        self.model_info = Gauge(p + "model_info", "active models", ["path", "version"], registry=r)
        self.swaps = Counter(p + "model_swaps", "model snapshots activated after start-up", registry=r)
        self._window: deque[tuple[float, int]] = deque()

    def count_frames(self, n: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.frames.inc(n)
        self._window.append((now, n))
        while self._window and now - self._window[0][0] > 10.0:
            self._window.popleft()
        span = now - self._window[0][0] if len(self._window) > 1 else 0.0
        if span > 0:
            self.fps.set(sum(k for _, k in list(self._window)[1:]) / span)

    def set_models(self, versions: dict[str, str]) -> None:
        self.model_info.clear()
        for path, version in versions.items():
            self.model_info.labels(path=path, version=version).set(1)


def serve_http(metrics: ServiceMetrics, health: Callable[[], tuple[bool, dict]], ready: Callable[[], tuple[bool, dict]],
               port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Start the health/metrics server in a daemon thread; ``port`` 0 picks a free one."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, ctype, code = generate_latest(metrics.registry), CONTENT_TYPE_LATEST, 200
            elif path in ("/healthz", "/readyz", "/"):
                ok, info = (ready if path == "/readyz" else health)()
                body = json.dumps(info, default=str).encode()
                ctype, code = "application/json", 200 if ok else 503
            else:
                body, ctype, code = b"not found\n", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="detector-http", daemon=True).start()
    return server


# ------------------------------------------------------------------------------------------ logs

def _logfmt_value(v: Any) -> str:
    if isinstance(v, float):
        s = f"{v:.6g}"
    elif isinstance(v, bool):
        s = "true" if v else "false"
    else:
        s = str(v)
    if s == "" or any(c in s for c in ' ="\\\n\t'):
        s = '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


class StructuredFormatter(logging.Formatter):
    def __init__(self, fmt: str = "logfmt", service: str = "detector"):
        super().__init__()
        self.kind = fmt
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        kv = getattr(record, "kv", None)
        if isinstance(kv, dict):
            for k, v in kv.items():
                fields[k if k not in fields else f"field_{k}"] = v
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        if self.kind == "json":
            return json.dumps(fields, default=str)
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields.items())


def setup_logging(fmt: str = "logfmt", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(StructuredFormatter(fmt))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    lvl = getattr(logging, str(level).upper(), logging.INFO)
    for name in ("linewatch", "detector"):
        logging.getLogger(name).setLevel(lvl)
    logging.getLogger("kafka").setLevel(logging.WARNING if lvl > logging.DEBUG else logging.INFO)
