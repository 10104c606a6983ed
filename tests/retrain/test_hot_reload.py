"""Hot reload from the model store: routing overlay, swaps only when activated, bad models ignored."""

from __future__ import annotations

import logging

import pytest

from detector.inference import Detector
from detector.model_store import ModelStore
from detector.service.routing import ModelHolder, RoutingError
from detector.service.store_reload import StoreReloader, StoreRouting


def test_store_overlays_the_routing(tmp_path, tiny_checkpoint, second_checkpoint):
    store = ModelStore(tmp_path / "models")
    routing = StoreRouting(None, None, store)
    with pytest.raises(RoutingError, match="no model configured"):
        routing()
    p1, sha1, v1 = store.install_artifact("flange", tiny_checkpoint)
    store.write_active("flange", v1, p1, sha1)
    store.write_thresholds({"cam-9": 0.5})
    cfg = routing()
    assert cfg.resolve("cam-1", "flange") == str(p1) and cfg.resolve("cam-1", "bottle") is None
    assert cfg.threshold_override("cam-9", "flange") == 0.5 and cfg.threshold_override("cam-1", "flange") is None

    cfg = StoreRouting(None, second_checkpoint, store)()  # --model: the default for everything else
    assert cfg.resolve("cam-1", "bottle") == str(second_checkpoint.resolve())
    assert cfg.resolve("cam-1", "flange") == str(p1), "the registry's active version wins for its product"

    (store.root / "thresholds.json").write_text("{oops")
    with pytest.raises(RoutingError, match="not valid JSON"):
        routing()


def test_reload_stages_in_background_and_swaps_only_when_activated(tmp_path, tiny_checkpoint, second_checkpoint,
                                                                   caplog):
    store = ModelStore(tmp_path / "models")
    p1, sha1, v1 = store.install_artifact("flange", tiny_checkpoint)
    p2, sha2, v2 = store.install_artifact("flange", second_checkpoint)
    store.write_active("flange", v1, p1, sha1)
    loads: list[str] = []

    def loader(path: str) -> Detector:
        loads.append(path)
        return Detector.load(path, "cpu")

    holder = ModelHolder(loader)
    routing = StoreRouting(None, None, store)
    reloader = StoreReloader(holder, routing, interval_s=0.0)
    holder.load(routing())
    reloader.mark_loaded()

    def step():
        reloader.poll()
        reloader.wait(60)
        return holder.activate()

    assert step() is None, "nothing changed"
    assert holder.current.route("cam-1", "flange").detector.version == v1

    store.write_active("flange", v2, p2, sha2)  # promoted by the registry
    reloader.poll()
    reloader.wait(60)
    assert holder.current.route("cam-1", "flange").detector.version == v1, "staged, not active before the batch ends"
    assert holder.activate() is not None
    assert holder.current.route("cam-1", "flange").detector.version == v2

    det = holder.current.route("cam-1", "flange").detector
    n_loads = len(loads)
    store.write_thresholds({"cam-1": 0.7})  # saved on the dashboard
    assert step() is not None
    route = holder.current.route("cam-1", "flange")
    assert route.threshold == 0.7 and route.detector is det and len(loads) == n_loads, "no model reloaded"

    bad = store.product_dir("flange") / "0123456789ab.ckpt"
    bad.write_bytes(b"not a checkpoint")
    store.write_active("flange", "0123456789ab", bad, "0" * 64)
    with caplog.at_level(logging.ERROR, logger="linewatch.detector.service"):
        assert step() is None
    assert "model reload failed, keeping the active models" in caplog.text
    assert holder.current.route("cam-1", "flange").detector.version == v2, "the old model keeps serving"

    store.write_active("flange", v1, p1, sha1)  # rolled back: the next change is picked up again
    assert step() is not None and holder.current.route("cam-1", "flange").detector.version == v1
