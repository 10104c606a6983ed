"""Dashboard accounts: argon2id password hashes (argon2-cffi), roles, login rate limiting.

Roles: ``operator`` (reviews flagged parts), ``engineer`` (also changes thresholds),
``admin`` (also manages users).  :func:`role_allows` answers "may this role do that".

Rate limiting (:func:`authenticate`): after ``MAX_FAILURES`` consecutive failed logins an
account is locked for ``LOCKOUT_BASE`` seconds, doubling with each further failure up to
``LOCKOUT_MAX``; while locked, even the right password is refused (without checking it).  A
successful login resets the counter.  Unknown users cost the same hash verification as
known ones, and every refusal raises the same :class:`AuthError` message except "locked",
so the form does not reveal which usernames exist.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import ROLES, User, utcnow

MAX_FAILURES = 5
LOCKOUT_BASE = timedelta(seconds=30)
LOCKOUT_MAX = timedelta(minutes=15)
MIN_PASSWORD_LENGTH = 8

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


def set_password(session: Session, username: str, password: str) -> User:
    user = get_user(session, username)
    if user is None:
        raise LookupError(f"no user {username!r}")
    user.password_hash = hash_password(password)
    user.failed_logins = 0
    user.locked_until = None
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
    return user


def remove_user(session: Session, username: str) -> None:
    """Delete the account (its feedback history keeps the username as text)."""
    user = get_user(session, username)
    if user is None:
        raise LookupError(f"no user {username!r}")
    session.delete(user)


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


def _lockout(failures: int) -> timedelta:
    extra = max(0, failures - MAX_FAILURES)
    return min(LOCKOUT_BASE * (2 ** min(extra, 20)), LOCKOUT_MAX)


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
