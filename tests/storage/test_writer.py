"""The writer service on the real broker: exactly one row per result, replays, SIGKILL, dead letters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from storage.models import Inspection

from .helpers import make_result

pytestmark = pytest.mark.kafka


def wait_for(cond: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"writer exited with {proc.returncode} while waiting for {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class Line:
    """A results topic, a writer process and its database, for one test."""

    def __init__(self, db, settings, tmp_path: Path) -> None:
        from kafka import KafkaProducer

        from ingest.topics import ensure_topics

        self.db = db
        self.settings = settings
        self.group = f"{settings.topic_prefix}-writer"
        self.topic = settings.topic("results")
        ensure_topics(settings, partitions=3)
        self.env = dict(db.env)
        self.env.update(
            LINEWATCH_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
            LINEWATCH_TOPIC_PREFIX=settings.topic_prefix,
            LINEWATCH_WRITER_GROUP=self.group,
            LINEWATCH_WRITER_SESSION_TIMEOUT_MS="6000",  # the broker's minimum: quick takeover after SIGKILL
        )
        self.log_dir = tmp_path
        self.producer = KafkaProducer(**settings.client_kwargs(), acks="all")
        self.procs: list[subprocess.Popen] = []

    def publish(self, results) -> None:
        for r in results:
            self.producer.send(self.topic, key=r.camera_id.encode(), value=r.to_bytes())
        self.producer.flush(30)

    def publish_raw(self, values: list[bytes], key: bytes = b"cam-x") -> None:
        for v in values:
            self.producer.send(self.topic, key=key, value=v)
        self.producer.flush(30)

    def start_writer(self, *extra: str) -> subprocess.Popen:
        log = open(self.log_dir / f"writer-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "storage.cli", "writer", *extra], env=self.env,
                                stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def rows(self) -> int:
        with self.db.engine.connect() as c:
            return c.scalar(select(func.count()).select_from(Inspection))

    def frame_ids(self) -> list[str]:
        with self.db.engine.connect() as c:
            return list(c.execute(select(Inspection.frame_id)).scalars())

    def caught_up(self) -> bool:
        """The group's committed offsets reached the end of every partition."""
        from kafka import KafkaConsumer, TopicPartition

        # a consumer that names the group but never joins it: it only reads committed offsets
        consumer = KafkaConsumer(**self.settings.client_kwargs(), group_id=self.group, enable_auto_commit=False)
        try:
            tps = [TopicPartition(self.topic, p) for p in consumer.partitions_for_topic(self.topic) or ()]
            ends = consumer.end_offsets(tps)
            committed = {tp: consumer.committed(tp) for tp in tps}
        finally:
            consumer.close(autocommit=False)
        return all(ends[tp] == 0 or (committed[tp] is not None and committed[tp] >= ends[tp]) for tp in tps)

    def dead_letters(self, expected: int, timeout: float = 30.0) -> list:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(self.settings.topic("deadletter"), **self.settings.client_kwargs(),
                                 auto_offset_reset="earliest", enable_auto_commit=False,
                                 consumer_timeout_ms=int(timeout * 1000))
        out = []
        try:
            for msg in consumer:
                out.append(msg)
                if len(out) >= expected:
                    break
        finally:
            consumer.close()
        return out

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        self.producer.close(5)

    def logs(self) -> str:
        return "\n".join(f.read_text(errors="replace")[-3000:] for f in sorted(self.log_dir.glob("writer-*.log")))


@pytest.fixture
def line(storage_db, kafka_test_settings, tmp_path):
    ln = Line(storage_db, kafka_test_settings, tmp_path)
    yield ln
    ln.close()


def _results(n: int, start: int = 0):
    return [make_result(i, camera=f"cam-{i % 3}", anomalous=(i % 9 == 4), frame=("sampled" if i % 9 == 7 else None))
            for i in range(start, start + n)]


def test_n_results_n_rows_replay_and_sigterm(line):
    results = _results(60)
    line.publish(results)
    writer = line.start_writer("--batch-size", "25", "--max-wait-ms", "200")
    try:
        wait_for(lambda: line.rows() == 60, 90, "60 rows", writer)
        wait_for(line.caught_up, 30, "offsets committed", writer)
        # replay every result (e.g. a detector restarted and re-sent them): still 60 rows
        line.publish(results)
        wait_for(line.caught_up, 60, "the replay consumed", writer)
        assert line.rows() == 60
        assert sorted(line.frame_ids()) == sorted(r.frame_id for r in results)
        # images were written before rows: every referenced blob is there
        with line.db.session() as s:
            for insp in s.scalars(select(Inspection)):
                assert line.db.blobs.exists(insp.heatmap_image.blob_key)
                if insp.frame_image_id:
                    assert line.db.blobs.exists(insp.frame_image.blob_key)
        # SIGTERM: finishes, commits, exits 0
        line.publish(_results(5, start=60))
        time.sleep(0.3)
        writer.send_signal(signal.SIGTERM)
        assert writer.wait(60) == 0, line.logs()
        # whatever it had not stored yet is stored by the next writer; nothing is lost
        writer = line.start_writer("--batch-size", "25", "--max-wait-ms", "200")
        wait_for(lambda: line.rows() == 65, 60, "65 rows", writer)
        wait_for(line.caught_up, 30, "offsets committed", writer)
        assert line.rows() == 65
    except BaseException:
        print(line.logs())
        raise


