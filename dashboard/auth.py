"""Login: argon2 check against the ``users`` table, with two layers of rate limiting.

1. Per account (in the database, :func:`storage.users.authenticate`): after 5 failures in a
   row the account is locked for 30 s, doubling per further failure up to 15 min.
2. Per browser session (here): after ``LINEWATCH_DASHBOARD_LOGIN_MAX_FAILURES`` failures
   the form refuses further attempts for a growing delay, so guessing across many
   usernames from one session is throttled too (unknown usernames have no account to lock).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import streamlit as st

from storage.users import AuthError, authenticate

from .common import log_in, writing

FAILS_KEY = "lw_login_failures"
BLOCK_KEY = "lw_login_blocked_until"


@dataclass(frozen=True)
class LoginResult:
    ok: bool
    message: str
    role: str | None = None


def session_block_remaining(now: float | None = None) -> float:
    now = time.time() if now is None else now
    return max(0.0, float(st.session_state.get(BLOCK_KEY, 0.0)) - now)


def attempt_login(username: str, password: str, max_failures: int = 5) -> LoginResult:
    username = (username or "").strip()
    remaining = session_block_remaining()
    if remaining > 0:
        return LoginResult(False, f"Too many failed logins. Try again in {int(remaining) + 1} s.")
    if not username or not password:
        return LoginResult(False, "Enter your username and password.")
    try:
        with writing() as s:
            try:
                user = authenticate(s, username, password)
                role = user.role
                name = user.username
            except AuthError as exc:
                err = exc
            else:
                err = None
    except Exception:  # noqa: BLE001 - a database problem must not show a traceback on the login page
        return LoginResult(False, "The user database cannot be reached right now.")
    if err is None:
        st.session_state.pop(FAILS_KEY, None)
        st.session_state.pop(BLOCK_KEY, None)
        log_in(name, role)
        return LoginResult(True, f"Logged in as {name} ({role}).", role)
    fails = int(st.session_state.get(FAILS_KEY, 0)) + 1
    st.session_state[FAILS_KEY] = fails
    if fails >= max_failures:
        delay = min(30 * 2 ** (fails - max_failures), 900)
        st.session_state[BLOCK_KEY] = time.time() + delay
    if err.reason == "locked":
        return LoginResult(False, "Too many failed logins for this account. Try again later.")
    return LoginResult(False, "Wrong username or password.")
