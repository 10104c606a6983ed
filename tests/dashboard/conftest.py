"""Dashboard test fixtures: a migrated database (SQLite and PostgreSQL), seeded with users and
inspections, and the environment the dashboard reads it from."""

from __future__ import annotations

import pytest

from tests.storage.fixtures import postgres_url, sqlite_db, storage_backend, storage_db  # noqa: F401

from .seed import seed


@pytest.fixture
def seeded(storage_db, monkeypatch):
    """``(db, Seeded)``; ``LINEWATCH_DATABASE_URL``/``LINEWATCH_DATA_DIR`` point at the database."""
    monkeypatch.setenv("LINEWATCH_DATABASE_URL", storage_db.url)
    monkeypatch.setenv("LINEWATCH_DATA_DIR", str(storage_db.settings.data_dir))
    monkeypatch.delenv("LINEWATCH_BLOB_STORE", raising=False)
    monkeypatch.delenv("LINEWATCH_DETECTOR_METRICS_URL", raising=False)
    return storage_db, seed(storage_db)