def test_writer_killed_mid_stream_and_restarted_stores_exactly_n(line):
    n = 600
    results = _results(n)
    line.publish(results[:300])
    writer = line.start_writer("--batch-size", "10", "--max-wait-ms", "50")
    try:
        wait_for(lambda: line.rows() >= 40, 90, "the first rows", writer)
        line.publish(results[300:])
        writer.send_signal(signal.SIGKILL)
        writer.wait(30)
        killed_at = line.rows()
        assert killed_at < n, "the writer finished before it could be killed; raise n"
        writer = line.start_writer("--batch-size", "10", "--max-wait-ms", "50")
        wait_for(lambda: line.rows() >= n, 120, f"{n} rows", writer)
        wait_for(line.caught_up, 60, "offsets committed", writer)
        ids = line.frame_ids()
        assert len(ids) == n and len(set(ids)) == n
        assert set(ids) == {r.frame_id for r in results}
        # a second restart replays nothing new
        writer.send_signal(signal.SIGKILL)
        writer.wait(30)
        writer = line.start_writer("--batch-size", "10", "--max-wait-ms", "50")
        line.publish(results[:50])
        wait_for(line.caught_up, 60, "the replay consumed", writer)
        assert line.rows() == n
    except BaseException:
        print(line.logs())
        raise


def test_malformed_messages_go_to_dead_letters_and_the_writer_keeps_going(line):
    good = _results(4)
    wrong_version = json.loads(good[0].to_bytes())
    wrong_version.update(schema_version=2, frame_id="wrong-version")
    missing = json.loads(good[0].to_bytes())
    del missing["score"]
    missing["frame_id"] = "missing-score"
    bad_heatmap = good[0].model_copy(update={"frame_id": "bad-heatmap", "heatmap_png": b"GIF89a..."})
    too_long = good[0].model_copy(update={"frame_id": "too-long", "camera_id": "c" * 500})
    bad = [
        b"\xff\xd8\xff\xe0 truncated jpeg, not a result",
        b"",
        json.dumps(wrong_version).encode(),
        json.dumps(missing).encode(),
        bad_heatmap.to_bytes(),
        too_long.to_bytes(),
        good[1].to_bytes()[:50],  # truncated JSON
    ]
    writer = line.start_writer("--batch-size", "50", "--max-wait-ms", "200")
    try:
        line.publish(good[:2])
        line.publish_raw(bad)
        line.publish(good[2:])
        wait_for(lambda: line.rows() == 4, 90, "4 rows", writer)
        wait_for(line.caught_up, 30, "offsets committed", writer)
        dead = line.dead_letters(len(bad))
        assert len(dead) == len(bad)
        reasons = {}
        for msg in dead:
            h = {k: v.decode() for k, v in msg.headers}
            assert h["lw-dlq-stage"] == "storage-writer" and h["lw-dlq-topic"] == line.topic
            assert int(h["lw-dlq-offset"]) >= 0 and h["lw-dlq-reason"]
            assert msg.key == b"cam-x"
            reasons[msg.value] = h["lw-dlq-reason"]
        assert set(reasons) == set(bad)  # the original bytes travel with the reason
        assert reasons[b""] == "empty message"
        assert "schema_version" in reasons[json.dumps(wrong_version).encode()]
        assert "score" in reasons[json.dumps(missing).encode()]
        assert "PNG" in reasons[bad_heatmap.to_bytes()]
        assert "camera_id" in reasons[too_long.to_bytes()]
        # still running, still storing
        assert writer.poll() is None
        line.publish(_results(3, start=100))
        wait_for(lambda: line.rows() == 7, 60, "7 rows", writer)
    except BaseException:
        print(line.logs())
        raise


def test_health_and_metrics_endpoint(line):
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    writer = line.start_writer("--http-port", str(port), "--max-wait-ms", "100")
    try:
        line.publish(_results(5))
        wait_for(lambda: line.rows() == 5, 60, "5 rows", writer)

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    return r.status == 200 and json.loads(r.read())["status"] == "ok"
            except OSError:
                return False

        wait_for(healthy, 30, "/healthz", writer)

        def metrics_text() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.read().decode()

        # the counter moves after the offset commit, a moment after the rows become visible
        wait_for(lambda: "linewatch_writer_results_stored_total 5.0" in metrics_text(), 10, "stored counter", writer)
        text = metrics_text()
        assert "linewatch_writer_results_stored_total 5.0" in text
    except BaseException:
        print(line.logs())
        raise
    finally:
        writer.send_signal(signal.SIGTERM)
        assert writer.wait(60) == 0
    assert os.path.exists(line.log_dir / "writer-0.log")


