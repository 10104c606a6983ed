"""The detector service scores frames with a model of another family than EAR + FADeR (a unified CRAD
serving two products), in-process on the real broker: scores as the Detector gives them, and each
product's frames judged at that product's own calibrated threshold."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ingest.producer import publish_folder
from ingest.topics import ensure_topics

from .harness import read_rgb, wait_for

pytestmark = pytest.mark.kafka


def test_service_scores_frames_with_a_unified_crad_checkpoint(kafka_test_settings, crad_unified_checkpoint,
                                                              frames_dir, tmp_path):
    import json

    from detector.inference import Detector
    from detector.messages import InspectionResult
    from detector.service.routing import ModelHolder, load_routing
    from detector.service.service import DetectorService
    from detector.service.settings import ServiceSettings
    from tests.pipeline.harness import Pipeline

    settings = kafka_test_settings
    ensure_topics(settings, 2)
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"products": {"toy": str(crad_unified_checkpoint),
                                               "blue": str(crad_unified_checkpoint)}}))
    metas = publish_folder(settings, frames_dir, camera_id="cam-t", product="toy", limit=6, partitions=None)
    metas += publish_folder(settings, frames_dir, camera_id="cam-b", product="blue", limit=6, partitions=None)
    group = f"{settings.topic_prefix}-detector"
    ss = ServiceSettings(routes=routes, group=group, max_batch=4, max_wait_ms=20, device="cpu", sample_rate=0.0)
    holder = ModelHolder(lambda p: Detector.load(p, device="cpu", batch_size=4))
    holder.load(load_routing(routes, None))
    service = DetectorService(settings, ss, holder)
    probe = Pipeline.__new__(Pipeline)  # only its Kafka probes
    probe.settings = settings
    t = threading.Thread(target=service.run, daemon=True)
    t.start()
    try:
        wait_for(lambda: service.scored >= len(metas) and probe.caught_up(group, "frames"), 120, "all frames scored")
    finally:
        service.stop()
        t.join(60)
    results = [InspectionResult.from_bytes(r.value) for r in probe.read_topic("results")]
    assert {r.frame_id for r in results} == {m.frame_id for m in metas}
    det = Detector.load(crad_unified_checkpoint, device="cpu")
    assert det.family == "crad" and set(det.thresholds) == {"toy", "blue"}
    files = sorted(frames_dir.glob("*.png"))[:6]
    direct = det.predict([read_rgb(f) for f in files]).scores
    for product in ("toy", "blue"):
        got = sorted((r.seq, r) for r in results if r.product == product)
        assert [r.threshold for _, r in got] == [det.threshold_for(product)] * 6
        np.testing.assert_allclose([r.score for _, r in got], direct, rtol=1e-5)
        assert [r.is_anomalous for _, r in got] == [bool(s > det.threshold_for(product)) for s in direct]
        assert {r.model_version for _, r in got} == {det.version}
