"""linewatch-bridge opcua against the real Kafka broker, read back with an asyncua client on 127.0.0.1."""

from __future__ import annotations

import asyncio
import signal

import pytest

from tests.pipeline.harness import free_port, wait_for
from tests.storage.helpers import make_result

from .helpers import ResultsLine

pytest.importorskip("asyncua", reason="asyncua missing: pip install 'linewatch[bridges]'")


async def _read_camera(url: str, line: str, camera: str) -> dict:
    from asyncua import Client, ua

    async with Client(url, timeout=5) as client:
        ns = await client.get_namespace_index("urn:linewatch")
        names = ["Verdict", "IsAnomalous", "Score", "Threshold", "PartId", "ModelVersion", "FrameId", "Seq",
                 "CapturedAt", "Count"]
        values = {}
        for name in names:
            values[name] = await client.get_node(ua.NodeId(f"{line}/{camera}/{name}", ns)).read_value()
        # the same object is reachable by browsing from Objects
        obj = await client.nodes.objects.get_child([f"{ns}:Linewatch", f"{ns}:{line}", f"{ns}:{camera}"])
        values["browse_name"] = (await obj.read_browse_name()).Name
        # clients cannot overwrite the verdict
        try:
            await client.get_node(ua.NodeId(f"{line}/{camera}/Verdict", ns)).write_value("pass")
            values["writable"] = True
        except ua.UaStatusCodeError:
            values["writable"] = False
        return values


def read_camera(url: str, line: str, camera: str) -> dict:
    return asyncio.run(_read_camera(url, line, camera))


def test_nodes_per_camera_hold_the_newest_verdict(kafka_test_settings, kafka_env, tmp_path):
    line = ResultsLine(kafka_test_settings, kafka_env, tmp_path, "opcua")
    url = f"opc.tcp://127.0.0.1:{free_port()}/linewatch/"
    try:
        line.publish([make_result(i, camera="cam-1", anomalous=(i == 3)) for i in range(4)])
        line.publish([make_result(i, camera="cam-2", line="line-2") for i in range(2)])
        line.publish_raw(b"{}")
        proc = line.start_bridge("--endpoint", url)
        # the server is up before the bridge consumes, and values are written before the commit
        wait_for(lambda: line.committed() == 7, 30, "all results committed", [proc])

        cam1 = read_camera(url, "line-1", "cam-1")
        assert cam1["Verdict"] == "reject" and cam1["IsAnomalous"] is True
        assert cam1["Score"] == pytest.approx(0.9) and cam1["Threshold"] == pytest.approx(0.5)
        assert (cam1["PartId"], cam1["ModelVersion"], cam1["FrameId"], cam1["Seq"]) == (
            "part-3", "m-1", "f-cam-1-000003", 3)
        assert cam1["CapturedAt"].replace(tzinfo=None) == make_result(3).captured_at.replace(tzinfo=None)
        assert cam1["Count"] == 4
        assert cam1["browse_name"] == "cam-1"
        assert cam1["writable"] is False

        cam2 = read_camera(url, "line-2", "cam-2")
        assert (cam2["Verdict"], cam2["Seq"], cam2["Count"]) == ("pass", 1, 2)

        assert len(line.dead_letters(1)) == 1
        assert line.http("/readyz")[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        line.stop_all()
