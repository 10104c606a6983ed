"""Storage keeps the model store's files in step with the database (after each commit)."""

from __future__ import annotations

import json

import pytest

from detector.model_store import ModelStore
from storage import registry as reg
from storage.db import write_session
from storage.thresholds import publish_thresholds, set_camera_threshold
from tests.retrain.helpers import capture, store


def _artifact(store_: ModelStore, content: bytes, tmp_path):
    src = tmp_path / f"{content.decode()}.pt"
    src.write_bytes(content)
    return store_.install_artifact("flange", src)


def test_promote_and_rollback_write_the_pointer_after_commit(storage_db, tmp_path):
    ms = ModelStore(storage_db.settings.model_store_dir)
    p1, sha1, v1 = _artifact(ms, b"one", tmp_path)
    p2, sha2, v2 = _artifact(ms, b"two", tmp_path)
    with write_session(storage_db.engine) as s:
        reg.promote(s, reg.register_candidate(s, "flange", v1, p1, artifact_sha256=sha1), "test")
        assert ms.read_active("flange") is None, "not before the commit"
    assert ms.read_active("flange").version == v1

    with pytest.raises(RuntimeError):
        with write_session(storage_db.engine) as s:
            reg.promote(s, reg.register_candidate(s, "flange", v2, p2, artifact_sha256=sha2), "test")
            raise RuntimeError("crash before the commit")
    assert ms.read_active("flange").version == v1, "a rolled-back promotion leaves the pointer alone"

    with write_session(storage_db.engine) as s:
        reg.promote(s, reg.register_candidate(s, "flange", v2, p2, artifact_sha256=sha2), "test")
    ptr = ms.read_active("flange")
    assert (ptr.version, ptr.path, ptr.sha256) == (v2, str(p2), sha2)
    with write_session(storage_db.engine) as s:
        reg.rollback(s, "flange", "admin")
    assert ms.read_active("flange").version == v1

    ms.clear_active("flange")
    with storage_db.session() as s:
        assert reg.publish_active(s) == ["flange"]
    assert ms.read_active("flange").version == v1


def test_threshold_changes_reach_thresholds_json(storage_db):
    store(storage_db, [capture(0, camera="cam-1"), capture(1, camera="cam-2")])
    ms = ModelStore(storage_db.settings.model_store_dir)
    with write_session(storage_db.engine) as s:
        set_camera_threshold(s, "cam-1", 0.42, "erik", store=ms)
        set_camera_threshold(s, "cam-2", 0.7, "erik", store=ms)
    assert ms.read_thresholds() == {"cam-1": 0.42, "cam-2": 0.7}
    with write_session(storage_db.engine) as s:
        set_camera_threshold(s, "cam-1", None, "erik", "back to the model's", store=ms)
    assert json.loads((ms.root / "thresholds.json").read_text()) == {"cam-2": 0.7}
    (ms.root / "thresholds.json").unlink()
    assert publish_thresholds(storage_db.engine, ms) == {"cam-2": 0.7}
    assert ms.read_thresholds() == {"cam-2": 0.7}


def test_threshold_store_defaults_to_the_configured_model_store(sqlite_db, monkeypatch):
    monkeypatch.setenv("LINEWATCH_DATA_DIR", str(sqlite_db.settings.data_dir))
    monkeypatch.delenv("LINEWATCH_MODEL_STORE_DIR", raising=False)
    store(sqlite_db, [capture(0)])
    with write_session(sqlite_db.engine) as s:
        set_camera_threshold(s, "cam-1", 0.3, "erik")
    assert ModelStore(sqlite_db.settings.data_dir / "models").read_thresholds() == {"cam-1": 0.3}
