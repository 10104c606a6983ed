"""Read-side queries for the dashboard.

Every function here is one (or a handful of) aggregate or ``LIMIT``-ed SQL statement(s)
served by an index on ``inspections`` (see migration 0002): nothing loads a whole table into
Python or pandas, so the pages stay fast as the table grows (the benchmark in
``tests/benchmarks/dashboard_bench.py`` checks 1,000,000 rows on SQLite).

Modules: :mod:`.live` (rates per camera and over time, model versions), :mod:`.review`
(the flagged-part queue and decisions), :mod:`.history` (filtered, paginated search and CSV
export), :mod:`.thresholds` (score distributions and the error rates a threshold gives).
All functions take a :class:`sqlalchemy.orm.Session` (or a Connection) and work on SQLite and
PostgreSQL.
"""

from __future__ import annotations

from .common import time_bucket  # noqa: F401
