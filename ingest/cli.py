"""``linewatch-ingest``: cameras -> Kafka frames topic.

Subcommands::

    linewatch-ingest run --source SPEC --camera-id ID [--line L --station S ...]
    linewatch-ingest topics [--partitions N]
    linewatch-ingest sim-write DIR -n N [--seed S] [--defect-rate R]
    linewatch-ingest sim-write DIR -n N --logical [--test-good G] [--per-kind K]

Kafka connection: ``LINEWATCH_KAFKA_BOOTSTRAP``, ``LINEWATCH_TOPIC_PREFIX`` and the other
``LINEWATCH_KAFKA_*`` variables (see ingest/kafka_config.py), or ``--bootstrap`` /
``--topic-prefix``.  ``run`` exits 0 when the source ends, ``--max-frames`` is reached or on
SIGTERM/SIGINT (after flushing), 3 when the camera stayed unreachable past
``--max-reconnects``, 4 when frames could not be delivered to the broker.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from datetime import datetime, timezone

EXIT_GAVE_UP = 3
EXIT_UNDELIVERED = 4


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def _setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("kafka").setLevel(max(logging.WARNING, root.level))


def _settings(args):
    from ingest.kafka_config import KafkaSettings

    overrides = {}
    if args.bootstrap:
        overrides["kafka_bootstrap"] = args.bootstrap
    if args.topic_prefix:
        overrides["topic_prefix"] = args.topic_prefix
    return KafkaSettings(**overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="linewatch-ingest",
        description="Publish camera frames to the linewatch Kafka frames topic.",
        epilog="Kafka settings come from LINEWATCH_* environment variables (LINEWATCH_KAFKA_BOOTSTRAP, "
               "LINEWATCH_TOPIC_PREFIX, LINEWATCH_KAFKA_SECURITY_PROTOCOL, ...).",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bootstrap", help="Kafka bootstrap servers (overrides LINEWATCH_KAFKA_BOOTSTRAP)")
    common.add_argument("--topic-prefix", help="topic prefix (overrides LINEWATCH_TOPIC_PREFIX)")
    common.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    common.add_argument("--log-format", default="text", choices=["text", "json"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run", parents=[common], help="stream one camera source to Kafka",
        description="Stream one camera source to the frames topic until the source ends, --max-frames, "
                    "or SIGTERM/SIGINT (which flushes and exits 0).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="source specs:\n"
               "  sim | sim:seed=1,defect_rate=0.1,width=256,height=256,count=N   synthetic line\n"
               "        (,fault=dirty-lens|dim|shift,fault_after=N: a camera fault, as --fault)\n"
               "  folder:PATH | PATH (a directory)       image-folder replay (sorted by name)\n"
               "  device:N | N                            camera device index\n"
               "  rtsp://... | http://...                 network stream (OpenCV's FFmpeg backend)\n"
               "  video:PATH | PATH (a file)              video file\n"
               "  genicam:[DEVICE][,pixel_format=..,exposure_us=..,gain_db=..,trigger=..]\n"
               "                                          GigE Vision / USB3 Vision camera through Aravis\n"
               "                                          (DEVICE: camera id or IP; empty: the first found)\n",
    )
    run.add_argument("--source", required=True, help="frame source spec (see below)")
    run.add_argument("--camera-id", required=True, help="camera id (Kafka key; order is kept per camera)")
    run.add_argument("--line", default="line-1", help="production line id (default line-1)")
    run.add_argument("--station", default="station-1", help="station on the line (default station-1)")
    run.add_argument("--product", help="product id (routes frames to a model)")
    run.add_argument("--fps", type=float, help="pace frames to at most this rate (default: as fast as the source)")
    run.add_argument("--loop", action="store_true", help="start over at the end of a folder/video file")
    run.add_argument("--max-frames", type=int, help="stop after this many frames")
    run.add_argument("--encoding", default="jpeg", choices=["jpeg", "png"], help="payload encoding (default jpeg)")
    run.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality 1..100 (default 90)")
    run.add_argument("--passthrough", action="store_true",
                     help="folder source: send JPEG/PNG files byte for byte, without re-encoding")
    run.add_argument("--part-from-name", action="store_true", help="folder source: part id = file name stem")
    run.add_argument("--width", type=int, help="camera: requested frame width")
    run.add_argument("--height", type=int, help="camera: requested frame height")
    run.add_argument("--pixel-format", choices=["Mono8", "RGB8", "BGR8", "BayerRG8", "BayerGR8", "BayerGB8",
                                                "BayerBG8"],
                     help="genicam: pixel format (Bayer is demosaiced to colour; default Mono8)")
    run.add_argument("--exposure-us", type=float, help="genicam: exposure time in microseconds (auto exposure off)")
    run.add_argument("--gain-db", type=float, help="genicam: analog gain in dB (auto gain off)")
    run.add_argument("--trigger", help="genicam: off (free run at --fps, default), software (one trigger per frame "
                                       "at --fps), or a hardware line such as Line0")
    run.add_argument("--rtsp-transport", choices=["tcp", "udp"],
                     help="rtsp:// streams: RTP over the RTSP connection (tcp, default) or over UDP")
    run.add_argument("--fault", choices=["dirty-lens", "dim", "shift"],
                     help="simulator only: a camera fault (dirty lens, dimmed light, camera knocked sideways) "
                          "from frame --fault-after on, for drift monitoring to catch")
    run.add_argument("--fault-after", type=int, default=0, metavar="N",
                     help="simulator only: frames before --fault starts (default 0)")
    run.add_argument("--open-timeout", type=float, default=10.0, help="camera open timeout, seconds (default 10)")
    run.add_argument("--read-timeout", type=float, default=5.0, help="camera read timeout, seconds (default 5)")
    run.add_argument("--reconnect-initial", type=float, default=0.5, help="first reconnect delay, seconds")
    run.add_argument("--reconnect-max", type=float, default=30.0, help="longest reconnect delay, seconds")
    run.add_argument("--max-reconnects", type=int,
                     help="give up (exit 3) after this many consecutive failures (default: retry forever)")
    run.add_argument("--partitions", type=int, default=6,
                     help="create missing topics with this many partitions (0: do not create; default 6)")
    run.add_argument("--stats-interval", type=float, default=30.0, help="seconds between stats log lines")
    run.add_argument("--flush-timeout", type=float, default=30.0, help="seconds to wait for acks at exit")

    topics = sub.add_parser("topics", parents=[common], help="create the frames/results/deadletter topics")
    topics.add_argument("--partitions", type=int, default=6, help="partitions per topic (default 6)")

    sim = sub.add_parser("sim-write", parents=[common],
                         help="write simulated part images to a folder (e.g. to train a first model)")
    sim.add_argument("folder", help="output folder")
    sim.add_argument("-n", "--count", type=int, required=True, help="number of parts")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--width", type=int, default=256)
    sim.add_argument("--height", type=int, default=256)
    sim.add_argument("--defect-rate", type=float, default=0.0,
                     help="0 (default): only good parts, in FOLDER; >0: FOLDER/good and FOLDER/<defect kind>")
    sim.add_argument("--format", default="png", choices=["png", "jpeg"])
    sim.add_argument("--logical", action="store_true",
                     help="an MVTec-layout set of assembled brackets with logical defects (a bolt missing, one too "
                          "many, two swapped, one misplaced, a hole not drilled, the wrong finish): N training parts "
                          "in FOLDER/train/good, test parts in FOLDER/test/<kind>, masks in FOLDER/ground_truth")
    sim.add_argument("--test-good", type=int, default=40, help="--logical: good test parts (default 40)")
    sim.add_argument("--per-kind", type=int, default=20, help="--logical: test parts per defect kind (default 20)")
    return parser


def _cmd_run(args) -> int:
    from ingest.producer import FramePublisher
    from ingest.runner import CameraInfo, IngestRunner, ReconnectPolicy
    from ingest.sources import make_source
    from ingest.topics import ensure_topics

    settings = _settings(args)
    source = make_source(
        args.source, fps=args.fps, loop=args.loop or None, passthrough=args.passthrough or None,
        part_from_name=args.part_from_name or None, width=args.width, height=args.height,
        open_timeout_s=args.open_timeout, read_timeout_s=args.read_timeout, product=args.product,
        fault=args.fault, fault_after=args.fault_after,
        rtsp_transport=args.rtsp_transport, pixel_format=args.pixel_format, exposure_us=args.exposure_us, gain_db=args.gain_db, trigger=args.trigger,
    )
    if args.partitions:
        ensure_topics(settings, args.partitions)
    camera = CameraInfo(camera_id=args.camera_id, line=args.line, station=args.station, product=args.product)
    policy = ReconnectPolicy(initial_s=args.reconnect_initial, max_s=args.reconnect_max,
                             max_attempts=args.max_reconnects)
    publisher = FramePublisher(settings)
    runner = IngestRunner(source, publisher, camera, encoding=args.encoding, jpeg_quality=args.jpeg_quality,
                          max_frames=args.max_frames, reconnect=policy, flush_timeout_s=args.flush_timeout,
                          stats_interval_s=args.stats_interval)

    def _on_signal(signum, _frame):
        logging.getLogger("ingest").info("received %s: finishing", signal.Signals(signum).name)
        runner.stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        stats = runner.run()
    finally:
        publisher.close(timeout=10)
    print(json.dumps({"camera_id": args.camera_id, "run_id": runner.run_id, **stats.as_dict()}), flush=True)
    if stats.gave_up:
        return EXIT_GAVE_UP
    if stats.delivery_errors:
        return EXIT_UNDELIVERED
    return 0


def _cmd_topics(args) -> int:
    from ingest.topics import ensure_topics

    counts = ensure_topics(_settings(args), args.partitions)
    for name, n in counts.items():
        print(f"{name}\t{n} partitions")
    return 0


def _cmd_sim_write(args) -> int:
    from ingest.simulator import write_normal_parts, write_parts

    if args.logical:
        from ingest.logical import write_logical_set

        if args.width != args.height:
            raise ValueError("--logical writes square images: give --width equal to --height")
        counts = write_logical_set(args.folder, n_train=args.count, n_good=args.test_good, n_per_kind=args.per_kind,
                                   seed=args.seed, size=args.width, fmt=args.format)
        print(f"wrote {sum(counts.values())} parts to {args.folder}: "
              + ", ".join(f"{k} {v}" for k, v in counts.items()))
    elif args.defect_rate > 0:
        written = write_parts(args.folder, args.count, seed=args.seed, width=args.width, height=args.height,
                              defect_rate=args.defect_rate, fmt=args.format)
        defects = sum(1 for _, d in written if d)
        print(f"wrote {len(written)} parts ({defects} with defects) to {args.folder}")
    else:
        paths = write_normal_parts(args.folder, args.count, seed=args.seed, width=args.width,
                                   height=args.height, fmt=args.format)
        print(f"wrote {len(paths)} good parts to {args.folder}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level, args.log_format)
    handlers = {"run": _cmd_run, "topics": _cmd_topics, "sim-write": _cmd_sim_write}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - a clear one-line error for the operator
        logging.getLogger("ingest").error("%s: %s", type(exc).__name__, exc)
        if args.log_level == "debug":
            raise
        return 1


if __name__ == "__main__":
    sys.exit(main())
