"""Reusable fixtures for a migrated linewatch database (SQLite and PostgreSQL).

Use them from any conftest.py::

    from tests.storage.fixtures import storage_db, storage_backend, sqlite_db, postgres_url  # noqa: F401

* ``storage_db`` (function): a freshly migrated database, parametrised over ``sqlite`` and
  ``postgresql`` — every test using it runs twice; the PostgreSQL run skips (with the reason)
  when ``LINEWATCH_TEST_POSTGRES_URL`` is unset.  SQLite: a file in the test's tmp dir.
  PostgreSQL: a schema of its own in that database (selected through the URL, so
  subprocesses given ``db.url`` see the same schema), dropped afterwards.
* ``sqlite_db`` (function): the same, SQLite only.
* ``postgres_url`` (session): the server URL, or skip.

The yielded :class:`TestDatabase` has ``url``, ``engine``, ``settings``
(:class:`storage.settings.StorageSettings` with ``data_dir`` = the test's tmp dir and the
local blob store under it), ``blobs``, ``env`` (``os.environ`` plus ``LINEWATCH_DATABASE_URL``
and ``LINEWATCH_DATA_DIR``, for CLI subprocesses) and ``session()``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from storage.blobs import BlobStore, make_blob_store
from storage.db import init_db, make_engine, normalize_url
from storage.settings import StorageSettings

PG_ENV = "LINEWATCH_TEST_POSTGRES_URL"


@dataclass
class TestDatabase:
    __test__ = False  # not a test class

    backend: str
    url: str
    engine: Engine
    settings: StorageSettings
    blobs: BlobStore
    env: dict[str, str] = field(default_factory=dict)

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"{PG_ENV} is not set: no PostgreSQL server for this run "
                    "(deploy/test.sh starts one via deploy/ci/postgres.sh)")
    return normalize_url(url)


def _schema_url(base: str, schema: str) -> str:
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


def make_test_database(backend: str, tmp_path: Path, pg_url: str | None = None,
                       migrate: bool = True) -> tuple[TestDatabase, Callable[[], None]]:
    """Build a database for a test; returns it and a cleanup function."""
    data_dir = tmp_path / "lwdata"
    data_dir.mkdir(parents=True, exist_ok=True)
    cleanup_schema = None
    if backend == "sqlite":
        url = f"sqlite:///{data_dir / 'linewatch.db'}"
    else:
        assert pg_url
        schema = f"lwt_{uuid.uuid4().hex[:12]}"
        admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = _schema_url(pg_url, schema)

        def cleanup_schema() -> None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            admin.dispose()

    settings = StorageSettings(data_dir=data_dir, database_url=url)
    engine = make_engine(settings=settings)
    if migrate:
        init_db(engine)
    env = dict(os.environ)
    env["LINEWATCH_DATABASE_URL"] = url
    env["LINEWATCH_DATA_DIR"] = str(data_dir)
    env.pop("LINEWATCH_BLOB_STORE", None)
    db = TestDatabase(backend, url, engine, settings, make_blob_store(settings, engine), env)

    def cleanup() -> None:
        engine.dispose()
        if cleanup_schema:
            cleanup_schema()

    return db, cleanup


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def storage_backend(request) -> str:
    if request.param == "postgresql" and not os.environ.get(PG_ENV):
        pytest.skip(f"{PG_ENV} is not set: no PostgreSQL server for this run "
                    "(deploy/test.sh starts one via deploy/ci/postgres.sh)")
    return request.param


@pytest.fixture
def storage_db(storage_backend, tmp_path, request) -> Iterator[TestDatabase]:
    pg = normalize_url(os.environ[PG_ENV]) if storage_backend == "postgresql" else None
    db, cleanup = make_test_database(storage_backend, tmp_path, pg)
    try:
        yield db
    finally:
        cleanup()


@pytest.fixture
def sqlite_db(tmp_path) -> Iterator[TestDatabase]:
    db, cleanup = make_test_database("sqlite", tmp_path)
    try:
        yield db
    finally:
        cleanup()
