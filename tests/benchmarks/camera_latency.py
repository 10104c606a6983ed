"""Camera-to-reject-gate latency (outside CI): camera exposure timestamp -> verdict on MQTT and OPC UA.

    python -m tests.benchmarks.camera_latency --help
    nice -n 10 python -m tests.benchmarks.camera_latency --rates 2,10,30 --seconds 20 --json /tmp/lat.json

Everything real, on this machine's loopback interface:

* camera: Aravis' simulated GigE Vision camera (``arv-fake-gv-camera-0.8 -i 127.0.0.1``), BayerRG8
  512x512 at the rate under test; ``linewatch-ingest run --source genicam:127.0.0.1`` demosaics,
  JPEG-encodes and publishes; ``lw-captured-at`` is the camera's own timestamp (see ingest/genicam.py);
* Kafka: ``LINEWATCH_KAFKA_BOOTSTRAP`` if set, else a temporary broker from deploy/kafka/kafka.sh;
* ``linewatch-detector serve`` on the CPU with its default settings and the model given by
  ``--checkpoint`` (e.g. a CRAD checkpoint or export, the default family); without it, an EAR + FADeR
  model at 256 px, 32 channels, quick-trained and cached by tests/benchmarks/pipeline.py (accuracy is
  irrelevant to its speed);
* ``linewatch-bridge mqtt`` to Debian's mosquitto and ``linewatch-bridge opcua`` (both at once, as a
  line would run them);
* receivers: an MQTT subscriber (QoS 1) and an asyncua client subscribed to each camera's ``FrameId``
  variable (``--opcua-interval-ms`` publishing interval), stamping the arrival time.

Latency per frame = arrival time - the camera's timestamp for that frame.  Per rate: p50 / p99 / max
over the delivered frames (``--warmup`` leaves out the first seconds), the split capture -> inferred -> MQTT, and the
verdict rate achieved (a rate above the detector's throughput builds a queue: its latency grows
with the run's length, which the table shows as ``overloaded``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.benchmarks.pipeline import Broker, _log, _pct, clean_up, quick_checkpoint

REPO = Path(__file__).resolve().parents[2]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.benchmarks.camera_latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="2,10,30", help="camera frame rates to measure, frames/s (default 2,10,30)")
    p.add_argument("--seconds", type=float, default=20.0, help="camera run per rate, seconds (default 20)")
    p.add_argument("--warmup", type=float, default=0.0,
                   help="leave out frames captured in the first seconds of each run (default 0: the services are "
                        "warm, and an overloaded run delivers only its first frames)")
    p.add_argument("--checkpoint", default=None,
                   help="detector checkpoint or export (default: a quick-trained EAR + FADeR model, 256 px / 32 ch)")
    p.add_argument("--pixel-format", default="BayerRG8", help="camera pixel format (default BayerRG8)")
    p.add_argument("--opcua-interval-ms", type=float, default=10.0,
                   help="OPC UA subscription publishing interval requested by the client (default 10)")
    p.add_argument("--drain-seconds", type=float, default=180.0,
                   help="after the camera stops, wait at most this long for the last verdicts (default 180)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "openvino"],
                   help="runtime of the detector service and the bare timing (default auto, as 'serve')")
    p.add_argument("--bare-frames", type=int, default=4,
                   help="time Detector.predict alone on this many camera-sized frames first (default 4; 0 = skip)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the figures as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    return p


class OpcUaWatcher:
    """An asyncua client (own thread) that stamps when each camera's FrameId variable changes."""

    def __init__(self, url: str, interval_ms: float) -> None:
        from asyncua.sync import Client

        self.arrivals: dict[str, float] = {}
        self.ignored: set[str] = set()
        self._lock = threading.Lock()
        self.client = Client(url, timeout=10)
        self.client.connect()
        self.ns = self.client.get_namespace_index("urn:linewatch")
        self.sub = self.client.create_subscription(interval_ms, self)
        self.interval_ms = interval_ms

    def datachange_notification(self, node, val, data) -> None:  # asyncua's handler API
        now = time.time()
        with self._lock:
            if val and val not in self.ignored:
                self.arrivals.setdefault(val, now)

    def watch(self, line: str, camera: str, timeout_s: float = 60.0) -> bool:
        """Subscribe once the camera's node exists (the OPC UA bridge creates it with its first verdict)."""
        from asyncua import ua

        node = self.client.get_node(ua.NodeId(f"{line}/{camera}/FrameId", self.ns))
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                current = node.read_value()
                break
            except ua.UaStatusCodeError:
                if time.monotonic() > deadline:
                    _log(f"no OPC UA node for {camera} after {timeout_s:g}s: OPC UA not measured at this rate")
                    return False
                time.sleep(0.05)
        with self._lock:
            self.ignored.add(current)  # a new subscription first reports the value already there
        self.sub.subscribe_data_change(node)
        return True

    def close(self) -> None:
        try:
            self.sub.delete()
        finally:
            self.client.disconnect()


