"""Dashboard login sessions: expiring, revocable, stored server-side.

A login creates a ``login_sessions`` row and a one-time *handoff code* (valid for
:data:`HANDOFF_TTL`).  The browser exchanges that code, once, over plain HTTP for the
session *token*, which the server puts in an HttpOnly cookie; so the long-lived token never
passes through page JavaScript.  Only sha256 digests of code and token are stored: a copy of
the database does not let anyone log in.  A session ends when it expires, when it is revoked
(logout; the user's password changed or the user was disabled: :func:`revoke_user_sessions`,
called from :mod:`storage.users`), or when the user is removed (``ON DELETE CASCADE``).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from .models import LoginSession, User, utcnow

HANDOFF_TTL = timedelta(seconds=60)
# revoked or expired rows are kept this long (who was logged in from where), then deleted
KEEP_ENDED = timedelta(days=7)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class StartedSession:
    id: int
    handoff_code: str


def start_session(session: Session, user: User, ttl: timedelta, address: str | None = None,
                  now: datetime | None = None) -> StartedSession:
    """A new session for ``user`` (caller commits); also deletes long-ended ones."""
    now = now or utcnow()
    session.execute(delete(LoginSession).where(or_(LoginSession.expires_at < now - KEEP_ENDED,
                                                   LoginSession.revoked_at < now - KEEP_ENDED)))
    code = secrets.token_urlsafe(32)
    row = LoginSession(user_id=user.id, handoff_hash=_digest(code), client_address=address,
                       created_at=now, expires_at=now + ttl)
    session.add(row)
    session.flush()
    return StartedSession(row.id, code)


def take_handoff(session: Session, code: str, now: datetime | None = None) -> tuple[str, datetime] | None:
    """Exchange a handoff code for ``(token, expires_at)``; works once, within :data:`HANDOFF_TTL`
    of the login, for a live session (caller commits, also on ``None``: the code is spent)."""
    now = now or utcnow()
    if not code:
        return None
    row = session.scalars(select(LoginSession).where(LoginSession.handoff_hash == _digest(code))).first()
    if row is None:
        return None
    row.handoff_hash = None
    if row.token_hash is not None or row.created_at + HANDOFF_TTL < now or not _live(row, now):
        return None
    token = secrets.token_urlsafe(32)
    row.token_hash = _digest(token)
    return token, row.expires_at


def _live(row: LoginSession, now: datetime) -> bool:
    return row.revoked_at is None and row.expires_at > now and row.user.is_active


def live_session(session: Session, *, session_id: int | None = None, token: str | None = None,
                 now: datetime | None = None) -> LoginSession | None:
    """The session by id or by cookie token if it is live (not expired, not revoked, user active)."""
    now = now or utcnow()
    if session_id is not None:
        row = session.get(LoginSession, session_id)
    elif token:
        row = session.scalars(select(LoginSession).where(LoginSession.token_hash == _digest(token))).first()
    else:
        return None
    return row if row is not None and _live(row, now) else None


def revoke_session(session: Session, *, session_id: int | None = None, token: str | None = None,
                   now: datetime | None = None) -> None:
    """End one session (logout); caller commits."""
    if session_id is None and not token:
        return
    where = LoginSession.id == session_id if session_id is not None else LoginSession.token_hash == _digest(token)
    session.execute(update(LoginSession).where(where, LoginSession.revoked_at.is_(None))
                    .values(revoked_at=now or utcnow()))


def revoke_user_sessions(session: Session, user: User, keep_session_id: int | None = None,
                         now: datetime | None = None) -> int:
    """End every session of ``user`` except ``keep_session_id``; returns how many (caller commits)."""
    stmt = update(LoginSession).where(LoginSession.user_id == user.id, LoginSession.revoked_at.is_(None))
    if keep_session_id is not None:
        stmt = stmt.where(LoginSession.id != keep_session_id)
    return session.execute(stmt.values(revoked_at=now or utcnow())).rowcount or 0
