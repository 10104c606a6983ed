"""Blob store: where image bytes (heatmaps, flagged and sampled frames) live.

Interface (:class:`BlobStore`): ``put(key, data, content_type)``, ``get(key) -> bytes``,
``delete(key)``, ``exists(key)``, ``iter_keys()``.  Keys are ``/``-separated relative paths
made by the writer, e.g. ``heatmaps/2026/11/23/cam-1/cam-1-000042-1a2b3c4d5e6f.png``; the
last part before the extension is a prefix of the content's sha256, so a key always names
the same bytes and re-putting it (a replayed result) is harmless.

Implementations
---------------
``local`` (**the default**): files under ``LINEWATCH_BLOB_DIR`` (``<data_dir>/blobs``).
    Chosen as the default because image bytes dominate the volume (a heatmap per frame, a
    full frame per flagged part): kept out of the database, the SQLite file stays small, so
    its WAL checkpoints, backups and the dashboard's queries stay fast; purging frees disk at
    once (no VACUUM); files can be inspected, rsynced or moved to an S3-compatible store
    later with the same key layout.  Writes are atomic (temp file + fsync + rename), so a
    crash never leaves a truncated image under a real key; :meth:`LocalBlobStore.flush` makes a
    batch of puts durable before the writer commits the rows that point at them.
``database``: a ``blobs`` table in the same database (``LINEWATCH_BLOB_STORE=database``).
    For deployments where the services run on different hosts without a shared
    filesystem (e.g. several writer pods against one PostgreSQL): one backup covers
    everything.  Heavier on the database, so not the default.

An S3-compatible store can be added later behind the same interface.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

from sqlalchemy import Engine, delete, select

from .db import insert_ignore, write_session
from .models import Blob, utcnow
from .settings import StorageSettings


class BlobNotFound(KeyError):
    """No blob under that key."""


@runtime_checkable
class BlobStore(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def get(self, key: str) -> bytes: ...

    def delete(self, key: str) -> None:
        """Remove the blob; a missing key is not an error."""
        ...

    def exists(self, key: str) -> bool: ...

    def iter_keys(self) -> Iterator[str]: ...

    def flush(self) -> None:
        """Make every ``put`` so far durable (the writer calls it before its DB commit)."""
        ...


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key or "\0" in key:
        raise ValueError(f"invalid blob key {key!r}")
    return key


class LocalBlobStore:
    """Files under a root directory; the key is the relative path."""

    def __init__(self, root: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.root = Path(root)
        self.durable = durable
        self._dirty = False

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*_check_key(key).split("/"))

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
            self._dirty = True
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def iter_keys(self) -> Iterator[str]:
        if not self.root.is_dir():
            return
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                yield Path(dirpath, name).relative_to(self.root).as_posix()

    def flush(self) -> None:
        # one sync(2) per batch instead of an fsync per file and directory: a batch puts
        # hundreds of small files, and only their durability before the DB commit matters
        if self._dirty and self.durable:
            os.sync()
        self._dirty = False


class DatabaseBlobStore:
    """Rows of the ``blobs`` table (migrated with the rest of the schema)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __repr__(self) -> str:
        return f"DatabaseBlobStore({self.engine.url.render_as_string(hide_password=True)!r})"

    def put(self, key: str, data: bytes, content_type: str) -> None:
        _check_key(key)
        with write_session(self.engine) as s:
            # keys name their content (sha256 prefix), so an existing row already holds these bytes
            insert_ignore(
                s,
                Blob.__table__,
                [{"key": key, "content_type": content_type, "data": data, "created_at": utcnow()}],
                ["key"],
            )

    def get(self, key: str) -> bytes:
        with self.engine.connect() as conn:
            data = conn.execute(select(Blob.data).where(Blob.key == key)).scalar_one_or_none()
        if data is None:
            raise BlobNotFound(key)
        return bytes(data)

    def delete(self, key: str) -> None:
        with write_session(self.engine) as s:
            s.execute(delete(Blob).where(Blob.key == key))

    def exists(self, key: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(Blob.key).where(Blob.key == key)).first() is not None

    def iter_keys(self) -> Iterator[str]:
        with self.engine.connect() as conn:
            keys = conn.execute(select(Blob.key).order_by(Blob.key)).scalars().all()
        yield from keys

    def flush(self) -> None:
        """Each put is its own committed transaction."""


def make_blob_store(settings: StorageSettings | None = None, engine: Engine | None = None) -> BlobStore:
    """The blob store the settings name (``LINEWATCH_BLOB_STORE``)."""
    settings = settings or StorageSettings()
    if settings.blob_store == "local":
        assert settings.blob_dir is not None
        return LocalBlobStore(settings.blob_dir)
    if engine is None:
        raise ValueError("the database blob store needs an engine")
    return DatabaseBlobStore(engine)
