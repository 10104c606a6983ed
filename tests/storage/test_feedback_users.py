"""Feedback history, per-camera thresholds with history, users (hash, roles, rate limit)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from storage import users as u
from storage.db import write_session
from storage.feedback import add_feedback, current_feedback, feedback_history
from storage.models import Feedback, Inspection, User, utcnow
from storage.results import store_results
from storage.thresholds import camera_thresholds, set_camera_threshold, threshold_history, thresholds_revision

from .helpers import make_result


def _inspection_id(db, frame_id: str) -> int:
    with db.session() as s:
        return s.scalar(select(Inspection.id).where(Inspection.frame_id == frame_id))


def test_feedback_history_is_kept_and_latest_is_current(storage_db):
    r = make_result(1, anomalous=True)
    store_results(storage_db.engine, storage_db.blobs, [r])
    iid = _inspection_id(storage_db, r.frame_id)
    t = utcnow()
    with write_session(storage_db.engine) as s:
        add_feedback(s, iid, "unsure", "olga", at=t)
    with write_session(storage_db.engine) as s:
        add_feedback(s, iid, "false_alarm", "olga", comment="dust on the lens", at=t + timedelta(seconds=5))
    with write_session(storage_db.engine) as s:
        add_feedback(s, iid, "defect_confirmed", "eve", at=t + timedelta(seconds=9))
    with storage_db.session() as s:
        hist = feedback_history(s, iid)
        assert [(f.label, f.username) for f in hist] == [
            ("unsure", "olga"), ("false_alarm", "olga"), ("defect_confirmed", "eve")]
        assert hist[1].comment == "dust on the lens"
        assert current_feedback(s, iid).label == "defect_confirmed"
        assert s.get(Inspection, iid).current_feedback == "defect_confirmed"
        assert len(s.scalars(select(Feedback)).all()) == 3  # nothing overwritten
    # a decision changed back: a new row, the mirror follows
    with write_session(storage_db.engine) as s:
        add_feedback(s, iid, "false_alarm", "eve", at=t + timedelta(seconds=20))
    with storage_db.session() as s:
        assert s.get(Inspection, iid).current_feedback == "false_alarm"
        assert len(feedback_history(s, iid)) == 4


def test_feedback_rejects_bad_input(storage_db):
    r = make_result(1, anomalous=True)
    store_results(storage_db.engine, storage_db.blobs, [r])
    iid = _inspection_id(storage_db, r.frame_id)
    with write_session(storage_db.engine) as s:
        with pytest.raises(ValueError, match="label"):
            add_feedback(s, iid, "looks_fine", "olga")
        with pytest.raises(ValueError, match="user"):
            add_feedback(s, iid, "unsure", "")
        with pytest.raises(LookupError):
            add_feedback(s, 10**9, "unsure", "olga")


def test_camera_threshold_override_and_history(storage_db):
    store_results(storage_db.engine, storage_db.blobs, [make_result(1, camera="cam-a"), make_result(2, camera="cam-b")])
    with storage_db.session() as s:
        assert camera_thresholds(s) == {"cam-a": None, "cam-b": None}
        assert thresholds_revision(s) is None
    with write_session(storage_db.engine) as s:
        set_camera_threshold(s, "cam-a", 0.7, "eng1", "too many false alarms")
    with write_session(storage_db.engine) as s:
        set_camera_threshold(s, "cam-a", 0.65, "eng2")
    with write_session(storage_db.engine) as s:
        set_camera_threshold(s, "cam-a", None, "eng1", "back to the model")
        with pytest.raises(LookupError):
            set_camera_threshold(s, "no-cam", 0.5, "eng1")
        with pytest.raises(ValueError):
            set_camera_threshold(s, "cam-b", float("nan"), "eng1")
    with write_session(storage_db.engine) as s:
        set_camera_threshold(s, "cam-b", 0.4, "eng2")
    with storage_db.session() as s:
        assert camera_thresholds(s) == {"cam-a": None, "cam-b": 0.4}
        hist = threshold_history(s, "cam-a")
        assert [(h.old_threshold, h.new_threshold, h.changed_by) for h in hist] == [
            (None, 0.7, "eng1"), (0.7, 0.65, "eng2"), (0.65, None, "eng1")]
        assert hist[0].reason == "too many false alarms" and hist[0].changed_at.tzinfo is not None
        assert thresholds_revision(s) is not None


def test_users_hash_roles_and_crud(storage_db):
    with write_session(storage_db.engine) as s:
        u.add_user(s, "olga", "correct horse", "operator")
        u.add_user(s, "eve", "correct horse", "engineer")
        with pytest.raises(ValueError, match="exists"):
            u.add_user(s, "olga", "another password", "admin")
        with pytest.raises(ValueError, match="role"):
            u.add_user(s, "mallory", "correct horse", "root")
        with pytest.raises(ValueError, match="at least"):
            u.add_user(s, "mallory", "short", "operator")
    with storage_db.session() as s:
        olga, eve = u.get_user(s, "olga"), u.get_user(s, "eve")
        assert olga.password_hash.startswith("$argon2id$")
        assert "correct horse" not in olga.password_hash
        assert olga.password_hash != eve.password_hash  # salted
        assert [x.username for x in u.list_users(s)] == ["eve", "olga"]
    assert u.role_allows("admin", "engineer") and u.role_allows("engineer", "operator")
    assert not u.role_allows("operator", "engineer") and not u.role_allows("engineer", "admin")
    with write_session(storage_db.engine) as s:
        u.remove_user(s, "eve")
        with pytest.raises(LookupError):
            u.remove_user(s, "eve")
    with storage_db.session() as s:
        assert [x.username for x in u.list_users(s)] == ["olga"]


def test_login_rate_limit(storage_db):
    with write_session(storage_db.engine) as s:
        u.add_user(s, "olga", "correct horse", "operator")
    t = utcnow()

    def login(password: str, at):
        with storage_db.session() as s:
            try:
                return u.authenticate(s, "olga", password, now=at)
            finally:
                s.commit()  # counters are kept on failure too

    assert login("correct horse", t).username == "olga"
    for k in range(u.MAX_FAILURES):
        with pytest.raises(u.AuthError) as e:
            login("wrong", t + timedelta(seconds=k))
        assert e.value.reason == "invalid"
    # locked now: even the right password is refused, with the same message for everyone
    with pytest.raises(u.AuthError) as e:
        login("correct horse", t + timedelta(seconds=10))
    assert e.value.reason == "locked" and e.value.retry_after > timedelta(0)
    # after the lockout the right password works again and resets the counter
    ok = login("correct horse", t + timedelta(seconds=10) + u.LOCKOUT_BASE)
    assert ok.failed_logins == 0 and ok.locked_until is None and ok.last_login_at is not None
    # lockouts grow with repeated failures
    base = t + timedelta(minutes=5)
    for k in range(u.MAX_FAILURES):
        with pytest.raises(u.AuthError):
            login("wrong", base)
    with storage_db.session() as s:
        first_lock = s.scalar(select(User.locked_until)) - base
    with pytest.raises(u.AuthError):
        login("wrong", base + first_lock)
    with storage_db.session() as s:
        second_lock = s.scalar(select(User.locked_until)) - (base + first_lock)
    assert second_lock == 2 * first_lock
    # unknown users and disabled users get the generic refusal
    with storage_db.session() as s:
        with pytest.raises(u.AuthError) as e:
            u.authenticate(s, "nobody", "whatever1")
        assert e.value.reason == "invalid" and str(e.value) == "wrong username or password"
    with write_session(storage_db.engine) as s:
        u.set_password(s, "olga", "new password 1")
        u.set_active(s, "olga", False)
    with pytest.raises(u.AuthError):
        login("new password 1", base + timedelta(hours=1))
