"""Model registry: candidate -> active / rejected, one active per product, rollback."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy.exc import IntegrityError

from storage import registry as reg
from storage.db import write_session
from storage.models import ModelVersion


def test_lifecycle(storage_db, tmp_path):
    art = tmp_path / "m1.safetensors"
    art.write_bytes(b"weights-1")
    with write_session(storage_db.engine) as s:
        v1 = reg.register_candidate(s, "bottle", "v1", art, metrics={"image_auroc": 0.97}, threshold=0.4,
                                    created_by="retrain")
        assert v1.artifact_sha256 == hashlib.sha256(b"weights-1").hexdigest()
        reg.promote(s, v1, "retrain", "first model")
    with write_session(storage_db.engine) as s:
        v1 = reg.get_version(s, "bottle", "v1")
        v2 = reg.register_candidate(s, "bottle", "v2", art, artifact_sha256="ab" * 32, parent=v1)
        v3 = reg.register_candidate(s, "bottle", "v3", art, artifact_sha256="cd" * 32, parent=v1)
        reg.promote(s, v2, "retrain")
        reg.reject(s, v3, "false-alarm rate 0.08 > active 0.02 + margin")
        with pytest.raises(ValueError):
            reg.register_candidate(s, "bottle", "v2", art)
    with storage_db.session() as s:
        assert reg.active_version(s, "bottle").version == "v2"
        assert {m.version: m.status for m in reg.list_versions(s, "bottle")} == \
            {"v1": "retired", "v2": "active", "v3": "rejected"}
        v2 = reg.get_version(s, "bottle", "v2")
        assert v2.parent.version == "v1" and v2.promoted_at is not None
        assert reg.get_version(s, "bottle", "v1").metrics == {"image_auroc": 0.97}
    with write_session(storage_db.engine) as s:
        assert reg.rollback(s, "bottle", "admin").version == "v1"
    with storage_db.session() as s:
        assert reg.active_version(s, "bottle").version == "v1"
        assert reg.get_version(s, "bottle", "v2").status == "retired"
        assert reg.active_version(s, "capsule") is None
    with write_session(storage_db.engine) as s:
        with pytest.raises(LookupError):
            reg.rollback(s, "capsule", "admin")


def test_database_allows_one_active_version_per_product(storage_db):
    with pytest.raises(IntegrityError):
        with write_session(storage_db.engine) as s:
            for v in ("a", "b"):
                s.add(ModelVersion(product="bottle", version=v, artifact_path="x", artifact_sha256="0" * 64,
                                   status="active"))
                s.flush()
