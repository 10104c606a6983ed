"""Migrations from empty, the schema matches the models, engine settings."""

from __future__ import annotations

import os
import threading

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from storage.db import alembic_config, current_revision, head_revision, init_db, make_engine, normalize_url
from storage.models import Base
from storage.settings import StorageSettings

from .fixtures import make_test_database

TABLES = {"lines", "cameras", "camera_threshold_changes", "inspections", "images", "blobs", "feedback",
          "users", "login_sessions", "login_address_failures", "model_versions", "alembic_version"}


def test_migrations_up_from_empty_match_models(storage_backend, tmp_path):
    pg = os.environ.get("LINEWATCH_TEST_POSTGRES_URL") if storage_backend == "postgresql" else None
    db, cleanup = make_test_database(storage_backend, tmp_path, pg and normalize_url(pg),
                                     migrate=False)
    try:
        assert set(inspect(db.engine).get_table_names()) == set()
        assert current_revision(db.engine) is None
        init_db(db.engine)
        assert set(inspect(db.engine).get_table_names()) == TABLES
        assert current_revision(db.engine) == head_revision()
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == [], f"models and migrations differ: {diff}"
        # idempotent
        init_db(db.engine)
        assert current_revision(db.engine) == head_revision()
        # every migration has a working downgrade
        with db.engine.begin() as conn:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "base")
        assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
        init_db(db.engine)
        assert set(inspect(db.engine).get_table_names()) == TABLES
    finally:
        cleanup()


def test_concurrent_init_db(storage_backend, tmp_path):
    pg = os.environ.get("LINEWATCH_TEST_POSTGRES_URL") if storage_backend == "postgresql" else None
    db, cleanup = make_test_database(storage_backend, tmp_path, pg and normalize_url(pg),
                                     migrate=False)
    errors: list[BaseException] = []

    def run() -> None:
        engine = make_engine(db.url)
        try:
            init_db(engine)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            engine.dispose()

    try:
        threads = [threading.Thread(target=run) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert current_revision(db.engine) == head_revision()
    finally:
        cleanup()


def test_sqlite_engine_pragmas(sqlite_db):
    with sqlite_db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


def test_default_settings_put_everything_under_the_data_dir(monkeypatch, tmp_path):
    for var in ("LINEWATCH_DATABASE_URL", "LINEWATCH_BLOB_DIR", "LINEWATCH_MODEL_STORE_DIR", "LINEWATCH_BLOB_STORE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LINEWATCH_DATA_DIR", raising=False)
    s = StorageSettings()
    assert s.data_dir == tmp_path / "var"
    assert s.url == f"sqlite:///{tmp_path / 'var' / 'linewatch.db'}"
    assert s.blob_dir == tmp_path / "var" / "blobs" and s.blob_store == "local"
    monkeypatch.setenv("LINEWATCH_DATA_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("LINEWATCH_DATABASE_URL", "postgresql://u@h/db")
    s = StorageSettings()
    assert s.blob_dir == tmp_path / "elsewhere" / "blobs"
    assert s.url == "postgresql://u@h/db"
    assert make_engine(s.url).dialect.driver == "psycopg"


def test_foreign_keys_enforced(storage_db):
    with pytest.raises(IntegrityError):
        with storage_db.engine.begin() as conn:
            conn.execute(text("INSERT INTO cameras (id, line_id, created_at) VALUES ('c', 'no-such-line', "
                              "'2026-01-01 00:00:00')"))
