"""Storage settings, read from ``LINEWATCH_*`` environment variables (pydantic-settings).

==================================  ===========================================  ==================================
variable                            default                                      meaning
==================================  ===========================================  ==================================
``LINEWATCH_DATA_DIR``              ``./var`` (relative to the working dir)      root of everything stored locally
``LINEWATCH_DATABASE_URL``          ``sqlite:///<data_dir>/linewatch.db``        SQLAlchemy URL; PostgreSQL as
                                                                                 ``postgresql+psycopg://u:p@h/db``
``LINEWATCH_DATABASE_PASSWORD_FILE`` (none)                                      file holding the password (a Docker
                                                                                 secret, a systemd credential), put
                                                                                 into the URL; an empty file: none
``LINEWATCH_SQLITE_BUSY_TIMEOUT_MS`` ``30000``                                   how long SQLite waits for a lock
``LINEWATCH_BLOB_STORE``            ``local``                                    ``local`` or ``database``
``LINEWATCH_BLOB_DIR``              ``<data_dir>/blobs``                         root of the local blob store
``LINEWATCH_MODEL_STORE_DIR``       ``<data_dir>/models``                        model artifacts
``LINEWATCH_RETENTION_DAYS``        ``30``                                       normal inspections older than this
                                                                                 are purged (flagged ones never)
``LINEWATCH_RETENTION_KEEP_SAMPLED`` ``1.0``                                     fraction of *sampled* normal frames
                                                                                 (those that carry a frame image)
                                                                                 kept past ``RETENTION_DAYS``
``LINEWATCH_RETENTION_SAMPLED_DAYS`` ``365``                                     kept samples go after this (0 = never)
``LINEWATCH_WRITER_GROUP``          ``linewatch-storage-writer``                 Kafka consumer group of the writer
``LINEWATCH_WRITER_BATCH_SIZE``     ``200``                                      results per database transaction
``LINEWATCH_WRITER_MAX_WAIT_MS``    ``500``                                      max time a partial batch waits
``LINEWATCH_WRITER_SESSION_TIMEOUT_MS`` ``10000``                                a crashed writer's partitions move
                                                                                 to the others after this long
==================================  ===========================================  ==================================

The SQLite file, the blob directory and the model store all live under one data directory
by default, so backing up or moving an installation is copying one folder.  A relative
``LINEWATCH_DATA_DIR`` is resolved against the current working directory when the settings are
read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ingest.secrets import read_secret_file


class StorageSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LINEWATCH_", extra="ignore")

    data_dir: Path = Field(Path("var"), description="root of local state (SQLite file, blobs, models)")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite under data_dir")
    database_password_file: Path | None = Field(
        None, description="file holding the database password (a Docker / systemd secret), put into the URL; "
        "an empty file means none (the systemd units' default when no credential is installed, e.g. SQLite)")
    sqlite_busy_timeout_ms: int = Field(30_000, ge=0)

    blob_store: Literal["local", "database"] = "local"
    blob_dir: Path | None = None
    model_store_dir: Path | None = None

    retention_days: float = Field(30.0, gt=0)
    retention_keep_sampled: float = Field(1.0, ge=0.0, le=1.0)
    retention_sampled_days: float = Field(365.0, ge=0)

    writer_group: str = "linewatch-storage-writer"
    writer_batch_size: int = Field(200, ge=1)
    writer_max_wait_ms: int = Field(500, ge=0)
    writer_session_timeout_ms: int = Field(10_000, ge=1000)

    @model_validator(mode="after")
    def _derive_paths(self) -> "StorageSettings":
        self.data_dir = self.data_dir.expanduser().resolve()
        if self.blob_dir is None:
            self.blob_dir = self.data_dir / "blobs"
        if self.model_store_dir is None:
            self.model_store_dir = self.data_dir / "models"
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'linewatch.db'}"
        if self.database_password_file is not None:
            from sqlalchemy.engine import make_url

            password = read_secret_file(self.database_password_file, "LINEWATCH_DATABASE_PASSWORD_FILE")
            if password:
                self.database_url = make_url(self.database_url).set(password=password).render_as_string(
                    hide_password=False)
        return self

    @property
    def url(self) -> str:
        assert self.database_url is not None
        return self.database_url
