"""Storage: the SQLAlchemy schema, migrations, blob store, the results writer and retention.

* :mod:`storage.settings` — ``LINEWATCH_*`` settings (database URL, data dir, blob store, retention)
* :mod:`storage.db` — engine factory (SQLite WAL / PostgreSQL psycopg 3), sessions, ``init_db()``
* :mod:`storage.models` — the tables (typed SQLAlchemy 2.0 models)
* :mod:`storage.blobs` — blob store interface: local directory (default) or database
* :mod:`storage.results` — idempotent batch insert of detector results
* :mod:`storage.feedback`, :mod:`storage.users`, :mod:`storage.thresholds` — write-side helpers
* :mod:`storage.registry` — model versions (candidate / active / retired / rejected)
* :mod:`storage.queries` — read side for the dashboard
* :mod:`storage.writer` — ``linewatch-storage writer``: results topic -> database
* :mod:`storage.retention` — ``linewatch-storage purge``
* :mod:`storage.cli` — the ``linewatch-storage`` command
"""
