"""The model store: trained checkpoints and the small pointer files detector services watch.

Layout (a directory, ``LINEWATCH_MODEL_STORE_DIR``, default ``<LINEWATCH_DATA_DIR>/models`` —
next to the blob store, the same default storage uses)::

    <store>/<product>/<version>.ckpt     checkpoints (version = first 12 hex digits of the file's
                                         sha256, which is also Detector.version and the
                                         model_version every result carries)
    <store>/<product>/active.json        {"version", "path", "sha256", "activated_at"}
    <store>/thresholds.json              {camera_id: threshold}  per-camera overrides

Why files and not the database: data flows ingest -> detector -> storage, so the detector
cannot read storage's registry tables.  Storage's registry (promote, rollback) and threshold
saving call the writer functions here after their transaction commits, so the database and
these files agree; detector services only read them (:class:`StoreWatcher` tells them cheaply
when something changed).

Every write is atomic (temporary file in the same directory, fsync, ``os.replace``, fsync of the
directory): a reader sees the old file or the new one, never half of one, and a crash leaves at
worst a ``.tmp-*`` file that is ignored.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .hashing import file_sha256

ACTIVE = "active.json"
THRESHOLDS = "thresholds.json"
ARTIFACT_SUFFIX = ".ckpt"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class ModelStoreError(Exception):
    """A pointer file or artifact that cannot be used; ``str(e)`` is one line."""


class ModelStoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LINEWATCH_", extra="ignore")

    data_dir: Path = Field(Path("var"), description="root of local state (storage's default too)")
    model_store_dir: Path | None = Field(None, description="default: <data_dir>/models")

    @model_validator(mode="after")
    def _derive(self) -> "ModelStoreSettings":
        if self.model_store_dir is None:
            self.model_store_dir = self.data_dir / "models"
        self.model_store_dir = self.model_store_dir.expanduser().resolve()
        return self


class ActivePointer(BaseModel):
    """``<product>/active.json``: the checkpoint detectors should use for a product."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    version: str
    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    activated_at: AwareDatetime


