"""Pipeline benchmark (outside CI): pipeline frames/s and capture-to-row latency vs the bare detector.

    python -m tests.benchmarks.pipeline --help
    python -m tests.benchmarks.pipeline -n 200                       # quick default-size model, 256x256 JPEG frames
    python -m tests.benchmarks.pipeline --checkpoint model.pt --frames /data/replay --json /tmp/pipeline.json

One run, same frames, same machine, side by side, interleaved (bare, pipeline, bare, pipeline,
bare: on a shared machine the load drifts, so each pipeline round is compared with the bare runs
just before and after it):

* **bare detector** — the frames decoded in memory (as they arrive: JPEG-decoded when the wire
  encoding is JPEG), ``Detector.predict`` in chunks of ``--max-batch``, timed over all frames.
* **pipeline round** — ``linewatch-detector serve`` and ``linewatch-storage writer`` (real
  subprocesses, SQLite) are up and idle; the N frames are published at once (as a camera backlog)
  and frames/s = N / (last row visible in the database - publish start).  Kafka runs on this
  machine too.  CPU seconds per frame of detector, writer and broker are read from /proc, in total
  and above what each burns idle (measured for ``--idle-seconds`` first): a load-independent view of
  the pipeline's cost next to the bare detector's CPU per frame.
* **latency** — frames published paced at ``--latency-load`` x the measured pipeline throughput;
  capture-to-row = when the row is visible in the database (polled every 20 ms) - the frame's
  capture time; p50/p99 (also split: capture -> inferred, inferred -> row).

Also printed: the service's own time per stage (decode, infer, encode, publish, commit) from its
``/metrics``, which says where the pipeline loses against the bare detector.

The broker is ``LINEWATCH_KAFKA_BOOTSTRAP`` if set, else a temporary one from deploy/kafka/kafka.sh.
Without ``--checkpoint`` an EAR + FADeR model of the given size (default 128 px input, 16 channels) is
trained for one epoch per stage on simulator parts and cached under ``~/.cache/linewatch/bench`` -- its
accuracy is irrelevant, inference cost depends only on the architecture.  For the default family
(CRAD), pass a CRAD checkpoint or its export with ``--checkpoint``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.benchmarks.pipeline",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--frames-count", type=int, default=200, help="frames for the throughput run (default 200)")
    p.add_argument("--frames", default=None, metavar="DIR",
                   help="image folder to replay (default: simulator parts written to a temp folder)")
    p.add_argument("--frame-size", default="256x256", metavar="WxH", help="simulator frame size (default 256x256)")
    p.add_argument("--encoding", default="jpeg", choices=["jpeg", "png"], help="frame encoding on the wire (default jpeg)")
    p.add_argument("--checkpoint", default=None, help="detector checkpoint (default: quick-trained, see above)")
    p.add_argument("--image-size", type=int, default=128, help="model input of the quick-trained model (default 128)")
    p.add_argument("--channels", type=int, default=16, help="U-Net width of the quick-trained model (default 16)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"], help="inference device (default cpu)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "openvino"],
                   help="runtime of both the bare detector and the service (default auto, as 'serve')")
    p.add_argument("--threads", type=int, default=None,
                   help="inference threads of both (default: the service's, half the usable CPUs)")
    p.add_argument("--max-batch", type=int, default=8, help="service batch size = bare chunk size (default 8)")
    p.add_argument("--max-wait-ms", type=int, default=50, help="service max wait (default 50)")
    p.add_argument("--batches-per-commit", type=int, default=4, help="service setting (default 4)")
    p.add_argument("--partitions", type=int, default=3, help="topic partitions (default 3)")
    p.add_argument("--writer-batch", type=int, default=200, help="writer batch size (default 200)")
    p.add_argument("--writer-wait-ms", type=int, default=100, help="writer max wait (default 100)")
    p.add_argument("--latency-frames", type=int, default=100, help="frames for the latency run (default 100; 0 = skip)")
    p.add_argument("--latency-seconds", type=float, default=40.0,
                   help="cap the latency run at about this long (fewer frames when the pipeline is slow; default 40)")
    p.add_argument("--latency-load", type=float, default=0.5,
                   help="latency run rate as a fraction of the measured pipeline throughput (default 0.5)")
    p.add_argument("--rounds", type=int, default=2,
                   help="pipeline rounds, each between two bare-detector runs (bare, pipe, bare, pipe, bare; default 2)")
    p.add_argument("--idle-seconds", type=float, default=10.0,
                   help="measure the idle CPU of broker and writer this long before the run (default 10)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the figures as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, database)")
    return p


# --------------------------------------------------------------------------------------- helpers

def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    k = (len(v) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


class Broker:
    """``LINEWATCH_KAFKA_BOOTSTRAP`` if set (and ``reuse``), else a broker of our own from deploy/kafka/kafka.sh."""

    def __init__(self, work: Path, reuse: bool = True):
        self.dir = None
        if reuse and os.environ.get("LINEWATCH_KAFKA_BOOTSTRAP"):
            self.bootstrap = os.environ["LINEWATCH_KAFKA_BOOTSTRAP"]
            return
        from tests.pipeline.harness import free_port

        self.dir = work / "kafka"
        self.dir.mkdir()
        self.port = free_port()
        _log("starting a Kafka broker (deploy/kafka/kafka.sh)")
        self._start()
        self.bootstrap = f"127.0.0.1:{self.port}"

    def _start(self, env: dict[str, str] | None = None) -> None:
        env = {**os.environ, "KAFKA_WATCH_PID": str(os.getpid()), **(env or {})}
        subprocess.run(["bash", str(REPO / "deploy/kafka/kafka.sh"), "start", str(self.dir), str(self.port)], env=env,
                       check=True, stdout=subprocess.DEVNULL, timeout=600)

    def restart(self) -> None:
        """A clean stop, then a start on the same ports and data (only a broker of our own)."""
        assert self.dir is not None, "only a broker this benchmark started can be restarted"
        props = (self.dir / "server.properties").read_text()
        controller = props.split("controller.quorum.voters=1@127.0.0.1:", 1)[1].split()[0]
        self.stop()
        self._start({"KAFKA_CONTROLLER_PORT": controller})

    def pid(self) -> int | None:
        try:
            return int((self.dir / "kafka.pid").read_text().strip()) if self.dir is not None else None
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        if self.dir is not None:
            subprocess.run(["bash", str(REPO / "deploy/kafka/kafka.sh"), "stop", str(self.dir)], timeout=120,
                           stdout=subprocess.DEVNULL)


def clean_up(broker: Broker, work: Path, keep: bool) -> None:
    """A benchmark's last step: stop its broker, remove its temporary folder unless ``keep``."""
    broker.stop()
    if keep:
        _log(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def quick_checkpoint(image_size: int, channels: int) -> Path:
    """A model of the given architecture trained for one epoch per stage (cached)."""
    cache = Path(os.environ.get("LINEWATCH_CACHE", Path.home() / ".cache/linewatch")) / "bench"
    out = cache / f"quick-{image_size}px-{channels}ch.pt"
    if out.is_file():
        return out
    from detector.workflow import train_from_folder
    from ingest.simulator import write_normal_parts

    _log(f"training a quick {image_size}px/{channels}ch model (cached in {out})")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        write_normal_parts(Path(tmp) / "sim" / "train" / "good", 24, seed=1)
        train_from_folder(Path(tmp) / "sim", out, model="fader", profile="cpu", product="flange", device="cpu",
                          overrides={"image_size": image_size, "unet_channels": channels, "mosaic_scale": 8,
                                     "mask_quantile": 0.5, "auto_m": False, "auto_q": False, "epochs_ear": 1,
                                     "epochs_fader": 1}, progress=False)
    return out


def bare_fps(det, frames: list, batch: int) -> tuple[float, float]:
    """(frames/s, CPU seconds per frame) of ``Detector.predict`` over ``frames``."""
    det.predict(frames[:batch])  # warm-up
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(0, len(frames), batch):
        det.predict(frames[i:i + batch])
    return len(frames) / (time.perf_counter() - t0), (time.process_time() - c0) / len(frames)


def service_backend(logs: str) -> str:
    """What the detector service said its models run on (its ``models loaded`` log line)."""
    import re

    found = re.findall(r"runs_on=\"?([\w,]+)", logs)
    return found[-1] if found else "unknown"


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process (Linux /proc), 0 if unknown."""
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def watch_rows(engine, stop: threading.Event, seen: dict[str, float]) -> None:
    """Record when each row becomes visible (polling every 20 ms)."""
    from sqlalchemy import select

    from storage.models import Inspection

    last = 0
    while not stop.is_set():
        try:
            with engine.connect() as c:
                rows = c.execute(select(Inspection.id, Inspection.frame_id).where(Inspection.id > last)).all()
        except Exception:  # noqa: BLE001 - database not migrated yet
            rows = []
        now = time.time()
        for rid, fid in rows:
            seen.setdefault(fid, now)
            last = max(last, rid)
        stop.wait(0.02)


def stage_seconds(metrics_text: str) -> dict[str, float]:
    out = {}
    for line in metrics_text.splitlines():
        if line.startswith("linewatch_detector_stage_seconds_sum{"):
            stage = line.split('stage="', 1)[1].split('"', 1)[0]
            out[stage] = float(line.rsplit(" ", 1)[1])
    return out


# ------------------------------------------------------------------------------------------ main

def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from sqlalchemy import select

    from detector.inference import Detector
    from detector.service.settings import default_threads
    from ingest.kafka_config import KafkaSettings
    from ingest.producer import publish_folder
    from storage.db import init_db, make_engine
    from storage.models import Inspection
    from tests.pipeline.harness import Pipeline, free_port, http_get, read_rgb, wait_for

    work = Path(tempfile.mkdtemp(prefix="lw-pipeline-bench-"))
    broker = Broker(work)
    pipeline = None
    try:
        ckpt = Path(args.checkpoint) if args.checkpoint else quick_checkpoint(args.image_size, args.channels)
        if args.frames:
            frames_dir = Path(args.frames)
        else:
            from ingest.simulator import write_parts

            w, h = (int(x) for x in args.frame_size.lower().split("x"))
            frames_dir = work / "frames"
            _log(f"writing {args.frames_count} simulator frames ({w}x{h})")
            paths = write_parts(work / "sim", args.frames_count, seed=3, width=w, height=h, defect_rate=0.1)
            frames_dir.mkdir()
            for i, (p, _d) in enumerate(paths):
                shutil.copy(p, frames_dir / f"{i:06d}{p.suffix}")
        files = sorted(q for q in frames_dir.iterdir() if q.suffix.lower() in (".png", ".jpg", ".jpeg"))
        files = (files * (args.frames_count // max(1, len(files)) + 1))[:args.frames_count]
        n = len(files)

        # the bare detector on the same frames as the service will decode them
        # (JPEG on the wire: bare scores the JPEG-decoded pixels too)
        import cv2
        import numpy as np

        from ingest.frames import encode_image

        def wire_pixels(f: Path):
            rgb = read_rgb(f)
            if args.encoding == "jpeg":
                data, _ = encode_image(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), "jpeg")
                rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            return rgb

        frames = [wire_pixels(f) for f in files]
        threads = args.threads or default_threads()
        torch.set_num_threads(threads)  # the same pools as the service (serve --threads)
        det = Detector.load(ckpt, device=args.device, batch_size=args.max_batch, backend=args.backend, threads=threads)
        _log(f"model {det.version}: input {det.image_size}px, device {det.device}, backend {det.backend}, "
             f"{threads} threads; {n} frames {frames[0].shape[1]}x{frames[0].shape[0]} {args.encoding}")
        bare_runs = [bare_fps(det, frames, args.max_batch)]
        _log(f"bare detector: {bare_runs[-1][0]:.2f} frames/s, {bare_runs[-1][1] * 1000:.0f} CPU ms/frame")

        # the pipeline: services up and idle first
        settings = KafkaSettings(kafka_bootstrap=broker.bootstrap, topic_prefix=f"lwbench-{os.getpid()}")
        db_dir = work / "lwdata"
        db_dir.mkdir()
        url = f"sqlite:///{db_dir / 'linewatch.db'}"
        engine = make_engine(url)
        init_db(engine)
        env = {**os.environ, "LINEWATCH_DATABASE_URL": url, "LINEWATCH_DATA_DIR": str(db_dir)}
        pipeline = Pipeline(settings, env, url, work / "logs", ckpt, partitions=args.partitions)
        ordered = work / "ordered"  # publish in a fixed order under unique names
        ordered.mkdir()
        for i, f in enumerate(files):
            shutil.copy(f, ordered / f"{i:06d}{f.suffix}")

        seen: dict[str, float] = {}
        stop = threading.Event()
        watcher = threading.Thread(target=watch_rows, args=(engine, stop, seen), daemon=True)
        watcher.start()
        writer_port = free_port()
        writer = pipeline.start_writer("--batch-size", str(args.writer_batch), "--max-wait-ms", str(args.writer_wait_ms),
                                       "--http-port", str(writer_port))
        port = free_port()
        detector = pipeline.start_detector("--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
                                           "--batches-per-commit", str(args.batches_per_commit),
                                           "--backend", args.backend, "--threads", str(threads),
                                           "--sample-rate", "0.01", http_port=port, device=args.device)

        def up(p: int, path: str) -> bool:
            try:
                return http_get(p, path, timeout=2)[0] == 200
            except OSError:
                return False

        wait_for(lambda: up(writer_port, "/healthz") and up(port, "/readyz"), 300, "writer and detector",
                 [writer, detector], pipeline.logs, interval=0.2)
        time.sleep(3.0)
        # fixed costs: what the services burn per second while idle, whatever the frame rate
        pids = {"detector": detector.pid, "writer": writer.pid, "broker": broker.pid()}
        c_idle, t_idle = {k: cpu_seconds(p) for k, p in pids.items()}, time.monotonic()
        time.sleep(args.idle_seconds)
        idle_rate = {k: (cpu_seconds(p) - c_idle[k]) / (time.monotonic() - t_idle) for k, p in pids.items()}
        _log("idle CPU: " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in idle_rate.items()))

        def metrics_text() -> str:
            return http_get(port, "/metrics")[1].decode()

        pipe_runs: list[dict[str, Any]] = []
        for rnd in range(args.rounds):
            st0, cpu0 = stage_seconds(metrics_text()), {k: cpu_seconds(p) for k, p in pids.items()}
            t0 = time.time()
            metas = publish_folder(settings, ordered, camera_id=f"bench-cam-{rnd}", product="flange",
                                   encoding=args.encoding, partitions=None, timeout_s=300)
            ids = {m.frame_id for m in metas}
            wait_for(lambda: ids <= seen.keys(), 1800, f"{n} rows", [detector, writer], pipeline.logs, interval=0.05)
            t_last = max(seen[i] for i in ids)
            cpu = {k: (cpu_seconds(p) - cpu0[k]) / n for k, p in pids.items()}
            span = t_last - t0
            with engine.connect() as c:
                last_inf = max(_aware(v).timestamp() for v in c.execute(
                    select(Inspection.inferred_at).where(Inspection.frame_id.in_(ids))).scalars())
            st1 = stage_seconds(metrics_text())
            run_ = {"fps": n / span, "detector_fps": n / (last_inf - t0),
                    "cpu_ms_per_frame": {k: 1000 * v for k, v in cpu.items()},
                    "cpu_ms_per_frame_above_idle": {k: 1000 * (v - idle_rate[k] * span / n) for k, v in cpu.items()},
                    "stage_seconds": {k: st1[k] - st0.get(k, 0.0) for k in st1}}
            pipe_runs.append(run_)
            _log(f"pipeline round {rnd + 1}: {run_['fps']:.2f} frames/s (detector {run_['detector_fps']:.2f}), "
                 f"CPU ms/frame " + ", ".join(f"{k} {v:.0f}" for k, v in run_["cpu_ms_per_frame"].items()))
            bare_runs.append(bare_fps(det, frames, args.max_batch))
            _log(f"bare detector: {bare_runs[-1][0]:.2f} frames/s, {bare_runs[-1][1] * 1000:.0f} CPU ms/frame")

        # latency at a fixed load
        pipe_fps = statistics.mean(r["fps"] for r in pipe_runs)
        lat: dict[str, Any] = {}
        if args.latency_frames > 0:
            rate = max(0.1, args.latency_load * pipe_fps)
            count = max(10, min(args.latency_frames, int(rate * args.latency_seconds)))
            _log(f"latency run: {count} frames at {rate:.2f} frames/s")
            metas2 = publish_folder(settings, ordered, camera_id="bench-cam-latency", product="flange",
                                    encoding=args.encoding, fps=rate, limit=count, loop=True,
                                    partitions=None, timeout_s=300)
            ids2 = {m.frame_id for m in metas2}
            wait_for(lambda: ids2 <= seen.keys(), 300, "latency rows", [detector, writer], pipeline.logs)
            with engine.connect() as c:
                rows2 = c.execute(select(Inspection.frame_id, Inspection.captured_at, Inspection.inferred_at,
                                         Inspection.stored_at).where(Inspection.frame_id.in_(ids2))).all()
            to_row = [seen[r.frame_id] - _aware(r.captured_at).timestamp() for r in rows2]
            to_inf = [(_aware(r.inferred_at) - _aware(r.captured_at)).total_seconds() for r in rows2]
            inf_row = [seen[r.frame_id] - _aware(r.inferred_at).timestamp() for r in rows2]
            lat = {"rate_fps": rate, "frames": len(rows2),
                   "capture_to_row_p50_ms": 1000 * _pct(to_row, 0.5), "capture_to_row_p99_ms": 1000 * _pct(to_row, 0.99),
                   "capture_to_row_max_ms": 1000 * max(to_row),
                   "capture_to_inferred_p50_ms": 1000 * _pct(to_inf, 0.5),
                   "inferred_to_row_p50_ms": 1000 * _pct(inf_row, 0.5)}
        stop.set()
        watcher.join(5)
        pipeline.close()

        # each pipeline round against the mean of the bare runs just before and after it
        ratios = [r["fps"] / ((bare_runs[i][0] + bare_runs[i + 1][0]) / 2) for i, r in enumerate(pipe_runs)]
        bare = statistics.mean(b[0] for b in bare_runs)
        bare_cpu = statistics.mean(b[1] for b in bare_runs)
        cpu_pipe = {k: statistics.mean(r["cpu_ms_per_frame"][k] for r in pipe_runs) for k in pids}
        cpu_work = {k: statistics.mean(r["cpu_ms_per_frame_above_idle"][k] for r in pipe_runs) for k in pids}
        stages = {k: sum(r["stage_seconds"].get(k, 0.0) for r in pipe_runs) for k in pipe_runs[0]["stage_seconds"]}
        total_stage = sum(stages.values()) or 1.0
        ratio = statistics.mean(ratios)
        result = {
            "frames": n, "frame_size": f"{frames[0].shape[1]}x{frames[0].shape[0]}", "encoding": args.encoding,
            "model_version": det.version, "image_size": det.image_size, "device": str(det.device),
            "backend": det.backend, "service_backend": service_backend(pipeline.logs(tail=10**9)),
            "torch_threads": threads, "cpus": os.cpu_count(), "max_batch": args.max_batch,
            "max_wait_ms": args.max_wait_ms, "partitions": args.partitions,
            "batches_per_commit": args.batches_per_commit, "rounds": args.rounds,
            "bare_fps": bare, "bare_fps_runs": [b[0] for b in bare_runs],
            "pipeline_fps": pipe_fps, "pipeline_fps_runs": [r["fps"] for r in pipe_runs],
            "detector_service_fps": statistics.mean(r["detector_fps"] for r in pipe_runs),
            "ratio": ratio, "ratio_runs": ratios,
            "bare_cpu_ms_per_frame": 1000 * bare_cpu,
            "pipeline_cpu_ms_per_frame": cpu_pipe,
            "cpu_efficiency": 1000 * bare_cpu / max(1e-9, sum(cpu_pipe.values())),
            "idle_cpu_cores": idle_rate,
            "pipeline_cpu_ms_per_frame_above_idle": cpu_work,
            "cpu_efficiency_above_idle": 1000 * bare_cpu / max(1e-9, sum(cpu_work.values())),
            "target_ratio": 0.95, "target_met": ratio >= 0.95,
            "service_stage_share": {k: v / total_stage for k, v in stages.items()},
            "service_stage_seconds": stages,
            "latency": lat,
        }
        return result
    finally:
        if pipeline is not None:
            pipeline.close()
        clean_up(broker, work, args.keep)


def print_table(r: dict[str, Any]) -> None:
    lat = r.get("latency") or {}
    runs = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    rows = [
        ("frames", f"{r['frames']} per round x {r['frame_size']} {r['encoding']}, model {r['image_size']}px on "
                   f"{r['device']}, {r['backend']} (service: {r['service_backend']}; {r['torch_threads']} threads, "
                   f"{r['cpus']} CPUs), batch {r['max_batch']}, "
                   f"{r['batches_per_commit']} batches/commit"),
        ("bare detector", f"{r['bare_fps']:.2f} frames/s (runs: {runs(r['bare_fps_runs'])})"),
        ("pipeline", f"{r['pipeline_fps']:.2f} frames/s (rounds: {runs(r['pipeline_fps_runs'])})"),
        ("pipeline / bare", f"{100 * r['ratio']:.1f} % (per round vs the bare runs around it: "
                            + ", ".join(f"{100 * x:.1f} %" for x in r["ratio_runs"])
                            + f"; target >= 95 %: {'met' if r['target_met'] else 'MISSED'})"),
        ("CPU per frame", f"bare {r['bare_cpu_ms_per_frame']:.0f} ms; pipeline "
                          f"{sum(r['pipeline_cpu_ms_per_frame'].values()):.0f} ms ("
                          + ", ".join(f"{k} {v:.0f}" for k, v in r["pipeline_cpu_ms_per_frame"].items())
                          + f") -> bare/pipeline = {100 * r['cpu_efficiency']:.1f} %"),
        ("CPU per frame above idle", f"pipeline {sum(r['pipeline_cpu_ms_per_frame_above_idle'].values()):.0f} ms ("
                                     + ", ".join(f"{k} {v:.0f}" for k, v in r["pipeline_cpu_ms_per_frame_above_idle"].items())
                                     + "; idle: " + ", ".join(f"{k} {100 * v:.1f} % of a core"
                                                             for k, v in r["idle_cpu_cores"].items())
                                     + f") -> bare/pipeline = {100 * r['cpu_efficiency_above_idle']:.1f} %"),
        ("detector service alone", f"{r['detector_service_fps']:.2f} frames/s (publish start -> last inference)"),
        ("service time by stage", ", ".join(f"{k} {100 * v:.1f} %" for k, v in
                                            sorted(r["service_stage_share"].items(), key=lambda kv: -kv[1]))),
    ]
    if lat:
        rows.append(("capture -> row", f"p50 {lat['capture_to_row_p50_ms']:.0f} ms, p99 {lat['capture_to_row_p99_ms']:.0f} ms "
                                       f"({lat['frames']} frames at {lat['rate_fps']:.2f} frames/s; capture -> inferred "
                                       f"p50 {lat['capture_to_inferred_p50_ms']:.0f} ms, inferred -> row p50 "
                                       f"{lat['inferred_to_row_p50_ms']:.0f} ms)"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run(args)
    print_table(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