def bare_ms_per_frame(ckpt: Path, n: int, backend: str = "auto") -> tuple[float, str]:
    """``Detector.predict`` alone, one 512x512 frame at a time after a warm-up, on the service's thread
    count: what the model costs here -> (ms per frame, the backend it ran on)."""
    import numpy as np
    import torch

    from detector.inference import Detector
    from detector.service.settings import default_threads

    torch.set_num_threads(default_threads())
    det = Detector.load(ckpt, device="cpu", backend=backend, threads=default_threads())
    frame = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    det.predict([frame])
    t0 = time.perf_counter()
    for _ in range(n):
        det.predict([frame])
    return 1000 * (time.perf_counter() - t0) / n, det.backend


def _ms(values: list[float], q: float) -> float:
    return 1000 * _pct(values, q)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ingest.kafka_config import KafkaSettings
    from ingest.topics import ensure_topics
    from tests.bridges.helpers import Mosquitto, Subscriber
    from tests.ingest.helpers import FakeCamera
    from tests.pipeline.harness import cli, free_port, http_get, wait_for

    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    work = Path(tempfile.mkdtemp(prefix="lw-camera-latency-"))
    broker = Broker(work)
    procs: list[subprocess.Popen] = []
    logs: list[Path] = []
    camera = mosquitto = subscriber = watcher = None
    env: dict[str, str] = dict(os.environ)

    def start(name: str, argv: list[str]) -> subprocess.Popen:
        path = work / f"{name}.log"
        logs.append(path)
        with open(path, "wb") as log:
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        procs.append(proc)
        return proc

    def tail_logs() -> str:
        return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-2000:]}" for p in logs if p.exists())

    try:
        ckpt = Path(args.checkpoint) if args.checkpoint else quick_checkpoint(256, 32)
        bare_ms, bare_backend = bare_ms_per_frame(ckpt, args.bare_frames, args.backend) if args.bare_frames \
            else (float("nan"), "-")
        _log(f"bare detector ({ckpt.name}, CPU, {bare_backend}): {bare_ms:.0f} ms per 512x512 frame "
             f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
        camera = FakeCamera()
        camera.start()
        mosquitto = Mosquitto(work)
        mosquitto.start()
        subscriber = Subscriber(mosquitto.port)
        bridge = [*cli("linewatch-bridge", "storage.bridges.cli")]

        def start_services(prefix: str) -> tuple[list[subprocess.Popen], str]:
            """Detector and both bridges on their own topics and groups (a backlog never leaks into the next rate)."""
            nonlocal env
            settings = KafkaSettings(kafka_bootstrap=broker.bootstrap, topic_prefix=prefix)
            ensure_topics(settings, 3)
            env = {**os.environ, "LINEWATCH_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                   "LINEWATCH_TOPIC_PREFIX": prefix, "PYTHONUNBUFFERED": "1",
                   "LINEWATCH_DETECTOR_GROUP": f"{prefix}-detector"}
            url = f"opc.tcp://127.0.0.1:{free_port()}/linewatch/"
            ports = {name: free_port() for name in ("detector", "mqtt", "opcua")}
            started = [
                start(f"{prefix}-detector", [*cli("linewatch-detector", "detector.cli"), "serve", "--device", "cpu",
                                             "--backend", args.backend, "--model", str(ckpt),
                                             "--http-port", str(ports["detector"])]),
                start(f"{prefix}-bridge-mqtt", [*bridge, "mqtt", "--host", "127.0.0.1", "--port", str(mosquitto.port),
                                                "--group", f"{prefix}-mqtt", "--http-port", str(ports["mqtt"])]),
                start(f"{prefix}-bridge-opcua", [*bridge, "opcua", "--endpoint", url, "--group", f"{prefix}-opcua",
                                                 "--http-port", str(ports["opcua"])]),
            ]

            def ready() -> bool:
                try:
                    return all(http_get(p, "/readyz", timeout=2)[0] == 200 for p in ports.values())
                except OSError:
                    return False

            wait_for(ready, 600, "detector and bridges ready", started, tail_logs, interval=0.5)
            time.sleep(3.0)  # the bridges' consumer groups settle on their partitions
            return started, url

        def stop_services(started: list[subprocess.Popen]) -> None:
            for p in started:
                p.kill()  # a backlog is thrown away, not worked off
            for p in started:
                p.wait(20)

        results = []
        for rate in rates:
            cam_id = f"gige-{rate:g}fps"
            count = max(5, int(rate * args.seconds))
            services, opcua_url = start_services(f"lwcam-{os.getpid()}-{rate:g}")
            watcher = OpcUaWatcher(opcua_url, args.opcua_interval_ms)
            load0 = os.getloadavg()[0]
            _log(f"{rate:g} frames/s: {count} frames from the simulated camera (load average {load0:.1f} on "
                 f"{os.cpu_count()} CPUs)")
            ingest = start(f"ingest-{cam_id}", [
                *cli("linewatch-ingest", "ingest.cli"), "run", "--source", "genicam:127.0.0.1",
                "--pixel-format", args.pixel_format, "--fps", f"{rate:g}", "--camera-id", cam_id, "--line", "bench",
                "--max-frames", str(count), "--partitions", "0"])

            def mine() -> list:
                return [m for m in subscriber.snapshot() if m[1]["camera_id"] == cam_id]

            wait_for(lambda: bool(mine()), 120, f"the first verdict of {cam_id}", services, tail_logs, interval=0.1)
            watcher.watch("bench", cam_id)
            ingest.wait(args.seconds * 3 + 120)
            summary = [ln for ln in (work / f"ingest-{cam_id}.log").read_text().splitlines() if ln.startswith("{")]
            published = json.loads(summary[-1])  # the JSON line linewatch-ingest prints at exit
            expect = published["published"]
            drained = True
            try:
                wait_for(lambda: len({m[1]["frame_id"] for m in mine()}) >= expect, args.drain_seconds,
                         f"{expect} verdicts of {cam_id}", services, tail_logs,
                         interval=0.2)
            except AssertionError:
                drained = False
            time.sleep(1.0)  # the OPC UA notifications of the last frames
            msgs = {m[1]["frame_id"]: m for m in mine()}
            first_capture = min(datetime.fromisoformat(m[1]["captured_at"]).timestamp() for m in msgs.values())
            mqtt_lat, opc_lat, to_inf, inf_to_mqtt, inf_to_opc = [], [], [], [], []
            for fid, (_t, payload, _q, _r, arrived) in msgs.items():
                captured = datetime.fromisoformat(payload["captured_at"]).timestamp()
                if captured < first_capture + args.warmup:
                    continue
                inferred = datetime.fromisoformat(payload["inferred_at"]).timestamp()
                mqtt_lat.append(arrived - captured)
                to_inf.append(inferred - captured)
                inf_to_mqtt.append(arrived - inferred)
                if fid in watcher.arrivals:
                    opc_lat.append(watcher.arrivals[fid] - captured)
                    inf_to_opc.append(watcher.arrivals[fid] - inferred)
            span = max(m[4] for m in msgs.values()) - min(m[4] for m in msgs.values())
            row = {
                "rate_fps": rate, "frames_captured": published["captured"], "frames_published": expect,
                "verdicts_mqtt": len(msgs), "measured": len(mqtt_lat), "opcua_measured": len(opc_lat),
                "all_delivered": drained, "verdict_rate_fps": (len(msgs) - 1) / span if span > 0 else float("nan"),
                "mqtt_p50_ms": _ms(mqtt_lat, 0.5), "mqtt_p99_ms": _ms(mqtt_lat, 0.99),
                "mqtt_max_ms": 1000 * max(mqtt_lat) if mqtt_lat else float("nan"),
                "opcua_p50_ms": _ms(opc_lat, 0.5), "opcua_p99_ms": _ms(opc_lat, 0.99),
                "capture_to_inferred_p50_ms": _ms(to_inf, 0.5), "inferred_to_mqtt_p50_ms": _ms(inf_to_mqtt, 0.5),
                "inferred_to_mqtt_p99_ms": _ms(inf_to_mqtt, 0.99), "inferred_to_opcua_p50_ms": _ms(inf_to_opc, 0.5),
                "inferred_to_opcua_p99_ms": _ms(inf_to_opc, 0.99),
                "load_average": [load0, os.getloadavg()[0]],
            }
            row["overloaded"] = row["verdict_rate_fps"] < 0.9 * rate or not drained
            results.append(row)
            watcher.close()
            watcher = None
            stop_services(services)
            _log(f"{rate:g} frames/s: MQTT p50 {row['mqtt_p50_ms']:.0f} ms, p99 {row['mqtt_p99_ms']:.0f} ms; "
                 f"OPC UA p50 {row['opcua_p50_ms']:.0f} ms, p99 {row['opcua_p99_ms']:.0f} ms; "
                 f"verdicts at {row['verdict_rate_fps']:.1f}/s{' (OVERLOADED)' if row['overloaded'] else ''}")
        return {"model": str(ckpt), "bare_ms_per_frame": bare_ms, "bare_backend": bare_backend,
                "backend": args.backend, "pixel_format": args.pixel_format, "frame_size": "512x512",
                "seconds": args.seconds, "warmup_s": args.warmup, "cpus": os.cpu_count(),
                "opcua_publishing_interval_ms": args.opcua_interval_ms, "rates": results,
                "target": "capture-to-MQTT p99 at 10 frames/s <= 1000 ms",
                "target_met": any(r["rate_fps"] == 10 and r["mqtt_p99_ms"] <= 1000 and not r["overloaded"]
                                  for r in results)}
    finally:
        for closer in (watcher and watcher.close, subscriber and subscriber.close):
            if closer:
                try:
                    closer()
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        if mosquitto is not None:
            mosquitto.stop()
        if camera is not None:
            camera.kill()
        clean_up(broker, work, args.keep)


def print_table(r: dict[str, Any]) -> None:
    print(f"bare detector: {r['bare_ms_per_frame']:.0f} ms per frame on {r['bare_backend']} "
          f"(service --backend {r['backend']})")
    print(f"camera {r['pixel_format']} {r['frame_size']} -> ingest -> Kafka -> detector ({Path(r['model']).name}, CPU) "
          f"-> bridges; {r['seconds']:g} s per rate, first {r['warmup_s']:g} s left out; OPC UA publishing interval "
          f"{r['opcua_publishing_interval_ms']:g} ms")
    print("| camera frames/s | verdicts/s | frames | MQTT p50 | MQTT p99 | MQTT max | OPC UA p50 | OPC UA p99 | "
          "capture->inferred p50 | inferred->MQTT p50 / p99 | inferred->OPC UA p50 / p99 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for x in r["rates"]:
        flag = " (overloaded)" if x["overloaded"] else ""
        print(f"| {x['rate_fps']:g} | {x['verdict_rate_fps']:.1f}{flag} | {x['measured']} | {x['mqtt_p50_ms']:.0f} ms | "
              f"{x['mqtt_p99_ms']:.0f} ms | {x['mqtt_max_ms']:.0f} ms | {x['opcua_p50_ms']:.0f} ms | "
              f"{x['opcua_p99_ms']:.0f} ms | {x['capture_to_inferred_p50_ms']:.0f} ms | "
              f"{x['inferred_to_mqtt_p50_ms']:.0f} / {x['inferred_to_mqtt_p99_ms']:.0f} ms | "
              f"{x['inferred_to_opcua_p50_ms']:.0f} / {x['inferred_to_opcua_p99_ms']:.0f} ms |")
    print(f"target ({r['target']}): {'met' if r['target_met'] else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run()'s clean-up stops the camera and services
    result = run(args)
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
