"""The detector service's parts that need no broker: routing, model swaps, frame checks, heatmaps, logs, CLI."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.service.imaging import (
    BadFrame,
    DecodedFrame,
    attachable_frame,
    check_frame,
    dequantise_heatmap,
    encode_heatmap,
    image_dimensions,
    is_sampled,
)
from detector.service.observability import StructuredFormatter
from detector.service.routing import ModelHolder, RoutingConfig, RoutingError, load_routing
from ingest.messages import FrameMeta

from .harness import cli


def _meta(ct: str = "image/png") -> FrameMeta:
    return FrameMeta(frame_id="f-1", line="l", station="s", camera_id="cam-1", seq=3,
                     captured_at=datetime.now(timezone.utc), content_type=ct)


def test_routing_precedence_relative_paths_and_errors(tmp_path):
    (tmp_path / "cfg").mkdir()
    f = tmp_path / "cfg" / "routes.yaml"
    f.write_text("default: d.pt\nproducts: {bottle: b.pt}\ncameras: {cam-7: c7.pt}\n"
                 "thresholds: {cameras: {cam-7: 0.5}, products: {bottle: 0.25}}\n")
    r = load_routing(f)
    base = (tmp_path / "cfg").resolve()
    assert r.resolve("cam-7", "bottle") == str(base / "c7.pt")  # camera wins
    assert r.resolve("cam-1", "bottle") == str(base / "b.pt")
    assert r.resolve("cam-1", None) == str(base / "d.pt")
    assert r.threshold_override("cam-7", "bottle") == 0.5 and r.threshold_override("cam-1", "bottle") == 0.25
    assert r.threshold_override("cam-1", "other") is None
    assert load_routing(f, default_model="/abs/m.pt").default == "/abs/m.pt"
    j = tmp_path / "r.json"
    j.write_text(json.dumps({"products": {"x": "/m/x.pt"}}))
    assert load_routing(j).resolve("c", "y") is None  # no default: no route (-> dead letter)
    with pytest.raises(RoutingError, match="no model configured"):
        load_routing(None, None)
    j.write_text('{"cameras": {"a": 1}, "typo": 2}')
    with pytest.raises(RoutingError, match="r.json"):
        load_routing(j)
    j.write_text("{not json")
    with pytest.raises(RoutingError, match="not valid"):
        load_routing(j)
    with pytest.raises(RoutingError, match="cannot read"):
        load_routing(tmp_path / "missing.json")


class FakeDetector:
    def __init__(self, path: str):
        self.path = path
        self.version = Path(path).read_text()[:12]
        self.threshold = 1.0

    def threshold_for(self, product: str | None) -> float:
        return self.threshold


def test_model_holder_swaps_only_when_activated_and_reuses_unchanged_files(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_text("version-a")
    b.write_text("version-b")
    loads: list[str] = []

    def loader(p: str):
        loads.append(p)
        return FakeDetector(p)

    holder = ModelHolder(loader)
    first = holder.load(RoutingConfig(default=str(a)))
    assert first.route("cam", None).detector.version == "version-a"
    new = holder.build(RoutingConfig(default=str(a), cameras={"cam-2": str(b)},
                                     thresholds={"cameras": {"cam-2": 0.3}}))
    holder.stage(new)
    assert holder.current is first  # nothing changes until the service activates it between batches
    assert holder.activate() is new and holder.current is new and holder.activate() is None
    assert new.detectors[str(a)] is first.detectors[str(a)]  # unchanged file: same detector, not reloaded
    route = new.route("cam-2", None)
    assert route.detector.version == "version-b" and route.threshold == 0.3
    assert new.route("cam-1", None).threshold == 1.0
    assert loads == [str(a), str(b)]
    t = holder.reload_async(lambda: RoutingConfig(default=str(tmp_path / "missing.pt")))
    t.join(10)
    assert not holder.has_pending  # a failed reload keeps the active models


def test_image_dimensions_from_headers():
    img = np.zeros((37, 53, 3), np.uint8)
    for ext in (".png", ".jpg"):
        ok, buf = cv2.imencode(ext, img)
        assert image_dimensions(buf.tobytes()) == (53, 37)
    assert image_dimensions(b"garbage") is None


def test_check_frame_reasons():
    img = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    png = cv2.imencode(".png", img)[1].tobytes()
    jpg = cv2.imencode(".jpg", img)[1].tobytes()
    headers = _meta().to_headers()
    fr = check_frame(png, headers, max_bytes=10**6, max_pixels=10**6)
    assert fr.rgb.shape == (20, 30, 3) and np.array_equal(fr.rgb, img[:, :, ::-1])

    def code(value, hdrs=headers, **kw):
        with pytest.raises(BadFrame) as e:
            check_frame(value, hdrs, **{"max_bytes": 10**6, "max_pixels": 10**6, **kw})
        return e.value.code

    assert code(b"") == "empty" and code(None) == "empty"
    assert code(png, max_bytes=100) == "oversized"
    assert code(png, max_pixels=100) == "oversized"
    assert code(png, [("lw-schema", b"9")]) == "schema"
    assert code(jpg[:-50], _meta("image/jpeg").to_headers()) == "undecodable"
    assert code(jpg, headers) == "undecodable"  # content type says PNG
    assert code(b"\x89PNG\r\n\x1a\n" + b"\0" * 40) == "undecodable"


def test_heatmap_quantisation_downscale_and_round_trip():
    amap = np.linspace(0, 2.0, 600 * 400, dtype=np.float32).reshape(400, 600)
    png, hmax = encode_heatmap(amap, max_side=300)
    back = dequantise_heatmap(png, hmax)
    assert back.shape == (200, 300) and hmax == pytest.approx(2.0, abs=0.01)
    small = cv2.resize(amap, (300, 200), interpolation=cv2.INTER_AREA)
    assert np.abs(back - small).max() <= hmax / 255 * 0.5 + 1e-5
    png, hmax = encode_heatmap(np.zeros((5, 7), np.float32))
    assert hmax == 0.0 and dequantise_heatmap(png, hmax).shape == (5, 7)
    png, hmax = encode_heatmap(np.full((4, 4), np.nan, np.float32))
    assert hmax == 0.0


def test_sampling_is_deterministic_and_close_to_the_rate():
    ids = [f"cam-1-run-{i}" for i in range(20000)]
    picked = [is_sampled(i, 0.05) for i in ids]
    assert picked == [is_sampled(i, 0.05) for i in ids]
    assert 0.04 < sum(picked) / len(ids) < 0.06
    assert not any(is_sampled(i, 0.0) for i in ids[:100]) and all(is_sampled(i, 1.0) for i in ids[:100])


def test_attached_frame_is_the_original_unless_too_large():
    img = np.random.default_rng(1).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    png = cv2.imencode(".png", img)[1].tobytes()
    fr = DecodedFrame(_meta(), img[:, :, ::-1].copy(), png)
    assert attachable_frame(fr, 10**7) == (png, "image/png")
    data, ctype = attachable_frame(fr, 20_000)
    assert ctype == "image/jpeg" and len(data) <= 20_000 and cv2.imdecode(np.frombuffer(data, np.uint8), 1) is not None


def test_structured_log_formats():
    rec = logging.LogRecord("linewatch.detector.service", logging.INFO, __file__, 1, "batch", None, None)
    rec.kv = {"frames": 8, "versions": "abc def", "ms": 1.23456789}
    line = StructuredFormatter("logfmt").format(rec)
    assert "level=info" in line and "msg=batch" in line and "frames=8" in line and 'versions="abc def"' in line
    doc = json.loads(StructuredFormatter("json").format(rec))
    assert doc["msg"] == "batch" and doc["frames"] == 8 and doc["logger"] == "linewatch.detector.service"


def test_serve_cli_help_and_one_line_errors(tmp_path, capsys):
    from detector.cli import build_parser, main

    help_text = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()
    assert "--max-batch" in help_text and "SIGTERM" in help_text and "SIGHUP" in help_text
    assert main(["serve", "--max-batch", "0", "--model", "x.pt"]) == 2
    assert "--max-batch" in capsys.readouterr().err
    assert main(["serve"]) == 2
    assert "no model configured" in capsys.readouterr().err
    # the real command: a missing checkpoint is a one-line error, exit status 2
    out = subprocess.run([*cli("linewatch-detector", "detector.cli"), "serve", "--model", str(tmp_path / "no.pt")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "no.pt" in out.stderr


@pytest.mark.parametrize("content", ['{"cam-1": NaN}', '{"cam-1": -0.5}', '{"cam-1": Infinity}'])
def test_a_bad_thresholds_file_is_refused_and_the_old_threshold_keeps_serving(tmp_path, content, caplog):
    from detector.model_store import ModelStore
    from detector.service.store_reload import StoreRouting

    store = ModelStore(tmp_path / "store")
    store.root.mkdir()
    store.write_thresholds({"cam-1": 0.25})
    (tmp_path / "model.pt").write_bytes(b"stand-in: the loader below does not read it")
    routing = StoreRouting(None, tmp_path / "model.pt", store)
    holder = ModelHolder(lambda p: object())
    holder.load(routing())
    assert holder.current.routing.threshold_override("cam-1", None) == 0.25
    (store.root / "thresholds.json").write_text(content)
    with pytest.raises(RoutingError, match="finite numbers >= 0"):
        routing()
    with caplog.at_level(logging.ERROR, logger="linewatch.detector.service"):
        holder.reload_async(routing).join(10)
    assert "model reload failed, keeping the active models" in caplog.text
    assert holder.activate() is None and holder.current.routing.threshold_override("cam-1", None) == 0.25
    with pytest.raises(ValueError):  # the routing file's own overrides follow the same rule
        RoutingConfig.model_validate({"thresholds": {"cameras": {"cam-1": float("nan")}}})


def test_serve_sizes_torch_thread_pools_from_the_setting():
    """In a fresh process (torch's pools are process-wide and the interop pool is sized only once):
    the --threads option, then LINEWATCH_DETECTOR_THREADS, then the default."""
    code = ("import sys, torch\n"
            "from detector.cli import build_parser\n"
            "from detector.service.cli import _settings, apply_threads\n"
            "args = build_parser().parse_args(['serve', *sys.argv[1:]])\n"
            "n = apply_threads(_settings(args))\n"
            "print(n, torch.get_num_threads(), torch.get_num_interop_threads())\n")

    def run(*argv, **env):
        environ = {k: v for k, v in os.environ.items() if k != "LINEWATCH_DETECTOR_THREADS"}
        out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120,
                             env={**environ, **env})
        assert out.returncode == 0, out.stderr
        return [int(x) for x in out.stdout.split()]

    assert run("--threads", "3", LINEWATCH_DETECTOR_THREADS="2") == [3, 3, 3]
    assert run(LINEWATCH_DETECTOR_THREADS="2") == [2, 2, 2]
    from detector.service.settings import default_threads

    assert run() == [default_threads()] * 3


def test_default_threads_is_half_the_usable_cpus_within_1_to_4(monkeypatch):
    from detector.service import settings

    for cpus, expected in ((1, 1), (2, 1), (4, 2), (6, 3), (64, 4)):
        monkeypatch.setattr(settings, "usable_cpus", lambda cpus=cpus: cpus)
        assert settings.default_threads() == expected
        assert settings.ServiceSettings().inference_threads() == expected
    assert settings.ServiceSettings(threads=7).inference_threads() == 7
    monkeypatch.undo()
    assert 1 <= settings.usable_cpus() <= (os.cpu_count() or 1)
