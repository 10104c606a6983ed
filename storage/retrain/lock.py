"""Step 1: one retraining (or registry change) per product at a time."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

from sqlalchemy import Engine, text

from detector.model_store import ModelStore

from .errors import LockBusy


@contextlib.contextmanager
def product_lock(store: ModelStore, product: str, engine: Engine | None = None) -> Iterator[None]:
    """One retraining (or registry change) per product at a time, across processes and hosts.

    A lock file ``<store>/<product>/.retrain.lock`` (``filelock``: an OS lock, released by the
    kernel when the process dies, so a crashed run never leaves it stuck) and, on PostgreSQL, a
    session advisory lock held on a connection of its own for the run's duration.
    """
    from filelock import FileLock, Timeout

    d = store.product_dir(product)
    d.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(d / ".retrain.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise LockBusy(f"another retraining of {product!r} is running (lock {d / '.retrain.lock'}); "
                       "try again when it has finished") from None
    conn = None
    held = False
    key = int.from_bytes(hashlib.sha256(f"linewatch-retrain:{product}".encode()).digest()[:8], "big", signed=True)
    try:
        if engine is not None and engine.dialect.name == "postgresql":
            conn = engine.connect()
            held = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
            conn.commit()
            if not held:
                raise LockBusy(f"another retraining of {product!r} is running (database lock held elsewhere)")
        yield
    finally:
        if conn is not None:
            # the connection goes back to the pool, so the session lock must be given back explicitly
            try:
                if held:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()
            except Exception:  # noqa: BLE001 - a broken connection: drop it, which ends the session
                conn.invalidate()
            conn.close()
        lock.release()
