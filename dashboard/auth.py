"""Login: argon2 check against the ``users`` table, with three layers of rate limiting.

1. Per account (in the database, :func:`storage.users.authenticate`): after 5 failures in a
   row the account is locked for 30 s, doubling per further failure up to 15 min.
2. Per client address (in the database, :func:`storage.users.record_address_failure`): after
   ``LINEWATCH_DASHBOARD_LOGIN_MAX_FAILURES_PER_ADDRESS`` failures within 15 min the address
   waits the same way; covers guessing across many usernames and browser sessions.
3. Per browser session (here): after ``LINEWATCH_DASHBOARD_LOGIN_MAX_FAILURES`` failures
   the form refuses further attempts for a growing delay.

Wrong password, unknown user, locked or disabled account: one message, and the same argon2
work behind each, so the answer does not tell which usernames exist.  A success starts a
server-side session (:mod:`storage.sessions`) that the cookie carries across reloads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import streamlit as st

from storage.sessions import start_session
from storage.users import AuthError, address_blocked_for, authenticate, record_address_failure, set_password

from .common import CurrentUser, log_in, writing
from .settings import DashboardSettings

log = logging.getLogger("linewatch.dashboard")

FAILS_KEY = "lw_login_failures"
BLOCK_KEY = "lw_login_blocked_until"
REFUSED = "Wrong username or password. After repeated failures an account is locked for a few minutes."


@dataclass(frozen=True)
class LoginResult:
    ok: bool
    message: str
    role: str | None = None


def client_address(forwarded_for: Sequence[str], peer: str | None, trusted_proxy_hops: int) -> str:
    """The address to throttle: the peer, or with ``trusted_proxy_hops`` = N reverse proxies in
    front, the N-th ``X-Forwarded-For`` entry from the right (the one our outermost proxy added;
    entries further left are whatever the client claimed)."""
    if trusted_proxy_hops > 0:
        chain = [a.strip() for value in forwarded_for for a in value.split(",") if a.strip()]
        if len(chain) >= trusted_proxy_hops:
            return chain[-trusted_proxy_hops][:64]
    return (peer or "local")[:64]  # Streamlit reports loopback peers as None


def request_address(settings: DashboardSettings) -> str:
    try:
        forwarded = [v for v in st.context.headers.get_all("x-forwarded-for") if isinstance(v, str)]
        peer = st.context.ip_address
    except Exception:  # noqa: BLE001 - no browser connection (e.g. AppTest)
        forwarded, peer = [], None
    return client_address(forwarded, peer if isinstance(peer, str) else None, settings.dashboard_trusted_proxy_hops)


def session_block_remaining(now: float | None = None) -> float:
    now = time.time() if now is None else now
    return max(0.0, float(st.session_state.get(BLOCK_KEY, 0.0)) - now)


def _wait_message(seconds: float) -> str:
    return f"Too many failed logins. Try again in {int(seconds) + 1} s."


def attempt_login(username: str, password: str, settings: DashboardSettings, address: str) -> LoginResult:
    username = (username or "").strip()
    remaining = session_block_remaining()
    if remaining > 0:
        return LoginResult(False, _wait_message(remaining))
    if not username or not password:
        return LoginResult(False, "Enter your username and password.")
    started = None
    try:
        with writing() as s:
            blocked = address_blocked_for(s, address)
            if blocked is not None:
                return LoginResult(False, _wait_message(blocked.total_seconds()))
            try:
                user = authenticate(s, username, password)
            except AuthError:
                record_address_failure(s, address, settings.dashboard_login_max_failures_per_address)
            else:
                started = start_session(s, user, timedelta(hours=settings.dashboard_session_hours), address)
                name, role = user.username, user.role
    except Exception:  # noqa: BLE001 - a database problem must not show a traceback on the login page
        log.exception("login check failed")
        return LoginResult(False, "The user database cannot be reached right now.")
    if started is not None:
        st.session_state.pop(FAILS_KEY, None)
        st.session_state.pop(BLOCK_KEY, None)
        log_in(name, role, started.id, started.handoff_code)
        return LoginResult(True, f"Logged in as {name} ({role}).", role)
    fails = int(st.session_state.get(FAILS_KEY, 0)) + 1
    st.session_state[FAILS_KEY] = fails
    if fails >= settings.dashboard_login_max_failures:
        delay = min(30 * 2 ** (fails - settings.dashboard_login_max_failures), 900)
        st.session_state[BLOCK_KEY] = time.time() + delay
    return LoginResult(False, REFUSED)


def change_own_password(user: CurrentUser, current: str, new: str, repeat: str) -> str | None:
    """Change the logged-in user's password; ends their other sessions, keeps this one.
    Returns an error to show, or ``None``."""
    if new != repeat:
        return "The new passwords differ."
    try:
        with writing() as s:
            try:
                authenticate(s, user.username, current)  # counts towards the account lockout
            except AuthError:
                return "The current password is wrong (or the account is locked for a few minutes)."
            set_password(s, user.username, new, keep_session_id=user.session_id)
    except ValueError as exc:
        return str(exc)
    return None
