"""Soak with faults (outside CI; a 1000-frame version runs in CI: tests/pipeline/test_soak.py).

    python -m tests.benchmarks.soak --help
    nice -n 10 python -m tests.benchmarks.soak --frames 10000 --json /tmp/soak.json
    python -m tests.benchmarks.soak --frames 1000 --db sqlite --outage-s 10 --rate 10

Frames of ``--cameras`` cameras (ingest's ``IngestRunner``, one thread per camera, paced at ``--rate``
frames/s in all, lossless PNG from a folder of generated 64 px parts, looped) go through the whole
pipeline: Kafka -> ``linewatch-detector serve`` -> results -> ``linewatch-storage writer`` ->
database, the services as real subprocesses with a tiny real EAR + FADeR model (trained in seconds,
or ``--checkpoint``).  Meanwhile faults are injected one after another, spread over the stream
(each when its share of the frames has been sent, and once the line works again after the last
one: both services ready, rows stored since):

* the detector is SIGKILLed ``--detector-kills`` times and the writer ``--writer-kills`` times,
  each started again ``--restart-delay-s`` later (what systemd or Kubernetes would do);
* the broker is restarted ``--broker-restarts`` times (a clean stop, then a start on the same port
  and data): always a broker of the soak's own (deploy/kafka/kafka.sh, 127.0.0.1), never
  ``LINEWATCH_KAFKA_BOOTSTRAP``'s;
* the database is unreachable for ``--outage-s`` seconds: PostgreSQL (``--db postgresql``, a
  private server from deploy/ci/postgres.sh in the soak's folder) is stopped and started again;
  SQLite (``--db sqlite``) is locked by another process holding an exclusive transaction.  The
  writer's ``/readyz`` and ``/healthz`` are sampled throughout: honest means not ready (503,
  ``waiting``) while it cannot store, alive (``/healthz`` 200: a restart would not help), and
  ready again once it stores.

Then it waits (at most ``--drain-s``) until the consumer groups have caught up and reports, by
frame id:

* ``frames_sent``: acknowledged by the broker (``producer_dropped``: what the cameras could not
  deliver, e.g. past the delivery timeout during the broker restart; not sent, so not lost);
* ``rows_stored``; ``lost``: sent, but neither stored nor dead-lettered; ``duplicated``: rows
  beyond one per frame (frame id, or camera and sequence number); ``dead_lettered``;
* ``longest_gap_s``: the longest time no row was stored between the first and the last row
  (``stored_at``), and when it began;
* replays, which are not duplicates: results published more than once (a detector killed after
  publishing, before committing) and frames on the topic more than once (producer retries).

Everything is bounded: frames, fault durations, ``--timeout-s`` for the whole run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tests.benchmarks.pipeline import REPO, Broker, _log, _pct, clean_up

KINDS = ("detector-kill", "writer-kill", "broker-restart", "database-outage")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.benchmarks.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=10_000, help="frames to send, all cameras (default 10000)")
    p.add_argument("--cameras", type=int, default=4, help="cameras, one producer thread each (default 4)")
    p.add_argument("--rate", type=float, default=10.0, help="frames/s, all cameras together (default 10)")
    p.add_argument("--db", default="postgresql", choices=["postgresql", "sqlite"],
                   help="database: a private PostgreSQL server (stopped for the outage) or SQLite (locked)")
    p.add_argument("--outage-s", type=float, default=30.0, help="database outage, seconds (default 30)")
    p.add_argument("--detector-kills", type=int, default=3, help="SIGKILLs of the detector (default 3)")
    p.add_argument("--writer-kills", type=int, default=1, help="SIGKILLs of the writer (default 1)")
    p.add_argument("--broker-restarts", type=int, default=1, help="broker restarts (default 1)")
    p.add_argument("--restart-delay-s", type=float, default=1.0,
                   help="a killed service is started again this long after (default 1)")
    p.add_argument("--recovery-s", type=float, default=180.0,
                   help="before a fault, wait at most this long for the line to work again after the last one "
                        "(both services ready, rows stored; default 180)")
    p.add_argument("--checkpoint", default=None, help="detector checkpoint (default: a tiny model trained here)")
    p.add_argument("--partitions", type=int, default=3, help="partitions of the topics (default 3)")
    p.add_argument("--drain-s", type=float, default=300.0,
                   help="after the last frame, wait at most this long for the pipeline to catch up (default 300)")
    p.add_argument("--timeout-s", type=float, default=None,
                   help="give up the whole run after this long (default: frames / rate x 3 + 900)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the report as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (service logs, database)")
    return p


def fault_plan(args: argparse.Namespace) -> list[tuple[float, str]]:
    """``(share of the frames sent, fault)``: the kinds interleaved, spread over 10-85 % of the stream."""
    left = dict(zip(KINDS, (args.detector_kills, args.writer_kills, args.broker_restarts,
                            1 if args.outage_s > 0 else 0)))
    order: list[str] = []
    while any(left.values()):
        for kind in KINDS:
            if left[kind]:
                order.append(kind)
                left[kind] -= 1
    n = len(order)
    return [(0.10 + 0.75 * i / max(1, n - 1), kind) for i, kind in enumerate(order)]


# --------------------------------------------------------------------------------------- databases

class SqliteDatabase:
    """A SQLite file; the outage: another process holds an exclusive transaction."""

    name = "sqlite"

    def __init__(self, work: Path):
        self.data_dir = work / "lwdata"
        self.data_dir.mkdir()
        self.path = self.data_dir / "linewatch.db"
        self.url = f"sqlite:///{self.path}"

    def outage(self, seconds: float) -> tuple[float, float]:
        """Hold the lock for ``seconds``; returns (start, end) in ``time.time()``."""
        locker = subprocess.Popen(
            [sys.executable, "-c", "import sqlite3, sys, time\n"
             "c = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)\n"
             "c.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\n"
             "time.sleep(float(sys.argv[2]))\nc.execute('ROLLBACK')\n", str(self.path), str(seconds)],
            stdout=subprocess.PIPE, text=True)
        try:
            line = locker.stdout.readline()  # type: ignore[union-attr]
            start = time.time()
            if line.strip() != "locked":
                raise RuntimeError("the locking process could not lock the database")
            locker.wait(seconds + 60)
            return start, time.time()
        finally:
            if locker.poll() is None:
                locker.kill()
                locker.wait(10)

    def close(self) -> None:
        pass


class PostgresDatabase:
    """A private PostgreSQL server (deploy/ci/postgres.sh, its own LINEWATCH_PG_DIR); the outage: stopped."""

    name = "postgresql"

    def __init__(self, work: Path):
        self.data_dir = work / "lwdata"
        self.data_dir.mkdir()
        self.env = {**os.environ, "LINEWATCH_PG_DIR": str(work / "pg")}
        out = self._pg("start", timeout=120).stdout
        urls = [line.split("=", 1)[1] for line in out.splitlines() if line.startswith("LINEWATCH_TEST_POSTGRES_URL=")]
        if not urls or not urls[0]:
            raise RuntimeError(f"deploy/ci/postgres.sh did not start a server (is PostgreSQL installed?)\n{out}")
        self.url = urls[0]

    def _pg(self, command: str, timeout: float = 90) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(REPO / "deploy/ci/postgres.sh"), command], env=self.env, check=True,
                              capture_output=True, text=True, timeout=timeout)

    def outage(self, seconds: float) -> tuple[float, float]:
        self._pg("pause")
        start = time.time()
        try:
            time.sleep(seconds)
        finally:
            self._pg("resume")
        return start, time.time()

    def close(self) -> None:
        subprocess.run(["bash", str(REPO / "deploy/ci/postgres.sh"), "stop"], env=self.env, timeout=120,
                       capture_output=True)


# --------------------------------------------------------------------------------------- the run

@dataclass
class Soak:
    """What the run's threads share: the services, the clock, the record of faults and health."""

    pipeline: Any
    detector_port: int
    writer_port: int
    t0: float = field(default_factory=time.time)
    faults: list[dict] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    health: list[tuple[float, int, str, int]] = field(default_factory=list)  # (t, readyz, status, healthz)
    lock: threading.Lock = field(default_factory=threading.Lock)
    detector: Any = None
    writer: Any = None
    rows: int = 0  # rows stored, as last counted

    def start_detector(self) -> None:
        # one torch thread: on a small machine shared with the broker, the writer and the database,
        # torch's default (a thread per core) spins against them and scores many times slower
        self.detector = self.pipeline.start_detector("--max-batch", "8", "--max-wait-ms", "50", "--sample-rate", "0",
                                                     http_port=self.detector_port, env={"OMP_NUM_THREADS": "1"})

    def start_writer(self) -> None:
        self.writer = self.pipeline.start_writer("--batch-size", "100", "--max-wait-ms", "200",
                                                 "--http-port", str(self.writer_port))

    def kill(self, which: str, delay: float) -> None:
        with self.lock:
            proc = getattr(self, which)
            proc.kill()
            proc.wait(30)
            setattr(self, which, None)  # not a crash
        time.sleep(delay)
        with self.lock:
            (self.start_detector if which == "detector" else self.start_writer)()

    def watch_crashes(self) -> None:
        """A service that exited without being killed is a crash: counted, and started again."""
        with self.lock:
            for which in ("detector", "writer"):
                proc = getattr(self, which)
                if proc is not None and proc.poll() is not None:
                    self.crashes.append(f"{which} exited with {proc.returncode} at {time.time() - self.t0:.1f}s")
                    _log(f"CRASH: {self.crashes[-1]}")
                    (self.start_detector if which == "detector" else self.start_writer)()

    def sample_writer_health(self) -> None:
        from tests.pipeline.harness import http_get

        def get(path: str) -> tuple[int, dict]:
            try:
                code, body = http_get(self.writer_port, path, timeout=2)
                return code, json.loads(body or b"{}")
            except (OSError, ValueError):
                return 0, {}

        ready, info = get("/readyz")
        alive, _ = get("/healthz")
        self.health.append((time.time(), ready, str(info.get("status", "")), alive))


