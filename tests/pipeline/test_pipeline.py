"""End to end on the real broker: folder -> frames -> ``linewatch-detector serve`` -> results ->
``linewatch-storage writer`` -> SQLite, with the services as real subprocesses."""

from __future__ import annotations

import json
import signal
import threading
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest
from kafka import KafkaProducer
from sqlalchemy import select

from detector.service.imaging import is_sampled
from ingest.frames import encode_image
from ingest.messages import FrameMeta
from ingest.producer import publish_folder

from .harness import Pipeline, free_port, http_get, json_body, metric_value, read_rgb, wait_for

pytestmark = pytest.mark.kafka


def _frame_headers(frame_id: str, camera: str, content_type: str = "image/png", schema: bytes = b"1"):
    meta = FrameMeta(frame_id=frame_id, line="line-1", station="st-1", camera_id=camera, seq=0,
                     captured_at=datetime.now(timezone.utc), content_type=content_type)
    return [(k, schema if k == "lw-schema" else v) for k, v in meta.to_headers()]


def _direct_predictions(checkpoint: Path, files: list[Path]):
    from detector.inference import Detector

    det = Detector.load(checkpoint, device="cpu")
    pred = det.predict([read_rgb(f) for f in files])
    return det, {f.stem: (float(s), bool(v), m) for f, s, v, m in zip(files, pred.scores, pred.verdicts, pred.maps)}


@pytest.fixture
def pipeline(kafka_test_settings, sqlite_db, tmp_path, pipeline_checkpoint):
    p = Pipeline(kafka_test_settings, sqlite_db.env, sqlite_db.url, tmp_path / "logs", pipeline_checkpoint)
    p.db = sqlite_db
    yield p
    p.close()


