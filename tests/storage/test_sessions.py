"""Dashboard login sessions (handoff, token, expiry, revocation) and per-address throttling."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from storage import sessions as ls
from storage import users as u
from storage.db import write_session
from storage.models import LoginSession, utcnow

TTL = timedelta(hours=8)


def _login(db, username: str = "olga", now=None):
    with write_session(db.engine) as s:
        started = ls.start_session(s, u.get_user(s, username), TTL, "10.0.0.7", now=now)
    with write_session(db.engine) as s:
        token, expires = ls.take_handoff(s, started.handoff_code, now=now)
    return started, token, expires


@pytest.fixture
def accounts(storage_db):
    with write_session(storage_db.engine) as s:
        u.add_user(s, "olga", "operator-pass", "operator")
        u.add_user(s, "ada", "admin-pass-1", "admin")
    return storage_db


def test_handoff_gives_a_token_once_and_only_digests_are_stored(accounts):
    db = accounts
    now = utcnow()
    started, token, expires = _login(db, now=now)
    assert expires == now + TTL and len(token) >= 40
    with write_session(db.engine) as s:
        assert ls.take_handoff(s, started.handoff_code) is None  # spent
        row = s.get(LoginSession, started.id)
        assert row.handoff_hash is None and token not in (row.token_hash or "")
        assert row.client_address == "10.0.0.7"
        assert ls.live_session(s, token=token).id == started.id
        assert ls.live_session(s, session_id=started.id).user.username == "olga"
        assert ls.live_session(s, token=token + "x") is None
        assert ls.live_session(s, token="") is None


def test_handoff_code_expires(accounts):
    db = accounts
    then = utcnow() - ls.HANDOFF_TTL - timedelta(seconds=1)
    with write_session(db.engine) as s:
        started = ls.start_session(s, u.get_user(s, "olga"), TTL, now=then)
    with write_session(db.engine) as s:
        assert ls.take_handoff(s, started.handoff_code) is None
        assert ls.live_session(s, session_id=started.id) is not None  # the tab's own login still stands


def test_session_expires(accounts):
    db = accounts
    started, token, expires = _login(db)
    with db.session() as s:
        assert ls.live_session(s, token=token, now=expires - timedelta(seconds=1)) is not None
        assert ls.live_session(s, token=token, now=expires) is None


def test_logout_revokes_one_session(accounts):
    db = accounts
    a, token_a, _ = _login(db)
    b, token_b, _ = _login(db)
    with write_session(db.engine) as s:
        ls.revoke_session(s, token=token_a)
    with db.session() as s:
        assert ls.live_session(s, token=token_a) is None
        assert ls.live_session(s, token=token_b) is not None


def test_password_change_ends_other_sessions(accounts):
    db = accounts
    a, token_a, _ = _login(db)
    b, token_b, _ = _login(db)
    _, token_ada, _ = _login(db, "ada")
    with write_session(db.engine) as s:
        u.set_password(s, "olga", "a-new-password", keep_session_id=a.id)
    with db.session() as s:
        assert ls.live_session(s, token=token_a) is not None
        assert ls.live_session(s, token=token_b) is None
        assert ls.live_session(s, token=token_ada) is not None
    with write_session(db.engine) as s:  # an admin (or the CLI) changing it ends all of them
        u.set_password(s, "olga", "another-password")
    with db.session() as s:
        assert ls.live_session(s, token=token_a) is None


def test_disable_and_remove_end_sessions(accounts):
    db = accounts
    _, token, _ = _login(db)
    with write_session(db.engine) as s:
        u.set_active(s, "olga", False)
    with write_session(db.engine) as s:
        u.set_active(s, "olga", True)
    with db.session() as s:
        assert ls.live_session(s, token=token) is None  # enabling again does not revive it
    _login(db)
    with write_session(db.engine) as s:
        u.remove_user(s, "olga")
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(LoginSession)) == 0


def test_disabled_user_cannot_take_a_handoff(accounts):
    db = accounts
    with write_session(db.engine) as s:
        started = ls.start_session(s, u.get_user(s, "olga"), TTL)
    with write_session(db.engine) as s:
        u.get_user(s, "olga").is_active = False
    with write_session(db.engine) as s:
        assert ls.take_handoff(s, started.handoff_code) is None


def test_address_throttle_backs_off_and_forgets(accounts):
    db = accounts
    t = utcnow()
    with write_session(db.engine) as s:
        assert u.record_address_failure(s, "10.0.0.7", 3, now=t) is None
        assert u.record_address_failure(s, "10.0.0.7", 3, now=t) is None
        assert u.record_address_failure(s, "10.0.0.7", 3, now=t) == u.LOCKOUT_BASE
        assert u.record_address_failure(s, "10.0.0.7", 3, now=t) == 2 * u.LOCKOUT_BASE
        assert u.address_blocked_for(s, "10.0.0.8", now=t) is None  # other addresses are not affected
    with db.session() as s:
        assert u.address_blocked_for(s, "10.0.0.7", now=t + timedelta(seconds=10)) == timedelta(seconds=50)
        assert u.address_blocked_for(s, "10.0.0.7", now=t + timedelta(seconds=61)) is None
    later = t + u.ADDRESS_WINDOW + timedelta(minutes=1)  # quiet for a window: the count starts again
    with write_session(db.engine) as s:
        assert u.record_address_failure(s, "10.0.0.7", 3, now=later) is None


def test_every_refusal_costs_one_hash_check(accounts, monkeypatch):
    """Unknown user, wrong password, locked, disabled: the same work, so timing tells nothing."""
    db = accounts
    calls = []
    real = u.verify_password
    monkeypatch.setattr(u, "verify_password", lambda h, p: calls.append(1) or real(h, p))

    def refusal(username: str, password: str) -> str:
        calls.clear()
        with write_session(db.engine) as s:
            with pytest.raises(u.AuthError) as exc:
                u.authenticate(s, username, password)
        assert len(calls) == 1, username
        return exc.value.reason

    assert refusal("nobody", "x-password") == "invalid"
    for _ in range(u.MAX_FAILURES):
        assert refusal("olga", "wrong-password") == "invalid"
    assert refusal("olga", "operator-pass") == "locked"
    with write_session(db.engine) as s:
        u.set_active(s, "ada", False)
    assert refusal("ada", "admin-pass-1") == "invalid"
