"""linewatch-bridge mqtt against the real Kafka broker and Debian's mosquitto on 127.0.0.1."""

from __future__ import annotations

import signal
import time

import pytest

from tests.storage.helpers import make_result

from tests.pipeline.harness import wait_for

from .helpers import ResultsLine, Subscriber

pytest.importorskip("paho.mqtt", reason="paho-mqtt missing: pip install 'linewatch[bridges]'")


@pytest.fixture
def line(kafka_test_settings, kafka_env, tmp_path, mosquitto):
    line = ResultsLine(kafka_test_settings, kafka_env, tmp_path, "mqtt")
    yield line
    line.stop_all()


def test_each_verdict_published_once_newest_retained_bad_message_dead_lettered(line, mosquitto):
    sub = Subscriber(mosquitto.port)
    results = [make_result(i, camera=cam, anomalous=(i == 2)) for cam in ("cam-1", "cam-2") for i in range(4)]
    line.publish(results)
    line.publish_raw(b"not json")
    line.publish(results[:3])  # a replay of frames already delivered: skipped by frame id
    line.publish([make_result(1, camera="cam-1", prefix="late")])  # a new frame captured before the newest
    proc = line.start_bridge("--port", str(mosquitto.port), "--host", "127.0.0.1")
    try:
        wait_for(lambda: len(sub.frame_ids()) == 9 and line.committed() == 13, 30, "9 verdicts and commits", [proc])
        msgs = sub.snapshot()
        assert len(msgs) == 9, [m[1]["frame_id"] for m in msgs]  # no duplicates from the replay
        assert {m[0] for m in msgs} == {"linewatch/line-1/cam-1", "linewatch/line-1/cam-2"}
        assert all(m[2] == 1 for m in msgs)
        by_frame = {m[1]["frame_id"]: m[1] for m in msgs}
        assert by_frame["f-cam-1-000002"]["verdict"] == "reject"
        assert by_frame["f-cam-1-000002"]["part_id"] == "part-2"
        assert by_frame["f-cam-2-000001"]["verdict"] == "pass"
        assert by_frame["f-cam-2-000001"]["model_version"] == "m-1"

        # a subscriber that connects later gets each camera's newest verdict, retained (the late frame,
        # captured earlier, was published but did not replace it)
        late = Subscriber(mosquitto.port)
        wait_for(lambda: len(late.snapshot()) == 2, 10, "retained verdicts")
        assert {(m[0], m[1]["seq"], m[3]) for m in late.snapshot()} == {
            ("linewatch/line-1/cam-1", 3, True), ("linewatch/line-1/cam-2", 3, True)}
        late.close()

        dead = line.dead_letters(1)
        assert len(dead) == 1 and dead[0].value == b"not json"
        headers = dict(dead[0].headers)
        assert headers["lw-dlq-stage"] == b"bridge-mqtt"
        assert headers["lw-dlq-code"] == b"undecodable"

        status, body = line.http("/metrics")
        assert status == 200
        assert 'linewatch_bridge_verdicts_delivered_total{sink="mqtt",verdict="reject"} 2.0' in body
        assert "linewatch_bridge_duplicates_total 3.0" in body
        assert line.http("/readyz")[0] == 200

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        sub.close()


def test_broker_outage_waits_commits_nothing_then_delivers_everything(line, mosquitto):
    line.env["LINEWATCH_BRIDGE_ACK_TIMEOUT_S"] = "1"  # the outage below outlasts it: batches are redone
    proc = line.start_bridge("--port", str(mosquitto.port), "--host", "127.0.0.1")
    line.publish([make_result(0)])
    wait_for(lambda: line.committed() == 1, 30, "the first verdict committed", [proc])

    mosquitto.stop()
    line.publish([make_result(i) for i in range(1, 6)])
    wait_for(lambda: line.http("/readyz")[0] == 503, 10, "readiness to drop with the broker", [proc])
    time.sleep(2)  # the bridge has had the results; without PUBACKs it must not commit them
    assert line.committed() == 1
    assert line.http("/healthz")[0] == 200  # waiting on the sink is alive, not stuck

    mosquitto.start()
    sub = Subscriber(mosquitto.port, "linewatch/#")
    try:
        wait_for(lambda: line.committed() == 6, 30, "the held-back batch committed after the reconnect", [proc])
        # the batch was redone (not skipped) while the broker was away, and delivered once it was back
        metrics = line.http("/metrics")[1]
        assert "linewatch_bridge_retries_total 0.0" not in metrics
        assert 'linewatch_bridge_verdicts_delivered_total{sink="mqtt",verdict="pass"} 6.0' in metrics
        # the broker came back empty (no persistence): the newest verdict was republished, retained
        wait_for(lambda: any(m[1]["seq"] == 5 for m in sub.snapshot()), 10, "the newest verdict")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        sub.close()
