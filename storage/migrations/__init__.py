"""Alembic migrations of the linewatch schema, shipped inside the package.

Run them with ``linewatch-storage migrate`` or :func:`storage.db.init_db`.  New revision
(developers)::

    alembic -c storage/migrations/alembic.ini revision --autogenerate -m "what changed"

then review the generated file: keep it dialect-neutral (SQLite and PostgreSQL), and name
every constraint and index (the metadata's naming convention does it for you).
"""
