"""Dashboard accounts: argon2id password hashes (argon2-cffi), roles, login rate limiting.

Roles: ``operator`` (reviews flagged parts), ``engineer`` (also changes thresholds),
``admin`` (also manages users).  :func:`role_allows` answers "may this role do that".

Rate limiting, two layers, both in the database (so across sessions and processes):

* per account (:func:`authenticate`): after ``MAX_FAILURES`` consecutive failed logins an
  account is locked for ``LOCKOUT_BASE`` seconds, doubling with each further failure up to
  ``LOCKOUT_MAX``; while locked, even the right password is refused.  A successful login
  resets the counter.
* per client address (:func:`address_blocked_for`, :func:`record_address_failure`): the same
  back-off once an address has failed ``max_failures`` times within ``ADDRESS_WINDOW``;
  covers guessing across many usernames, which have no account to lock.  A success does not
  reset it (one valid account must not buy unlimited guesses at the others).

Every refusal costs one argon2 verification (unknown user, wrong password, locked, disabled)
and raises :class:`AuthError`; the dashboard shows one message for all of them, so neither
the text nor the time of an answer tells which usernames exist.

Changing a password or disabling an account ends the user's login sessions
(:func:`storage.sessions.revoke_user_sessions`).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .models import ROLES, LoginAddressFailure, User, utcnow
from .sessions import revoke_user_sessions

MAX_FAILURES = 5
LOCKOUT_BASE = timedelta(seconds=30)
LOCKOUT_MAX = timedelta(minutes=15)
MIN_PASSWORD_LENGTH = 8
ADDRESS_WINDOW = timedelta(minutes=15)  # failures further apart than this start the count again

_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
_RANK = {"operator": 0, "engineer": 1, "admin": 2}

_hasher = PasswordHasher()  # argon2id, library defaults (salted, tuned parameters)
_DUMMY_HASH = _hasher.hash("linewatch-dummy-password")


class AuthError(Exception):
    """Login refused; ``reason`` is ``invalid`` or ``locked`` (``str(exc)`` is safe to show)."""

    def __init__(self, reason: str, message: str, retry_after: timedelta | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def role_allows(role: str, needed: str) -> bool:
    """``role_allows('engineer', 'operator') -> True``; admins may do everything."""
    return _RANK.get(role, -1) >= _RANK[needed]


def get_user(session: Session, username: str) -> User | None:
    return session.scalars(select(User).where(User.username == username)).first()


def add_user(session: Session, username: str, password: str, role: str) -> User:
    """Create an account; caller commits.  Raises ValueError on bad input or a taken name."""
    if not _USERNAME.match(username):
        raise ValueError("username: 1-100 characters, letters, digits and . _ @ - (not starting with a symbol)")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if get_user(session, username) is not None:
        raise ValueError(f"user {username!r} already exists")
    user = User(username=username, password_hash=hash_password(password), role=role, is_active=True,
                failed_logins=0, created_at=utcnow())
    session.add(user)
    session.flush()
    return user


def set_password(session: Session, username: str, password: str, keep_session_id: int | None = None) -> User:
    """New password (also unlocks); ends the user's sessions except ``keep_session_id``
    (the one the user changed their own password from)."""
    user = get_user(session, username)
    if user is None:
        raise LookupError(f"no user {username!r}")
    user.password_hash = hash_password(password)
    user.failed_logins = 0
    user.locked_until = None
    revoke_user_sessions(session, user, keep_session_id=keep_session_id)
    return user


def set_role(session: Session, username: str, role: str) -> User:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    user = get_user(session, username)
    if user is None:
        raise LookupError(f"no user {username!r}")
    user.role = role
    return user


def set_active(session: Session, username: str, active: bool) -> User:
    user = get_user(session, username)
    if user is None:
        raise LookupError(f"no user {username!r}")
    user.is_active = active
    if not active:
        revoke_user_sessions(session, user)
    return user


def remove_user(session: Session, username: str) -> None:
    """Delete the account (its feedback history keeps the username as text)."""
    user = get_user(session, username)
    if user is None:
        raise LookupError(f"no user {username!r}")
    session.delete(user)


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


def _lockout(failures: int, max_failures: int = MAX_FAILURES) -> timedelta:
    extra = max(0, failures - max_failures)
    return min(LOCKOUT_BASE * (2 ** min(extra, 20)), LOCKOUT_MAX)


def address_blocked_for(session: Session, address: str, now: datetime | None = None) -> timedelta | None:
    """How long logins from ``address`` must still wait (``None``: not blocked)."""
    now = now or utcnow()
    row = session.get(LoginAddressFailure, address)
    if row is None or row.blocked_until is None or row.blocked_until <= now:
        return None
    return row.blocked_until - now


def record_address_failure(session: Session, address: str, max_failures: int,
                           now: datetime | None = None) -> timedelta | None:
    """Count a failed login from ``address``; returns the block it now has, if any (caller commits)."""
    now = now or utcnow()
    row = session.get(LoginAddressFailure, address)
    if row is None:
        # forget addresses that have been quiet for a day (the table stays small)
        session.execute(delete(LoginAddressFailure).where(LoginAddressFailure.last_failed_at < now - timedelta(days=1)))
        row = LoginAddressFailure(address=address, failures=0, last_failed_at=now)
        session.add(row)
    elif row.last_failed_at < now - ADDRESS_WINDOW and (row.blocked_until is None or row.blocked_until <= now):
        row.failures = 0
    row.failures += 1
    row.last_failed_at = now
    if row.failures >= max_failures:
        row.blocked_until = now + _lockout(row.failures, max_failures)
    session.flush()
    return address_blocked_for(session, address, now)


def authenticate(session: Session, username: str, password: str, now: datetime | None = None) -> User:
    """Check a login; updates the counters (caller commits, also on failure).

    Returns the user, or raises :class:`AuthError`.
    """
    now = now or utcnow()
    user = get_user(session, username)
    if user is None:
        verify_password(_DUMMY_HASH, password)  # same cost as a real check
        raise AuthError("invalid", "wrong username or password")
    if user.locked_until is not None and user.locked_until > now:
        verify_password(_DUMMY_HASH, password)  # a locked account answers no faster than any other
        raise AuthError("locked", "too many failed logins; try again later", user.locked_until - now)
    ok = verify_password(user.password_hash, password)
    if not ok or not user.is_active:
        user.failed_logins = (user.failed_logins or 0) + 1
        user.last_failed_login_at = now
        if user.failed_logins >= MAX_FAILURES:
            user.locked_until = now + _lockout(user.failed_logins)
        raise AuthError("invalid", "wrong username or password")
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    user.failed_logins = 0
    user.locked_until = None
    user.last_login_at = now
    return user
