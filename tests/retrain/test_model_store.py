"""detector.model_store: atomic pointer/threshold files, artifact installation, change detection."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

import pytest

from detector.model_store import ModelStore, ModelStoreError, ModelStoreSettings, StoreWatcher, check_name


def test_active_pointer_roundtrip_and_products(tmp_path):
    store = ModelStore(tmp_path / "models")
    assert store.read_active("flange") is None and store.products() == []
    at = datetime(2026, 11, 23, 15, 0, tzinfo=timezone.utc)
    store.write_active("flange", "abc123def456", tmp_path / "x.ckpt", "a" * 64, at)
    ptr = store.read_active("flange")
    assert (ptr.version, ptr.path, ptr.sha256, ptr.activated_at) == \
        ("abc123def456", str((tmp_path / "x.ckpt").resolve()), "a" * 64, at)
    assert json.loads((tmp_path / "models/flange/active.json").read_text())["version"] == "abc123def456"
    store.write_active("bottle", "v2", tmp_path / "y.ckpt", "b" * 64)
    assert store.products() == ["bottle", "flange"]
    assert set(store.active_pointers()) == {"bottle", "flange"}
    assert not list((tmp_path / "models/flange").glob(".tmp-*")), "no temporary file left behind"


def test_unreadable_pointer_and_thresholds_are_one_line_errors(tmp_path):
    store = ModelStore(tmp_path)
    (tmp_path / "flange").mkdir()
    (tmp_path / "flange/active.json").write_text('{"version": "v1"}')
    with pytest.raises(ModelStoreError, match="not a valid pointer file: path"):
        store.read_active("flange")
    (tmp_path / "thresholds.json").write_text('{"cam-1": "high"}')
    with pytest.raises(ModelStoreError, match="camera id -> number"):
        store.read_thresholds()
    (tmp_path / "thresholds.json").write_text("{broken")
    with pytest.raises(ModelStoreError, match="not valid JSON"):
        store.read_thresholds()


def test_thresholds_roundtrip_drops_cleared_cameras(tmp_path):
    store = ModelStore(tmp_path)
    assert store.read_thresholds() == {}
    store.write_thresholds({"cam-2": 0.5, "cam-1": 0.25, "cam-3": None})
    assert store.read_thresholds() == {"cam-1": 0.25, "cam-2": 0.5}


@pytest.mark.parametrize("name", ["../etc", ".hidden", "a/b", "", "x" * 101, "-rf"])
def test_names_that_would_escape_or_hide_are_refused(name):
    with pytest.raises(ModelStoreError):
        check_name("product", name)


def test_install_artifact_names_by_content_and_is_idempotent(tmp_path):
    store = ModelStore(tmp_path / "models")
    src = tmp_path / "model.pt"
    src.write_bytes(b"weights")
    sha = hashlib.sha256(b"weights").hexdigest()
    path, got_sha, version = store.install_artifact("flange", src)
    assert (got_sha, version, path) == (sha, sha[:12], store.root / "flange" / f"{sha[:12]}.ckpt")
    assert path.read_bytes() == b"weights" and src.exists()
    assert store.install_artifact("flange", src)[0] == path
    assert sorted(p.name for p in (store.root / "flange").iterdir()) == [f"{sha[:12]}.ckpt"]
    assert ModelStore.of_artifact(path, "flange").root == store.root
    assert ModelStore.of_artifact(src, "flange") is None
    with pytest.raises(ModelStoreError, match="not found"):
        store.install_artifact("flange", tmp_path / "missing.pt")


def test_sweep_removes_leftovers_of_a_crashed_run(tmp_path):
    store = ModelStore(tmp_path)
    tmp = store.temp_artifact("flange")
    (tmp_path / "flange/.tmp-retrain-x").mkdir()
    (tmp_path / "flange/.tmp-retrain-x/a.png").write_bytes(b"x")
    (tmp_path / "flange/keep.ckpt").write_bytes(b"x")
    assert tmp.exists()
    assert store.sweep_temp("flange") == 2
    assert sorted(p.name for p in (tmp_path / "flange").iterdir()) == ["keep.ckpt"]


def test_watcher_sees_each_replacement_once_and_is_throttled(tmp_path):
    now = [0.0]
    store = ModelStore(tmp_path)
    w = StoreWatcher(store, interval_s=1.0, clock=lambda: now[0])
    w.mark_seen()
    assert not w.changed()
    store.write_thresholds({"cam-1": 0.3})
    assert not w.changed(), "checked less than interval_s ago"
    now[0] = 1.5
    assert w.changed()
    now[0] = 3.0
    assert not w.changed()
    store.write_active("flange", "v1", tmp_path / "a.ckpt", "c" * 64)
    now[0] = 4.5
    assert w.changed()
    store.write_active("flange", "v1", tmp_path / "a.ckpt", "c" * 64)  # same content, new file: a change
    now[0] = 6.0
    assert w.changed()


def test_settings_default_next_to_the_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("LINEWATCH_MODEL_STORE_DIR", raising=False)
    monkeypatch.setenv("LINEWATCH_DATA_DIR", str(tmp_path))
    assert ModelStoreSettings().model_store_dir == (tmp_path / "models").resolve()
    monkeypatch.setenv("LINEWATCH_MODEL_STORE_DIR", str(tmp_path / "elsewhere"))
    assert ModelStore.from_env().root == (tmp_path / "elsewhere").resolve()