def count_rows(engine) -> int | None:
    from sqlalchemy import func, select

    from storage.models import Inspection

    try:
        with engine.connect() as c:
            return int(c.scalar(select(func.count()).select_from(Inspection)))
    except Exception:  # noqa: BLE001 - the database is down (the outage) or locked
        return None


def topic_ids(settings, stream: str, frame_id, idle_s: float = 3.0, timeout_s: float = 300.0) -> tuple[list[str], list]:
    """The frame id of every record of ``<prefix>.<stream>`` (read without a group), and the records' headers."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(**settings.client_kwargs(), group_id=None, auto_offset_reset="earliest",
                             enable_auto_commit=False, fetch_max_bytes=64 * 1024 * 1024,
                             max_partition_fetch_bytes=32 * 1024 * 1024, consumer_timeout_ms=int(idle_s * 1000))
    ids: list[str] = []
    headers: list = []
    deadline = time.monotonic() + timeout_s
    try:
        consumer.subscribe([settings.topic(stream)])
        for rec in consumer:
            ids.append(frame_id(rec))
            headers.append(dict(rec.headers or []))
            if time.monotonic() > deadline:
                break
    finally:
        consumer.close()
    return ids, headers


def _header_id(rec) -> str:
    return (dict(rec.headers or []).get("lw-frame-id") or b"").decode("utf-8", "replace")


def _result_id(rec) -> str:
    try:
        return str(json.loads(rec.value)["frame_id"])
    except (ValueError, KeyError, TypeError):
        return ""


def _dead_id(rec) -> str:
    return _header_id(rec) or _result_id(rec)


def health_during(health: list[tuple[float, int, str, int]], start: float, end: float) -> dict[str, Any]:
    """What the writer said about itself during a database outage ``[start, end]`` and after it."""
    during = [h for h in health if start <= h[0] <= end]
    after = [h for h in health if h[0] > end]
    first_down = next((h[0] for h in during if h[1] == 503), None)
    # once the writer has noticed, it must not claim to be ready while the database is still down
    ready_after_noticed = sum(1 for h in during if first_down is not None and h[0] > first_down and h[1] == 200)
    ready_again = next((h[0] for h in after if h[1] == 200), None)
    statuses = Counter(f"{h[1]} {h[2]}" for h in during)
    return {
        "samples": len(during),
        "not_ready_after_s": None if first_down is None else round(first_down - start, 2),
        "ready_while_down_after_noticed": ready_after_noticed,
        "ready_while_down": sum(1 for h in during if h[1] == 200),
        "readyz_statuses": dict(statuses),
        "healthz_not_ok": sum(1 for h in during if h[3] != 200),
        "ready_again_after_s": None if ready_again is None else round(ready_again - end, 2),
        "honest": first_down is not None and ready_after_noticed == 0
        and all(h[3] == 200 for h in during) and ready_again is not None,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy import select

    from ingest.kafka_config import KafkaSettings
    from ingest.producer import FramePublisher
    from ingest.runner import CameraInfo, IngestRunner
    from ingest.sources import FolderSource
    from storage.db import init_db, make_engine
    from storage.models import Inspection
    from tests.pipeline.harness import Pipeline, free_port, http_get, train_tiny_checkpoint, wait_for

    deadline = time.monotonic() + (args.timeout_s or args.frames / args.rate * 3 + 900)
    work = Path(tempfile.mkdtemp(prefix="lw-soak-"))
    work.chmod(0o755)  # PostgreSQL's own user enters it (the server refuses to run as root)
    broker = Broker(work, reuse=False)
    db: SqliteDatabase | PostgresDatabase | None = None
    pipeline = None
    stop = threading.Event()
    runners: list[IngestRunner] = []
    threads: list[threading.Thread] = []
    try:
        ckpt = Path(args.checkpoint) if args.checkpoint else train_tiny_checkpoint(work / "model")
        frames_dir = toy_frames(work / "frames")
        db = PostgresDatabase(work) if args.db == "postgresql" else SqliteDatabase(work)
        engine = make_engine(db.url)
        init_db(engine)
        settings = KafkaSettings(kafka_bootstrap=broker.bootstrap, topic_prefix="soak", kafka_client_id="linewatch-soak",
                                 kafka_security_protocol="PLAINTEXT")
        env = {k: v for k, v in os.environ.items() if not k.startswith("LINEWATCH_")}
        env.update(LINEWATCH_DATABASE_URL=db.url, LINEWATCH_DATA_DIR=str(db.data_dir))
        if "LINEWATCH_CACHE" in os.environ:
            env["LINEWATCH_CACHE"] = os.environ["LINEWATCH_CACHE"]
        pipeline = Pipeline(settings, env, db.url, work / "logs", ckpt, partitions=args.partitions)
        soak = Soak(pipeline, free_port(), free_port())
        soak.start_writer()
        soak.start_detector()

        def up(port: int, path: str) -> bool:
            try:
                return http_get(port, path, timeout=2)[0] == 200
            except OSError:
                return False

        wait_for(lambda: up(soak.writer_port, "/readyz") and up(soak.detector_port, "/readyz"), 180,
                 "writer and detector ready", [soak.writer, soak.detector], pipeline.logs, interval=0.5)

        # the cameras
        per_cam = [args.frames // args.cameras + (i < args.frames % args.cameras) for i in range(args.cameras)]
        for i, n in enumerate(per_cam):
            source = FolderSource(frames_dir, fps=args.rate / args.cameras, loop=True, part_from_name=True)
            camera = CameraInfo(camera_id=f"soak-cam-{i + 1}", line="line-1", station="st-1", product="toy")
            runners.append(IngestRunner(source, FramePublisher(settings), camera, encoding="png", max_frames=n,
                                        stop_event=stop, flush_timeout_s=180))

        def sent() -> int:
            return sum(r.stats.captured for r in runners)

        soak.t0 = time.time()
        _log(f"{args.frames} frames from {args.cameras} cameras at {args.rate:g} frames/s; database {db.name}; "
             f"faults: " + ", ".join(f"{k} at {100 * s:.0f} %" for s, k in fault_plan(args)))
        for r in runners:
            threads.append(threading.Thread(target=r.run, daemon=True, name=r.camera.camera_id))
            threads[-1].start()

        def recovered(since: int) -> bool:
            """Both services ready and rows stored since the last fault: the next fault meets a working line."""
            return soak.rows > since and up(soak.writer_port, "/readyz") and up(soak.detector_port, "/readyz")

        def inject() -> None:
            rows_after_last = -1
            for share, kind in fault_plan(args):
                while sent() < share * args.frames and not stop.is_set():
                    time.sleep(0.1)
                waited = time.monotonic()
                while not recovered(rows_after_last) and not stop.is_set() \
                        and time.monotonic() - waited < args.recovery_s:
                    time.sleep(0.2)
                if stop.is_set():
                    return
                t = time.time()
                record: dict[str, Any] = {"kind": kind, "at_s": round(t - soak.t0, 2), "frames_sent": sent()}
                _log(f"fault: {kind} ({sent()} frames sent)")
                try:
                    if kind == "detector-kill":
                        soak.kill("detector", args.restart_delay_s)
                    elif kind == "writer-kill":
                        soak.kill("writer", args.restart_delay_s)
                    elif kind == "broker-restart":
                        broker.restart()
                    else:
                        record["outage"] = db.outage(args.outage_s)  # type: ignore[union-attr]
                except Exception as exc:  # noqa: BLE001 - reported: a fault that did not happen
                    record["error"] = f"{type(exc).__name__}: {exc}"
                    _log(f"fault {kind} failed: {record['error']}")
                record["duration_s"] = round(time.time() - t, 2)
                record["end"] = time.time()
                soak.faults.append(record)
                rows_after_last = soak.rows

        injector = threading.Thread(target=inject, daemon=True, name="faults")
        injector.start()

        # watch: crashes, rows, the writer's health; until the cameras are done and the faults injected
        last_log = 0.0
        while (any(t.is_alive() for t in threads) or injector.is_alive()) and time.monotonic() < deadline:
            soak.watch_crashes()
            soak.sample_writer_health()
            soak.rows = count_rows(engine) or soak.rows
            if time.monotonic() - last_log > 10:
                last_log = time.monotonic()
                _log(f"{time.time() - soak.t0:6.0f}s: {sent()} frames sent, {soak.rows} rows stored, "
                     f"{len(soak.faults)} faults done")
            time.sleep(0.25)
        finished_sending = not any(t.is_alive() for t in threads) and not injector.is_alive()
        stop.set()
        for t in threads:
            t.join(200)
        for r in runners:
            r.publisher.close()
        injector.join(120)
        sent_ids = {m.frame_id for r in runners for m in r.published}
        n_sent = len(sent_ids)
        send_end = time.time()

        # drain: every sent frame stored (or the groups caught up and nothing moves for a while)
        drain_deadline = min(deadline, time.monotonic() + args.drain_s)
        quiet_since, last_rows, drained = time.monotonic(), -1, False
        while time.monotonic() < drain_deadline:
            soak.watch_crashes()
            soak.sample_writer_health()
            rows = count_rows(engine)
            if rows is not None and rows >= n_sent:
                drained = True
                break
            if time.monotonic() - last_log > 10:
                last_log = time.monotonic()
                _log(f"draining: {rows} of {n_sent} rows stored")
            if rows != last_rows:
                quiet_since, last_rows = time.monotonic(), rows
            elif time.monotonic() - quiet_since > 20 and pipeline.caught_up(pipeline.detector_group, "frames") \
                    and pipeline.caught_up(pipeline.writer_group, "results"):
                drained = True  # everything consumed; what is missing now is lost (or dead-lettered)
                break
            time.sleep(0.5)
        drain_s = time.time() - send_end
        _log(f"drained in {drain_s:.0f}s" if drained else f"NOT drained after {drain_s:.0f}s")

        # the accounting, by frame id
        with engine.connect() as c:
            rows = c.execute(select(Inspection.frame_id, Inspection.camera_id, Inspection.seq, Inspection.captured_at,
                                    Inspection.stored_at)).all()
        stored = Counter(r.frame_id for r in rows)
        by_seq = Counter((r.camera_id, r.seq) for r in rows if r.frame_id in sent_ids)
        dead_ids, dead_headers = topic_ids(settings, "deadletter", _dead_id)
        result_ids, _ = topic_ids(settings, "results", _result_id)
        frame_ids, _ = topic_ids(settings, "frames", _header_id)
        lost = sorted(sent_ids - set(stored) - set(dead_ids))
        stored_at = sorted(_utc(r.stored_at).timestamp() for r in rows)
        gaps = [(b - a, a) for a, b in zip(stored_at, stored_at[1:])]
        gap, gap_at = max(gaps) if gaps else (0.0, soak.t0)
        latency = [(_utc(r.stored_at) - _utc(r.captured_at)).total_seconds() for r in rows]
        outage = next((f["outage"] for f in soak.faults if "outage" in f), None)
        for f in soak.faults:
            f.pop("outage", None)
            end = f.pop("end")
            first = next((x for x in stored_at if x > end), None)
            f["next_row_after_s"] = None if first is None else round(first - end, 2)
        result = {
            "frames_requested": args.frames, "cameras": args.cameras, "rate_fps": args.rate, "database": db.name,
            "database_outage_s": args.outage_s, "partitions": args.partitions, "cpus": os.cpu_count(),
            "frames_sent": n_sent,
            "producer_dropped": sum(r.stats.dropped for r in runners),
            "rows_stored": len(rows),
            "lost": len(lost),
            "lost_frame_ids": lost[:20],
            "duplicated": sum(n - 1 for n in stored.values()) + sum(n - 1 for n in by_seq.values()),
            "unexpected_rows": sum(1 for f in stored if f not in sent_ids),
            "dead_lettered": len(dead_ids),
            "dead_letter_codes": dict(Counter((h.get("lw-dlq-code") or b"").decode() for h in dead_headers)),
            "results_on_topic": len(result_ids),
            "results_replayed": len(result_ids) - len(set(result_ids)),
            "frames_on_topic": len(frame_ids),
            "frames_topic_duplicates": len(frame_ids) - len(set(frame_ids)),
            "longest_gap_s": round(gap, 2),
            "longest_gap_began_at_s": round(gap_at - soak.t0, 2),
            "capture_to_row_p50_s": round(_pct(latency, 0.5), 3),
            "capture_to_row_max_s": round(max(latency, default=float("nan")), 3),
            "faults": soak.faults,
            "service_crashes": soak.crashes,
            "writer_health_during_outage": health_during(soak.health, *outage) if outage else None,
            "finished_sending": finished_sending,
            "drained": drained,
            "drain_s": round(drain_s, 1),
            "duration_s": round(time.time() - soak.t0, 1),
            "load_average_end": os.getloadavg()[0],
        }
        result["target_met"] = (result["lost"] == 0 and result["duplicated"] == 0 and finished_sending and drained)
        return result
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        if pipeline is not None:
            pipeline.close()
        if db is not None:
            db.close()
        clean_up(broker, work, args.keep)


def _utc(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def toy_frames(out: Path) -> Path:
    """24 generated parts (good and defective), 64 px PNG: what the tiny model was trained on."""
    import shutil

    from detector.synthetic import make_toy_dataset

    data = make_toy_dataset(out.parent / "toy-frames", n_train=0, n_good=14, n_bad=10, size=64, seed=7)
    out.mkdir()
    for i, f in enumerate(sorted((data / "test").rglob("*.png"))):
        shutil.copy(f, out / f"part_{i:03d}.png")
    return out


def print_table(r: dict[str, Any]) -> None:
    health = r["writer_health_during_outage"] or {}
    rows = [
        ("run", f"{r['frames_requested']} frames, {r['cameras']} cameras at {r['rate_fps']:g} frames/s, "
                f"{r['database']}, {r['duration_s']:.0f} s (drain {r['drain_s']:.0f} s)"),
        ("faults", ", ".join(f"{f['kind']} at {f['at_s']:.0f}s ({f['duration_s']:.1f}s; next row "
                             f"{f['next_row_after_s']}s after)" for f in r["faults"])),
        ("frames sent", f"{r['frames_sent']} (dropped by the cameras: {r['producer_dropped']})"),
        ("rows stored", str(r["rows_stored"])),
        ("lost", f"{r['lost']}" + (f" e.g. {', '.join(r['lost_frame_ids'][:3])}" if r["lost"] else "")),
        ("duplicated", f"{r['duplicated']} (unexpected rows: {r['unexpected_rows']})"),
        ("dead-lettered", f"{r['dead_lettered']} {r['dead_letter_codes'] or ''}"),
        ("longest gap", f"{r['longest_gap_s']:.1f} s (began at {r['longest_gap_began_at_s']:.0f} s)"),
        ("capture -> row", f"p50 {r['capture_to_row_p50_s']:.2f} s, max {r['capture_to_row_max_s']:.1f} s"),
        ("replays", f"{r['results_replayed']} results published twice, {r['frames_topic_duplicates']} frames twice"),
        ("service crashes", str(len(r["service_crashes"]))),
        ("writer health", ("honest" if health.get("honest") else "NOT honest") + f" during the outage: {health}"
         if health else "no outage"),
        ("target (0 lost, 0 duplicated)", "met" if r["target_met"] else "NOT met"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def main(argv: list[str] | None = None) -> int:
    import signal

    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run()'s clean-up stops services, broker, database
    result = run(args)
    print_table(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0 if result["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
