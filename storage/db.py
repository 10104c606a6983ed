"""Engine factory, sessions, and the migration entry point.

SQLite (the embedded default) is opened in WAL mode, with foreign keys enforced, a busy
timeout and ``synchronous=FULL``: the WAL is synced at every commit.  (``NORMAL`` syncs only at
checkpoints: safe against application crashes, but a power failure can lose the last committed
transactions, and the writer commits its Kafka offsets right after the database commit, so those
results would be lost for good.  FULL costs one fsync per writer batch, which did not show
against the blob store's own sync per batch.)  SQLAlchemy, not the ``sqlite3`` module, emits ``BEGIN``, so reads
run inside real transactions; write paths use :func:`write_session`, which on SQLite
starts with ``BEGIN IMMEDIATE`` so two writers queue on the busy timeout instead of failing
on a lock upgrade.

PostgreSQL is reached with psycopg 3 (``postgresql+psycopg://``); a plain
``postgresql://`` URL is upgraded to that driver.  A schema can be selected with the URL
query ``?options=-csearch_path%3Dmyschema`` (the tests use this for isolation).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from .settings import StorageSettings

log = logging.getLogger(__name__)

_BEGIN_IMMEDIATE = "linewatch_begin_immediate"


def normalize_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` -> ``postgresql+psycopg://``; others unchanged."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str | None = None, *, settings: StorageSettings | None = None, **kwargs: Any) -> Engine:
    """Create an engine for ``url`` (default: from settings / ``LINEWATCH_DATABASE_URL``)."""
    settings = settings or StorageSettings()
    url = normalize_url(url or settings.url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, settings.sqlite_busy_timeout_ms, **kwargs)
    if parsed.get_backend_name() == "postgresql":
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(url, **kwargs)
    raise ValueError(f"unsupported database {parsed.get_backend_name()!r}: use sqlite:/// or postgresql+psycopg://")


def _sqlite_engine(url: str, busy_timeout_ms: int, **kwargs: Any) -> Engine:
    parsed = make_url(url)
    db = parsed.database
    if db and db != ":memory:" and not db.startswith("file:"):
        Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
    connect_args = dict(kwargs.pop("connect_args", {}))
    connect_args.setdefault("timeout", busy_timeout_ms / 1000.0)
    connect_args.setdefault("check_same_thread", False)
    engine = create_engine(url, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # take BEGIN away from the sqlite3 module; SQLAlchemy's "begin" hook emits it
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            if db and db != ":memory:":
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cur.execute("PRAGMA synchronous=FULL")  # see the module docstring
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get(_BEGIN_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def is_sqlite(engine_or_session: Engine | Session) -> bool:
    bind = engine_or_session.get_bind() if isinstance(engine_or_session, Session) else engine_or_session
    return bind.dialect.name == "sqlite"


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextlib.contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A session for a write transaction: commits on success, rolls back on error.

    On SQLite the transaction starts with ``BEGIN IMMEDIATE`` (takes the write lock up
    front, waiting up to the busy timeout) so a read-then-write cannot fail half-way.
    """
    bind = engine.execution_options(**{_BEGIN_IMMEDIATE: True}) if engine.dialect.name == "sqlite" else engine
    with Session(bind, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def insert_ignore(session: Session, table: Table, rows: Sequence[dict[str, Any]], conflict_cols: Sequence[str]) -> int:
    """``INSERT ... ON CONFLICT (conflict_cols) DO NOTHING`` on SQLite and PostgreSQL.

    Returns the number of rows actually inserted.
    """
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:  # pragma: no cover - make_engine refuses other dialects
        raise ValueError(f"unsupported dialect {dialect}")
    # executemany + RETURNING: SQLAlchemy batches it into multi-row INSERTs ("insertmanyvalues")
    # with a cached compiled statement; RETURNING lists only the rows really inserted
    stmt = (
        insert(table)
        .on_conflict_do_nothing(index_elements=list(conflict_cols))
        .returning(table.c[conflict_cols[0]])
    )
    return len(session.execute(stmt, list(rows)).all())


# --------------------------------------------------------------------------- migrations

def alembic_config(url: str | None = None):  # -> alembic.config.Config
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    if url:
        cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return cfg


def init_db(engine_or_url: Engine | str | None = None, *, settings: StorageSettings | None = None) -> Engine:
    """Bring the database to the newest schema (``alembic upgrade head``) and return the engine.

    Services call this at start; it is safe when several start at once (SQLite: the
    migration holds the write lock from its first statement; PostgreSQL: an advisory lock).
    """
    from alembic import command

    if isinstance(engine_or_url, Engine):
        engine = engine_or_url
    else:
        engine = make_engine(engine_or_url, settings=settings)
    cfg = alembic_config()
    if engine.dialect.name == "sqlite":
        bind = engine.execution_options(**{_BEGIN_IMMEDIATE: True})
    else:
        bind = engine
    with bind.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(7466830173)"))  # 'linewatch' migrations
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return engine


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()
