"""Helpers shared by the dashboard queries."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import BigInteger, Integer, cast, func
from sqlalchemy.sql.elements import ColumnElement

from storage.models import Inspection


# a spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV injection")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: str) -> str:
    """A text cell for a CSV that spreadsheets show as text: a leading ``'`` where it could start a formula.

    Apply it to text only (ids, versions, free text); numbers keep their sign.
    """
    return "'" + value if value.startswith(_FORMULA_START) else value


def as_utc(value: datetime) -> datetime:
    """Aware UTC datetime (a naive one is taken to be UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def epoch_seconds(dialect: str, column=Inspection.captured_at) -> ColumnElement:
    """Seconds since 1970 of a UTC timestamp column, as SQL for ``dialect``."""
    if dialect == "sqlite":
        # stored as naive UTC text 'YYYY-MM-DD HH:MM:SS.ffffff'; strftime('%s') reads it as UTC
        return cast(func.strftime("%s", column), Integer)
    return cast(func.floor(func.extract("epoch", column)), BigInteger)


def time_bucket(dialect: str, origin: datetime, bucket_seconds: int, column=Inspection.captured_at) -> ColumnElement:
    """Index of the ``bucket_seconds``-wide bucket (counted from ``origin``) a timestamp falls in."""
    start = int(as_utc(origin).timestamp())
    expr = (epoch_seconds(dialect, column) - start) / int(bucket_seconds)
    if dialect == "sqlite":
        return cast(expr, Integer)  # integer division in SQLite already
    return cast(func.floor(expr), BigInteger)


def dialect_of(session) -> str:
    bind = session.get_bind() if hasattr(session, "get_bind") else session
    return bind.dialect.name