def check_name(kind: str, name: str) -> str:
    """Products and versions become path components: letters, digits, ``._-`` only."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ModelStoreError(f"invalid {kind} name {name!r}: use letters, digits, '.', '_' and '-' "
                              "(at most 100, not starting with '.', '_' or '-')")
    return name


def version_of(sha256: str) -> str:
    """The version name of an artifact: the same 12 hex digits :class:`Detector` reports."""
    return sha256[:12]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported on this platform/filesystem
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new content, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _dump(obj: object) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")


class ModelStore:
    """One model store directory (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"ModelStore({str(self.root)!r})"

    @classmethod
    def from_env(cls) -> "ModelStore":
        settings = ModelStoreSettings()
        assert settings.model_store_dir is not None
        return cls(settings.model_store_dir)

    @classmethod
    def of_artifact(cls, artifact: str | Path, product: str) -> "ModelStore | None":
        """The store an artifact lives in (``<store>/<product>/<version>.ckpt``), or None."""
        p = Path(artifact).expanduser().resolve()
        if p.suffix == ARTIFACT_SUFFIX and p.parent.name == product:
            return cls(p.parent.parent)
        return None

    # ------------------------------------------------------------------ artifacts
    def product_dir(self, product: str) -> Path:
        return self.root / check_name("product", product)

    def artifact_path(self, product: str, version: str) -> Path:
        return self.product_dir(product) / f"{check_name('version', version)}{ARTIFACT_SUFFIX}"

    def temp_artifact(self, product: str) -> Path:
        """A fresh temporary name inside the product's folder (same filesystem as the final name)."""
        d = self.product_dir(product)
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=ARTIFACT_SUFFIX, dir=d)
        os.close(fd)
        return Path(tmp)

    def install_artifact(self, product: str, src: str | Path, *, move: bool = False) -> tuple[Path, str, str]:
        """Put a checkpoint file into the store -> ``(path, sha256, version)``.

        The bytes are copied (or moved, when ``src`` is already a temporary name in this store)
        to a temporary name, fsynced, hashed and renamed to ``<version>.ckpt``: a crash leaves a
        ``.tmp-*`` file, never a half artifact under a real name.  Installing the same content
        twice is harmless (same name, same bytes).
        """
        src = Path(src)
        if not src.is_file():
            raise ModelStoreError(f"checkpoint not found: {src}")
        d = self.product_dir(product)
        d.mkdir(parents=True, exist_ok=True)
        if move and src.parent.resolve() == d.resolve():
            tmp = src
        else:
            tmp = self.temp_artifact(product)
            shutil.copyfile(src, tmp)
        try:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            sha = file_sha256(tmp)
            version = version_of(sha)
            final = self.artifact_path(product, version)
            os.chmod(tmp, 0o644)
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(d)
        return final, sha, version

    def sweep_temp(self, product: str) -> int:
        """Remove ``.tmp-*`` leftovers of crashed runs in a product folder (call under its lock)."""
        d = self.product_dir(product)
        n = 0
        if d.is_dir():
            for p in d.glob(".tmp-*"):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                n += 1
        return n

    # ------------------------------------------------------------------ active pointers
    def write_active(self, product: str, version: str, path: str | Path, sha256: str,
                     activated_at: datetime | None = None) -> ActivePointer:
        ptr = ActivePointer(version=check_name("version", version), path=str(Path(path).resolve()),
                            sha256=sha256, activated_at=activated_at or datetime.now(timezone.utc))
        atomic_write_bytes(self.product_dir(product) / ACTIVE, _dump(ptr.model_dump(mode="json")))
        return ptr

    def read_active(self, product: str) -> ActivePointer | None:
        """The product's pointer, None when it has none; :class:`ModelStoreError` when unreadable."""
        f = self.product_dir(product) / ACTIVE
        try:
            raw = f.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ModelStoreError(f"cannot read {f}: {e.strerror or e}") from None
        try:
            return ActivePointer.model_validate_json(raw)
        except ValidationError as e:
            err = e.errors()[0]
            raise ModelStoreError(f"{f} is not a valid pointer file: "
                                  f"{'.'.join(map(str, err.get('loc', ()))) or 'file'}: {err.get('msg')}") from None

    def clear_active(self, product: str) -> None:
        (self.product_dir(product) / ACTIVE).unlink(missing_ok=True)

    def products(self) -> list[str]:
        """Products that have an active pointer, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob(f"*/{ACTIVE}") if _NAME.match(p.parent.name))

    def active_pointers(self) -> dict[str, ActivePointer]:
        return {p: ptr for p in self.products() if (ptr := self.read_active(p)) is not None}

    # ------------------------------------------------------------------ thresholds
    def write_thresholds(self, thresholds: dict[str, float]) -> None:
        clean = {str(k): float(v) for k, v in sorted(thresholds.items()) if v is not None}
        atomic_write_bytes(self.root / THRESHOLDS, _dump(clean))

    def read_thresholds(self) -> dict[str, float]:
        """``{camera_id: threshold}``; empty when the file does not exist."""
        f = self.root / THRESHOLDS
        try:
            data = json.loads(f.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise ModelStoreError(f"{f} is not valid JSON: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 for v in data.values()):
            raise ModelStoreError(f"{f} must be an object of camera id -> number")
        # json reads NaN and Infinity; a threshold must be a finite number >= 0
        bad = {str(k): v for k, v in data.items() if not (math.isfinite(v) and v >= 0)}
        if bad:
            raise ModelStoreError(f"{f}: thresholds must be finite numbers >= 0, refused {bad}")
        return {str(k): float(v) for k, v in data.items()}

    # ------------------------------------------------------------------ change detection
    def _watched(self) -> Iterator[Path]:
        yield self.root / THRESHOLDS
        if self.root.is_dir():
            yield from sorted(self.root.glob(f"*/{ACTIVE}"))

    def revision(self) -> tuple:
        """A token that changes whenever a pointer or the thresholds file is replaced.

        Only ``stat`` calls (no reads): the writers always ``os.replace`` a new file, which
        changes the inode, so (inode, mtime, size) of each watched file is enough.
        """
        out = []
        for p in self._watched():
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            out.append((str(p.relative_to(self.root)), st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(out)


class StoreWatcher:
    """Tells a service, cheaply and at most every ``interval_s``, that the store changed."""

    def __init__(self, store: ModelStore, interval_s: float = 1.0, clock=None):
        import time

        self.store = store
        self.interval_s = interval_s
        self._clock = clock or time.monotonic
        self._seen: tuple | None = None
        self._next = 0.0

    def mark_seen(self, revision: tuple | None = None) -> None:
        self._seen = self.store.revision() if revision is None else revision

    def changed(self) -> bool:
        """True once per change (after a throttle of ``interval_s``)."""
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + self.interval_s
        rev = self.store.revision()
        if rev == self._seen:
            return False
        self._seen = rev
        return True


__all__ = ["ACTIVE", "THRESHOLDS", "ActivePointer", "ModelStore", "ModelStoreError", "ModelStoreSettings",
           "StoreWatcher", "atomic_write_bytes", "check_name", "file_sha256", "version_of"]