def test_frames_to_rows_scores_match_and_bad_messages_are_dead_lettered(pipeline, frames_dir, pipeline_checkpoint):
    settings = pipeline.settings
    files = sorted(frames_dir.glob("*.png"))
    # camera A: every frame, lossless PNG, before the bad messages
    metas_a = publish_folder(settings, frames_dir, camera_id="cam-a", product="toy", encoding="png", partitions=None)

    # malformed messages, interleaved on the frames topic
    good_png = files[0].read_bytes()
    ok, jpg = cv2.imencode(".jpg", cv2.imread(str(files[0])))
    noise = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    big_png, _ = encode_image(noise, "png")  # ~270 KB, above --max-frame-bytes below
    bomb = bytearray(good_png)  # a valid-looking PNG whose header claims 100000 x 100000 pixels
    bomb[16:24] = (100000).to_bytes(4, "big") * 2
    bad = {
        "truncated-jpeg": (jpg.tobytes()[: len(jpg) // 2], _frame_headers("bad-1", "cam-x", "image/jpeg")),
        "wrong-schema": (good_png, _frame_headers("bad-2", "cam-x", schema=b"2")),
        "empty": (b"", _frame_headers("bad-3", "cam-x")),
        "oversized-bytes": (big_png, _frame_headers("bad-4", "cam-x")),
        "oversized-pixels": (bytes(bomb), _frame_headers("bad-5", "cam-x")),
        "no-headers": (good_png, []),
    }
    producer = KafkaProducer(**settings.client_kwargs(), acks="all")
    for value, headers in bad.values():
        producer.send(settings.topic("frames"), key=b"cam-x", value=value, headers=headers)
    producer.flush(30)
    producer.close(5)
    # camera B: the first ten frames again, after the bad messages
    metas_b = publish_folder(settings, frames_dir, camera_id="cam-b", product="toy", encoding="png", limit=10,
                             partitions=None)
    metas = metas_a + metas_b
    n = len(metas)
    assert n == len(files) + 10

    # camera B is judged with a threshold override from the routing file: every frame flagged
    routes = pipeline.log_dir / "routes.json"
    routes.write_text(json.dumps({"default": str(pipeline_checkpoint), "thresholds": {"cameras": {"cam-b": 0.0}}}))
    port = free_port()
    writer = pipeline.start_writer("--batch-size", "16", "--max-wait-ms", "100")
    detector = pipeline.start_detector("--routes", str(routes), "--max-batch", "8", "--max-wait-ms", "50",
                                       "--max-frame-bytes", "200000", "--sample-rate", "0.5", http_port=port,
                                       model=False)
    wait_for(lambda: pipeline.rows() >= n, 120, f"{n} rows", [writer, detector], pipeline.logs)
    wait_for(lambda: pipeline.caught_up(pipeline.detector_group, "frames"), 30, "detector offsets committed",
             [detector], pipeline.logs)
    wait_for(lambda: pipeline.caught_up(pipeline.writer_group, "results"), 30, "writer offsets committed",
             [writer], pipeline.logs)

    # exactly one row per frame, and the stored verdicts and scores are the detector's own
    from storage.models import Image, Inspection

    rows = pipeline.inspections()
    assert len(rows) == n
    assert sorted(r.frame_id for r in rows) == sorted(m.frame_id for m in metas)
    det, direct = _direct_predictions(pipeline_checkpoint, files)
    by_key = {(m.camera_id, m.frame_id): m for m in metas}
    flagged = 0
    for r in rows:
        meta = by_key[(r.camera_id, r.frame_id)]
        score, verdict, amap = direct[meta.part_id]
        assert r.score == pytest.approx(score, rel=1e-5, abs=1e-6), r.frame_id
        if r.camera_id == "cam-b":
            assert r.threshold == 0.0 and r.is_anomalous
        else:
            assert r.threshold == pytest.approx(det.threshold)
            assert bool(r.is_anomalous) == verdict or abs(score - det.threshold) < 1e-5
        assert r.model_version == det.version
        h, w = amap.shape
        assert (r.frame_width, r.frame_height) == (w, h)
        assert r.product == "toy" and r.seq == meta.seq and r.part_id == meta.part_id
        assert r.heatmap_image_id is not None
        if r.is_anomalous:
            assert r.frame_reason == "flagged" and r.frame_image_id is not None
            flagged += 1
        else:  # a normal frame is kept exactly when the per-frame-id sampling rule says so
            assert (r.frame_reason == "sampled") == is_sampled(r.frame_id, 0.5), r.frame_id
            assert (r.frame_image_id is not None) == (r.frame_reason == "sampled"), r.frame_id
    # how many camera-A frames the tiny model flags varies with its training: the per-row rules above are
    # what must hold, whatever the split
    assert flagged >= len(metas_b)

    # the stored heatmap dequantises to the detector's map (within one quantisation step)
    one = next(r for r in rows if r.frame_id == metas_a[1].frame_id)  # a 96x80 frame
    with pipeline.engine.connect() as c:
        img = c.execute(select(Image).where(Image.id == one.heatmap_image_id)).one()
    from detector.service.imaging import dequantise_heatmap

    hm = dequantise_heatmap(pipeline.db.blobs.get(img.blob_key), one.heatmap_max)
    amap = direct[metas_a[1].part_id][2]
    assert hm.shape == amap.shape == (80, 96)
    assert np.abs(hm - amap).max() <= one.heatmap_max / 255 * 0.5 + 1e-4

    # every bad message is on the dead-letter topic, with its reason and the original bytes
    dead = pipeline.read_topic("deadletter")
    assert len(dead) == len(bad), [dict(d.headers) for d in dead]
    by_id = {}
    for d in dead:
        h = dict(d.headers)
        assert h["lw-dlq-stage"] == b"detector" and h["lw-dlq-reason"]
        assert h["lw-dlq-topic"] == settings.topic("frames").encode()
        by_id[h.get("lw-frame-id", b"").decode()] = (h["lw-dlq-code"].decode(), h["lw-dlq-reason"].decode(), d.value)
    assert by_id["bad-1"][0] == "undecodable" and "truncated" in by_id["bad-1"][1]
    assert by_id["bad-1"][2] == bad["truncated-jpeg"][0]
    assert by_id["bad-2"][0] == "schema" and "version" in by_id["bad-2"][1]
    assert by_id["bad-3"][0] == "empty"
    assert by_id["bad-4"][0] == "oversized" and by_id["bad-4"][2] == big_png
    assert by_id["bad-5"][0] == "oversized" and "100000x100000" in by_id["bad-5"][1]
    assert by_id[""][0] == "schema" and "lw-schema" in by_id[""][1]

    # health, readiness and metrics
    assert detector.poll() is None
    status, body = http_get(port, "/healthz")
    assert status == 200 and json_body(body)["status"] == "ok"
    status, body = http_get(port, "/readyz")
    assert status == 200 and json_body(body)["models"]
    status, body = http_get(port, "/metrics")
    text = body.decode()
    assert metric_value(text, "linewatch_detector_frames_total") == n
    assert metric_value(text, "linewatch_detector_flagged_total") == flagged
    assert metric_value(text, "linewatch_detector_errors_total", {"reason": "oversized"}) == 2
    assert metric_value(text, "linewatch_detector_errors_total", {"reason": "schema"}) == 2
    assert metric_value(text, "linewatch_detector_dead_letters_total") == len(bad)
    assert metric_value(text, "linewatch_detector_consumer_lag_total") == 0
    assert "linewatch_detector_batch_seconds_bucket" in text
    assert metric_value(text, "linewatch_detector_model_info",
                        {"path": str(Path(pipeline_checkpoint).resolve()), "version": det.version}) == 1

    # structured logs
    log_text = pipeline.logs(tail=10**6)
    assert 'msg=batch records=' in log_text and "level=warning" in log_text and "code=undecodable" in log_text

    # SIGTERM: finish, commit, exit 0
    detector.send_signal(signal.SIGTERM)
    writer.send_signal(signal.SIGTERM)
    assert detector.wait(60) == 0, pipeline.logs()
    assert writer.wait(60) == 0, pipeline.logs()
    assert pipeline.rows() == n


def test_sigkill_of_detector_and_writer_mid_stream_loses_and_duplicates_nothing(pipeline, frames_dir):
    settings = pipeline.settings
    n = 80
    port = free_port()
    writer = pipeline.start_writer("--batch-size", "8", "--max-wait-ms", "100")
    detector = pipeline.start_detector("--max-batch", "4", "--max-wait-ms", "20", http_port=port)
    pipeline.wait_ready(port, detector)

    published: list = []
    errors: list = []

    def publish() -> None:
        # a backlog first (the detector is busy, so the SIGKILL lands inside a batch), then a paced stream
        try:
            for fps in (None, 10):
                published.extend(publish_folder(settings, frames_dir, camera_id="cam-k", product="toy",
                                                encoding="png", fps=fps, limit=n // 2, loop=True, partitions=None))
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    t = threading.Thread(target=publish, daemon=True)
    t.start()

    wait_for(lambda: pipeline.rows() >= 12, 60, "the first rows", [writer, detector], pipeline.logs, interval=0.02)
    detector.kill()  # SIGKILL, mid-stream
    detector.wait(10)
    rows_at_detector_kill = pipeline.rows()
    assert rows_at_detector_kill < n, "the detector should be killed before every frame is scored"
    detector = pipeline.start_detector("--max-batch", "4", "--max-wait-ms", "20")
    wait_for(lambda: pipeline.rows() >= 50, 90, "rows after the detector restart", [writer, detector],
             pipeline.logs, interval=0.02)
    writer.kill()  # SIGKILL the writer too
    writer.wait(10)
    rows_at_kill = pipeline.rows()
    assert rows_at_kill < n, "the writer should be killed before every frame is stored"
    writer = pipeline.start_writer("--batch-size", "8", "--max-wait-ms", "100")

    t.join(60)
    assert not errors, errors
    assert len(published) == n
    wait_for(lambda: pipeline.rows() >= n, 120, f"{n} rows", [writer, detector], pipeline.logs)
    wait_for(lambda: pipeline.caught_up(pipeline.detector_group, "frames"), 30, "detector caught up", [detector],
             pipeline.logs)
    wait_for(lambda: pipeline.caught_up(pipeline.writer_group, "results"), 30, "writer caught up", [writer],
             pipeline.logs)

    ids = [r.frame_id for r in pipeline.inspections()]
    assert len(ids) == n and len(set(ids)) == n
    assert set(ids) == {m.frame_id for m in published}
    results = pipeline.read_topic("results")
    # replays after the SIGKILL may repeat results (same frame id, same score); the writer stores each once
    assert len(results) >= n
    print(f"results on the topic: {len(results)} for {n} frames; rows when the detector was killed: "
          f"{rows_at_detector_kill}, when the writer was killed: {rows_at_kill}")
    assert not pipeline.read_topic("deadletter", idle_s=0.5)


def test_sighup_swaps_the_model_between_batches_and_results_carry_the_version(pipeline, frames_dir,
                                                                               pipeline_checkpoint, tmp_path):
    from detector.checkpoint import save_checkpoint
    from detector.inference import Detector

    settings = pipeline.settings
    det_a = Detector.load(pipeline_checkpoint, device="cpu")
    meta = dict(det_a.meta)
    meta["threshold"] = -1.0  # a second version of the model: everything is flagged
    ckpt_b = tmp_path / "b.pt"
    save_checkpoint(ckpt_b, det_a._model, meta)
    version_b = Detector.load(ckpt_b, device="cpu").version
    assert version_b != det_a.version
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"default": str(pipeline_checkpoint)}))

    port = free_port()
    writer = pipeline.start_writer("--batch-size", "16", "--max-wait-ms", "100")
    detector = pipeline.start_detector("--routes", str(routes), "--sample-rate", "0", http_port=port, model=False)
    pipeline.wait_ready(port, detector)
    before = publish_folder(settings, frames_dir, camera_id="cam-h", product="toy", limit=12, partitions=None)
    wait_for(lambda: pipeline.rows() >= 12, 60, "rows of the first model", [writer, detector], pipeline.logs)

    # a new routing: cam-h2 goes to model B with a threshold override; the default goes to B too
    routes.write_text(json.dumps({"default": str(ckpt_b), "cameras": {"cam-h2": str(ckpt_b)},
                                  "thresholds": {"cameras": {"cam-h2": 1e9}}}))
    detector.send_signal(signal.SIGHUP)
    wait_for(lambda: metric_value(http_get(port, "/metrics")[1].decode(), "linewatch_detector_model_swaps_total") == 1,
             60, "the model swap", [detector], pipeline.logs)
    after = publish_folder(settings, frames_dir, camera_id="cam-h", product="toy", limit=12, partitions=None)
    after2 = publish_folder(settings, frames_dir, camera_id="cam-h2", product="toy", limit=6, partitions=None)
    n = len(before) + len(after) + len(after2)
    wait_for(lambda: pipeline.rows() >= n, 60, f"{n} rows", [writer, detector], pipeline.logs)
    wait_for(lambda: pipeline.caught_up(pipeline.detector_group, "frames"), 30, "detector caught up", [detector],
             pipeline.logs)

    rows = {r.frame_id: r for r in pipeline.inspections()}
    assert len(rows) == n
    assert {rows[m.frame_id].model_version for m in before} == {det_a.version}
    assert {rows[m.frame_id].model_version for m in after + after2} == {version_b}
    assert all(rows[m.frame_id].is_anomalous and rows[m.frame_id].threshold == -1.0 for m in after)
    assert all(not rows[m.frame_id].is_anomalous and rows[m.frame_id].threshold == 1e9 for m in after2)
    status, body = http_get(port, "/readyz")
    assert json_body(body)["models"] == {str(ckpt_b.resolve()): version_b}
