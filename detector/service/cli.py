"""``linewatch-detector serve`` (registered through ``detector.cli.PLUGIN_MODULES``)."""

from __future__ import annotations

import argparse
import logging
import signal
from typing import Any

from detector.cli import Command, UserError

DESCRIPTION = """\
Score camera frames from Kafka: a consumer group on <prefix>.frames (start more processes, or one
per GPU, for more throughput, up to the topic's partition count), micro-batches of up to
--max-batch frames (waiting at most --max-wait-ms for a batch to fill), each frame routed to its
checkpoint (--model, or a routing file: per camera, per product, default), one InspectionResult per
frame on <prefix>.results (key = camera id; heatmap PNG, and the frame itself when flagged or
sampled for retraining). Offsets are committed only after the broker acknowledged the batch's
results: at least once. Bad messages (empty, oversized, wrong schema, undecodable image, no model)
go to <prefix>.deadletter with the reason; the service keeps going.

Settings come from the environment (LINEWATCH_KAFKA_*, LINEWATCH_TOPIC_PREFIX, LINEWATCH_DETECTOR_*;
see detector/service/settings.py); the options below override them.

Signals: SIGTERM/SIGINT finish the current batch, commit and exit 0; SIGHUP reloads the routing
file and checkpoints and switches to them between two batches.

Model registry (hot reload): the service follows the model store (--model-store): a product with
an active version (<store>/<product>/active.json, written by 'linewatch-detector register',
'retrain' and 'rollback') is scored by that version, and per-camera thresholds saved on the
dashboard (<store>/thresholds.json) override the checkpoints'. Changes are noticed within about a
second (LINEWATCH_DETECTOR_STORE_POLL_S), loaded in the background and switched to between two
batches; a new checkpoint that does not load is logged and the current one keeps serving.

Routing file (JSON or YAML):
  {"default": "models/flange.pt", "products": {"bottle": "models/bottle.pt"},
   "cameras": {"cam-07": "models/cam07.pt"}, "thresholds": {"cameras": {"cam-07": 0.42}}}

Example:
  LINEWATCH_KAFKA_BOOTSTRAP=127.0.0.1:9092 linewatch-detector serve --model flange.pt --http-port 9102
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--model", metavar="CKPT", help="default checkpoint or export folder (LINEWATCH_DETECTOR_MODEL)")
    g.add_argument("--routes", metavar="FILE", help="routing file, JSON or YAML (LINEWATCH_DETECTOR_ROUTES)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], help="inference device (default auto)")
    g.add_argument("--backend", choices=["auto", "torch", "torchscript", "onnxruntime", "openvino"],
                   help="inference runtime (LINEWATCH_DETECTOR_BACKEND, default auto). auto times every installed "
                        "runtime at load and keeps the fastest (logged): with the onnx/openvino extras a checkpoint "
                        "is first exported to ONNX once, parity checked, into LINEWATCH_EXPORT_CACHE (figures: "
                        "detector/BENCHMARK.md); without them, or when that export fails, it runs on "
                        "torch and logs why. torch: eager PyTorch, no export. onnxruntime/openvino: that runtime or "
                        "a start-up error. An export folder ('linewatch-detector export') runs on the backends its "
                        "format allows")
    g.add_argument("--precision", choices=["fp32", "int8"],
                   help="int8: the export folder's int8 model (LINEWATCH_DETECTOR_PRECISION, default fp32)")
    g.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for inference (LINEWATCH_DETECTOR_THREADS; default half the usable CPUs, "
                        "1 to 4: torch's one thread per core collapses when the host is shared)")
    g.add_argument("--model-store", metavar="DIR",
                   help="model store to follow: <DIR>/<product>/active.json routes the product to its active "
                        "version, <DIR>/thresholds.json holds per-camera thresholds; changes are picked up "
                        "between batches (LINEWATCH_MODEL_STORE_DIR, default <LINEWATCH_DATA_DIR>/models)")
    g = p.add_argument_group("consuming")
    g.add_argument("--group", metavar="ID", help="consumer group (default linewatch-detector)")
    g.add_argument("--max-batch", type=int, metavar="N", help="frames per inference batch (default 8)")
    g.add_argument("--max-wait-ms", type=int, metavar="MS", help="longest a partial batch waits (default 50)")
    g.add_argument("--batches-per-commit", type=int, metavar="K",
                   help="with a backlog, score up to K batches per offset commit, publishing each batch as soon as "
                        "it is scored (default 4; 1 = batch by batch)")
    g.add_argument("--max-frame-bytes", type=int, metavar="B",
                   help="larger payloads are dead-lettered (default: the Kafka record limit)")
    g.add_argument("--partitions", type=int, metavar="N",
                   help="partitions for topics that do not exist yet (default 6)")
    g = p.add_argument_group("results")
    g.add_argument("--sample-rate", type=float, metavar="F",
                   help="fraction of normal frames attached to their result for retraining (default 0.01)")
    g.add_argument("--heatmap-max-side", type=int, metavar="PX", help="heatmap longer side at most (default 512)")
    g = p.add_argument_group("operations")
    g.add_argument("--http-port", type=int, metavar="PORT",
                   help="serve /healthz, /readyz and /metrics on this port (0: any free port; default off)")
    g.add_argument("--log-format", choices=["logfmt", "json"], help="structured log format (default logfmt)")


def _settings(args: argparse.Namespace):
    from pydantic import ValidationError

    from .settings import ServiceSettings

    mapping = {"model": "model", "routes": "routes", "device": "device", "backend": "backend",
               "precision": "precision", "threads": "threads", "group": "group",
               "max_batch": "max_batch", "max_wait_ms": "max_wait_ms", "batches_per_commit": "batches_per_commit",
               "max_frame_bytes": "max_frame_bytes",
               "partitions": "topic_partitions", "sample_rate": "sample_rate",
               "heatmap_max_side": "heatmap_max_side", "http_port": "http_port", "log_format": "log_format"}
    overrides: dict[str, Any] = {field: getattr(args, arg) for arg, field in mapping.items()
                                 if getattr(args, arg, None) is not None}
    if getattr(args, "verbose", False):
        overrides["log_level"] = "DEBUG"
    try:
        return ServiceSettings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err.get("loc", ("?",))[0])
        opt = {v: k for k, v in mapping.items()}.get(name, name).replace("_", "-")
        raise UserError(f"--{opt} (LINEWATCH_DETECTOR_{name.upper()}): {err.get('msg')}") from None


def run_serve(args: argparse.Namespace) -> int:
    from ingest.kafka_config import KafkaSettings

    from .observability import ServiceMetrics, serve_http, setup_logging
    from detector.model_store import ModelStore

    from .routing import ModelHolder, RoutingError
    from .store_reload import StoreReloader, StoreRouting
    from .service import DetectorService

    settings = _settings(args)
    setup_logging(settings.log_format, settings.log_level)
    log = logging.getLogger("linewatch.detector.service")
    threads = apply_threads(settings)  # before any model is loaded: torch sizes its pools once
    try:
        kafka = KafkaSettings()
        kafka.client_kwargs()  # what is only checked when connecting (a SASL password), before the models load
    except Exception as exc:  # noqa: BLE001 - pydantic validation of LINEWATCH_KAFKA_*
        raise UserError(f"Kafka settings: {str(exc).splitlines()[0]}") from None

    store = ModelStore(args.model_store) if getattr(args, "model_store", None) else ModelStore.from_env()
    routing = StoreRouting(settings.routes, settings.model, store)
    revision = store.revision()  # before reading: a change while the models load is picked up after
    try:
        routes = routing()
    except RoutingError as exc:
        raise UserError(str(exc)) from None

    metrics = ServiceMetrics()
    holder = ModelHolder(lambda path: _load_detector(path, settings))
    reloader = StoreReloader(holder, routing, settings.store_poll_s)
    service = DetectorService(kafka, settings, holder, metrics, routing_factory=routing, reloader=reloader)
    # signals first: a SIGTERM while the models load still ends the process cleanly
    signal.signal(signal.SIGTERM, service.stop)
    signal.signal(signal.SIGINT, service.stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, service.request_reload)
    server = None
    if settings.http_port is not None:
        server = serve_http(metrics, service.health, service.ready, settings.http_port, settings.http_host)
        log.info("health and metrics", extra={"kv": {"port": server.server_address[1]}})
    try:
        ms = holder.load(routes)  # CheckpointError -> one-line error, exit 2 (detector.cli.main)
        reloader.watcher.mark_seen(revision)
        log.info("models loaded", extra={"kv": {"versions": ",".join(f"{v}={p}" for p, v in ms.versions().items()),
                                                "device": settings.device, "backend": settings.backend,
                                                "runs_on": ",".join(sorted({d.backend for d in ms.detectors.values()})),
                                                "threads": threads}})
        if service.stopping:
            return 0
        return service.run()
    finally:
        if server is not None:
            server.shutdown()


def apply_threads(settings) -> int:
    """Size torch's thread pools once, before any model runs; returns the thread count (the setting,
    or :func:`.settings.default_threads`)."""
    import torch

    threads = settings.inference_threads()
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # only settable before the first parallel work: already started in this process
        pass
    return threads


def _load_detector(path: str, settings) -> Any:
    """Load a checkpoint and run one dummy batch, so the first real batch is not slowed by warm-up."""
    import numpy as np

    from detector.inference import Detector

    det = Detector.load(path, device=settings.device, batch_size=settings.max_batch, backend=settings.backend,
                        precision=settings.precision, threads=settings.inference_threads())
    size = det.image_size
    det.predict([np.zeros((size, size, 3), np.uint8)] * min(2, settings.max_batch))
    return det


COMMANDS = [
    Command("serve", "score frames from Kafka and publish inspection results (service)", DESCRIPTION,
            add_arguments, run_serve),
]