def test_writer_with_the_database_blob_store(line):
    from storage.blobs import DatabaseBlobStore
    from storage.models import Blob

    line.env["LINEWATCH_BLOB_STORE"] = "database"
    results = _results(20)
    line.publish(results)
    writer = line.start_writer("--max-wait-ms", "100")
    try:
        wait_for(lambda: line.rows() == 20, 60, "20 rows", writer)
        store = DatabaseBlobStore(line.db.engine)
        with line.db.session() as s:
            assert s.scalar(select(func.count()).select_from(Blob)) == 20 + sum(r.frame_image is not None
                                                                              for r in results)
            for insp in s.scalars(select(Inspection)):
                assert store.get(insp.heatmap_image.blob_key)
        assert not list(line.db.blobs.iter_keys())  # nothing went to the local directory
    except BaseException:
        print(line.logs())
        raise
    finally:
        writer.send_signal(signal.SIGTERM)
        assert writer.wait(60) == 0


def test_poison_results_never_stop_the_writer(line):
    """Results whose values passed the old frame schema but broke storage (a camera id that is a path
    component, a capture time at the edge of the calendar) are dead-lettered; the rest of their batch is
    stored and the writer keeps running (it used to exit on them at every restart)."""
    good = _results(6)
    edge = datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))  # before year 1 in UTC
    poison = [
        good[0].model_copy(update={"frame_id": "dotdot", "camera_id": ".."}),
        good[0].model_copy(update={"frame_id": "dot", "camera_id": "."}),
        good[0].model_copy(update={"frame_id": "calendar-start", "captured_at": edge}),
        good[0].model_copy(update={"frame_id": "calendar-end",
                                   "captured_at": datetime(9999, 12, 31, 23, 30, tzinfo=timezone(-timedelta(hours=1)))}),
        good[0].model_copy(update={"frame_id": "seq-overflow", "seq": 2**63}),
    ]
    line.publish(good[:3])
    line.publish(poison)
    line.publish(good[3:])
    writer = line.start_writer("--batch-size", "50", "--max-wait-ms", "300")
    try:
        wait_for(lambda: line.rows() == 6, 90, "6 rows", writer)
        wait_for(line.caught_up, 30, "offsets committed", writer)
        dead = line.dead_letters(len(poison))
        ids = {json.loads(m.value)["frame_id"]: {k: v.decode() for k, v in m.headers} for m in dead}
        assert set(ids) == {"dotdot", "dot", "calendar-start", "calendar-end", "seq-overflow"}
        for h in ids.values():
            assert h["lw-dlq-code"] and h["lw-dlq-reason"] and h["lw-dlq-stage"] == "storage-writer"
        assert writer.poll() is None
        assert sorted(line.frame_ids()) == sorted(r.frame_id for r in good)
    except BaseException:
        print(line.logs())
        raise


@pytest.mark.parametrize("busy_timeout_ms, waiting_for", [
    ("200", "storage unavailable"),  # the lock outlasts the busy timeout: retried with back-off
    (None, "one batch in hand"),  # the default 30 s: blocked inside the insert, no error yet
])
def test_a_locked_database_is_waited_out_honestly_and_nothing_is_committed_meanwhile(line, busy_timeout_ms,
                                                                                     waiting_for):
    """An outage is not a bad message: the writer retries, commits nothing, says so on /readyz, then catches up."""
    import sqlite3
    import socket
    import urllib.error
    import urllib.request

    if line.db.backend != "sqlite":
        pytest.skip("the lock is SQLite's (PostgreSQL outages are the soak benchmark's)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def get(path: str) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
        except OSError:
            return 0, {}

    if busy_timeout_ms:
        line.env["LINEWATCH_SQLITE_BUSY_TIMEOUT_MS"] = busy_timeout_ms
    writer = line.start_writer("--http-port", str(port), "--max-wait-ms", "100")
    try:
        line.publish(_results(3))
        wait_for(lambda: line.rows() == 3, 60, "3 rows", writer)
        # another process holds the write lock: the database is there but refuses writes
        lock = sqlite3.connect(line.db.url.removeprefix("sqlite:///"), timeout=1)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            line.publish(_results(5, start=3))
            wait_for(lambda: get("/readyz")[0] == 503, 30, "/readyz to report the wait", writer)
            status, info = get("/readyz")
            assert info["status"] == "waiting" and waiting_for in info["waiting_for"]
            assert get("/healthz")[0] == 200  # alive: a restart would not help
            time.sleep(1.0)
            assert not line.caught_up()  # nothing committed past the unstored results
            assert writer.poll() is None
        finally:
            lock.rollback()
            lock.close()
        wait_for(lambda: line.rows() == 8, 60, "8 rows after the lock is released", writer)
        wait_for(line.caught_up, 30, "offsets committed", writer)
        wait_for(lambda: get("/readyz")[0] == 200, 30, "/readyz ready again", writer)
        assert not line.dead_letters(1, timeout=1.0)  # an outage never dead-letters good results
    except BaseException:
        print(line.logs())
        raise
    finally:
        writer.send_signal(signal.SIGTERM)
        assert writer.wait(60) == 0
