"""SQLite ``synchronous=NORMAL`` vs ``FULL`` on the writer's path: ``store_results`` batches on the local blob store.

    python -m tests.benchmarks.sqlite_sync --batches 15 --size 200 --repeats 2

Modes alternate (NORMAL, FULL, NORMAL, FULL, ...) so both see the same machine load; each run is a
fresh database in a temporary folder; the median batch time of each run is printed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import event

from storage.blobs import LocalBlobStore
from storage.db import init_db, make_engine
from storage.results import store_results
from storage.settings import StorageSettings
from tests.storage.helpers import make_result


def median_batch_s(mode: str, batches: int, size: int) -> float:
    root = Path(tempfile.mkdtemp(prefix=f"lw-sync-{mode.lower()}-"))
    engine = make_engine(settings=StorageSettings(data_dir=root))

    @event.listens_for(engine, "connect")
    def _mode(conn, _record) -> None:  # after storage.db's own pragmas
        conn.execute(f"PRAGMA synchronous={mode}")

    init_db(engine)
    blobs = LocalBlobStore(root / "blobs")
    times = []
    for b in range(batches):
        results = [make_result(b * size + i, camera=f"cam-{i % 4}", prefix=mode) for i in range(size)]
        t = time.perf_counter()
        store_results(engine, blobs, results)
        times.append(time.perf_counter() - t)
    engine.dispose()
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=15, help="batches per run (default 15)")
    p.add_argument("--size", type=int, default=200, help="results per batch, the writer's default (200)")
    p.add_argument("--repeats", type=int, default=2, help="runs per mode, alternating (default 2)")
    a = p.parse_args(argv)
    out: dict[str, list[float]] = {"NORMAL": [], "FULL": []}
    for _ in range(a.repeats):
        for mode in out:
            out[mode].append(median_batch_s(mode, a.batches, a.size))
    for mode, values in out.items():
        print(f"synchronous={mode}: median batch of {a.size} results, per run: "
              + ", ".join(f"{v * 1000:.0f} ms" for v in values))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
