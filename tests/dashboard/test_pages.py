"""Streamlit AppTest tests of each page's logic (in-process, no browser), SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from dashboard.auth import REFUSED
from storage.db import make_engine, write_session
from storage.models import Camera, CameraThresholdChange, Feedback, Inspection, User
from storage.sessions import start_session
from storage.users import MAX_FAILURES, get_user

from .seed import PASSWORDS

DASH = Path(__file__).resolve().parents[2] / "dashboard"
TIMEOUT = 60


def logged_in(user: str, role: str) -> dict:
    """The session state of a tab where ``user`` logged in (a real session row)."""
    engine = make_engine()  # the database the ``seeded`` fixture points the environment at
    try:
        with write_session(engine) as s:
            started = start_session(s, get_user(s, user), timedelta(hours=1))
    finally:
        engine.dispose()
    return {"username": user, "role": role, "session_id": started.id}


def page(name: str, user: str | None = None, role: str | None = None) -> AppTest:
    at = AppTest.from_file(str(DASH / "views" / f"{name}.py"), default_timeout=TIMEOUT)
    if user:
        at.session_state["lw_user"] = logged_in(user, role)
    return at


def app(user: str | None = None, role: str | None = None) -> AppTest:
    at = AppTest.from_file(str(DASH / "app.py"), default_timeout=TIMEOUT)
    if user:
        at.session_state["lw_user"] = logged_in(user, role)
    return at


def texts(at: AppTest) -> str:
    parts = [e.value for e in at.markdown] + [e.value for e in at.title] + [e.value for e in at.caption]
    parts += [str(e.value) for e in at.error] + [str(e.value) for e in at.warning] + [str(e.value) for e in at.info]
    parts += [str(e.value) for e in at.success]
    return "\n".join(str(p) for p in parts)


def login(at: AppTest, username: str, password: str) -> AppTest:
    at.text_input(key="login_username").input(username)
    at.text_input(key="login_password").input(password)
    at.button[0].click()
    return at.run()


# ----------------------------------------------------------------------------- access

def test_visitor_sees_only_login(seeded):
    at = app().run()
    assert not at.exception
    assert [t.value for t in at.title] == ["linewatch"]
    assert at.text_input(key="login_username") is not None
    assert len(at.metric) == 0 and len(at.dataframe) == 0
    assert "Parts inspected" not in texts(at)


def test_login_wrong_then_right(seeded):
    db, _ = seeded
    at = login(app().run(), "olga", "not-the-password")
    assert "Wrong username or password" in texts(at)
    assert "lw_user" not in at.session_state
    at = login(at, "olga", PASSWORDS["olga"])
    assert not at.exception
    state = at.session_state["lw_user"]
    assert (state["username"], state["role"]) == ("olga", "operator") and state["session_id"]
    assert "Live" in [t.value for t in at.title]
    with db.session() as s:
        assert s.scalars(select(User).where(User.username == "olga")).one().failed_logins == 0


def test_login_rate_limited(seeded):
    db, _ = seeded
    at = app().run()
    for _ in range(MAX_FAILURES):
        at = login(at, "erik", "wrong-password!")
    # both the account and this browser session are now locked: even the right password is refused
    at = login(at, "erik", PASSWORDS["erik"])
    assert "lw_user" not in at.session_state
    assert "Too many failed logins" in texts(at)
    with db.session() as s:
        u = s.scalars(select(User).where(User.username == "erik")).one()
        assert u.failed_logins >= MAX_FAILURES and u.locked_until is not None
    # a new browser session still meets the account lock, told apart from nothing else
    at2 = login(app().run(), "erik", PASSWORDS["erik"])
    assert "lw_user" not in at2.session_state
    assert REFUSED in texts(at2)
    assert REFUSED in texts(login(app().run(), "nobody", "some-password"))


def test_session_throttle_for_unknown_users(seeded, monkeypatch):
    monkeypatch.setenv("LINEWATCH_DASHBOARD_LOGIN_MAX_FAILURES", "3")
    at = app().run()
    for i in range(3):
        at = login(at, f"nobody{i}", "whatever-123")
    at = login(at, "olga", PASSWORDS["olga"])  # right password, but this session must wait
    assert "lw_user" not in at.session_state
    assert "Try again in" in texts(at)


def test_roles_decide_pages(seeded):
    op = app("olga", "operator").run()
    assert not op.exception
    # the thresholds page is not registered for an operator, and refuses when run directly
    th = page("thresholds", "olga", "operator").run()
    assert "for engineers" in texts(th) and len(th.metric) == 0
    assert page("users", "erik", "engineer").run().error
    eng = page("thresholds", "erik", "engineer").run()
    assert not eng.exception and not eng.error
    assert page("users", "ada", "admin").run().dataframe


def test_removed_user_is_logged_out(seeded):
    db, _ = seeded
    at = page("live", "olga", "operator")
    with db.session() as s:
        s.delete(s.scalars(select(User).where(User.username == "olga")).one())
        s.commit()
    at = at.run()
    assert "Please log in" in texts(at) and len(at.metric) == 0


# ----------------------------------------------------------------------------- pages

def test_live_page(seeded):
    at = page("live", "olga", "operator").run()
    assert not at.exception
    m = {x.label: x.value for x in at.metric}
    assert m["Parts inspected"] == "160"
    assert m["Anomaly rate"] == "10.00 %"
    assert m["Consumer lag"] == "n/a"
    assert m["Model version"] == "ear-fader-v3"
    per_line = at.dataframe[0].value
    assert list(per_line["line"]) == ["line-a", "line-b"] and list(per_line["inspected"]) == [80, 80]
    assert list(per_line["anomaly rate"]) == ["10.00 %", "10.00 %"]
    df = at.dataframe[1].value
    assert set(df["camera"]) == {"cam-a1", "cam-a2", "cam-b1", "cam-b2"}
    assert list(df["usual rate"]) == ["5.00 %"] * 4
    at.selectbox(key="live_line").select("line-b").run()
    assert {x.label: x.value for x in at.metric}["Parts inspected"] == "80"
    at.selectbox(key="live_window").select("Last 15 minutes").run()
    assert int({x.label: x.value for x in at.metric}["Parts inspected"]) < 80


@contextlib.contextmanager
def _metrics_endpoint(monkeypatch, body: bytes):
    """A real HTTP server answering /metrics with ``body``, named by LINEWATCH_DETECTOR_METRICS_URL."""
    import http.server
    import threading

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("LINEWATCH_DETECTOR_METRICS_URL", f"http://127.0.0.1:{srv.server_port}/metrics")
        yield
    finally:
        srv.shutdown()


def test_live_consumer_lag_from_metrics_url(seeded, monkeypatch, tmp_path):
    body = (b"# TYPE linewatch_detector_consumer_lag gauge\n"
            b'linewatch_detector_consumer_lag{partition="0"} 12\n'
            b'linewatch_detector_consumer_lag{partition="1"} 30\n')
    with _metrics_endpoint(monkeypatch, body):
        at = page("live", "olga", "operator").run()
        assert {x.label: x.value for x in at.metric}["Consumer lag"] == "42 msgs"


def test_live_drift_from_metrics_url(seeded, monkeypatch):
    """The detector service's drift gauges: a warning for the drifting camera, a column, a chart."""
    lab = 'camera="{c}",model_version="v1"'
    lines = ["# TYPE linewatch_detector_drift_score_psi gauge",
             f"linewatch_detector_drift_score_psi{{{lab.format(c='cam-a1')}}} 3.62",
             f"linewatch_detector_drift_score_psi{{{lab.format(c='cam-a2')}}} 0.04",
             "# TYPE linewatch_detector_drift_image_shift gauge",
             f'linewatch_detector_drift_image_shift{{{lab.format(c="cam-a1")},stat="sharpness"}} -75.9',
             f'linewatch_detector_drift_image_shift{{{lab.format(c="cam-a2")},stat="sharpness"}} 0.3',
             "# TYPE linewatch_detector_drift_active gauge",
             f"linewatch_detector_drift_active{{{lab.format(c='cam-a1')}}} 1",
             f"linewatch_detector_drift_active{{{lab.format(c='cam-a2')}}} 0"]
    with _metrics_endpoint(monkeypatch, ("\n".join(lines) + "\n").encode()):
        at = page("live", "olga", "operator").run()
    assert not at.exception
    warnings = [str(w.value) for w in at.warning]
    # the camera id and model version come from the camera side: Markdown-escaped, shown literally
    assert warnings == ["Camera cam\\-a1 drifts from what model v1 was calibrated on: DRIFTING (score PSI 3.62, "
                        "sharpness -75.9 std). Check the lens, the lighting and the camera's position."]
    cams = at.dataframe[-1].value
    drift = dict(zip(cams["camera"], cams["drift"]))
    assert drift["cam-a1"].startswith("DRIFTING") and drift["cam-a2"] == "ok (score PSI 0.04, sharpness +0.3 std)"
    assert drift["cam-b1"] == "n/a"  # not in the detector's metrics
    assert at.session_state["live_drift_history"]


def test_review_mark_false_alarm_next_item_and_change(seeded):
    db, sd = seeded
    at = page("review", "olga", "operator").run()
    assert not at.exception
    assert f"Part** {sd.newest_flagged_part}" in texts(at)
    assert len(at.image) >= 2  # overlay + colour bar
    first = sd.flagged_ids[0]
    at.text_input(key=f"review_comment_{first}").input("reflection on the cap")
    at.button(key=f"review_false_alarm_{first}").click().run()
    assert not at.exception
    # next item at once
    assert at.button(key=f"review_false_alarm_{sd.flagged_ids[1]}") is not None
    with db.session() as s:
        fb = s.scalars(select(Feedback).where(Feedback.inspection_id == first)).all()
        assert [(f.label, f.username, f.comment) for f in fb] == [("false_alarm", "olga", "reflection on the cap")]
        assert fb[0].created_at is not None
        assert s.get(Inspection, first).current_feedback == "false_alarm"
    # skip, then "Newest" comes back to the top
    at.button(key=f"review_skip_{sd.flagged_ids[1]}").click().run()
    assert at.button(key=f"review_unsure_{sd.flagged_ids[2]}") is not None
    at.button(key="review_newest").click().run()
    assert at.button(key=f"review_unsure_{sd.flagged_ids[1]}") is not None
    # change the decision on the first one from the "All flagged" queue
    at.radio(key="review_mode").set_value("flagged").run()
    assert at.button(key=f"review_defect_confirmed_{first}") is not None
    assert "False alarm" in texts(at) or any("False alarm" in str(d.value) for d in at.dataframe)
    at.button(key=f"review_defect_confirmed_{first}").click().run()
    with db.session() as s:
        labels = [f.label for f in s.scalars(select(Feedback).where(Feedback.inspection_id == first)
                                             .order_by(Feedback.id))]
        assert labels == ["false_alarm", "defect_confirmed"]
        assert s.get(Inspection, first).current_feedback == "defect_confirmed"


def test_review_overlay_controls_and_empty_queue(seeded):
    db, sd = seeded
    at = page("review", "olga", "operator").run()
    at.selectbox(key="review_colormap").select("inferno")
    at.slider(key="review_alpha").set_value(0.8)
    at.toggle(key="review_show_heatmap").set_value(False).run()
    assert not at.exception
    assert len(at.image) == 1  # the frame alone, no colour bar
    at.multiselect(key="review_cameras").select("cam-a1").run()
    assert "4 in the" in texts(at)
    for iid in [i for i in sd.flagged_ids]:
        btn = [b for b in at.button if b.key == f"review_unsure_{iid}"]
        if btn:
            btn[0].click().run()
    assert "Nothing to review" in texts(at) or "End of the queue" in texts(at)


def test_history_page(seeded):
    db, sd = seeded
    at = page("history", "olga", "operator").run()
    assert not at.exception
    assert "320 inspections match" in texts(at)
    assert len(at.dataframe[0].value) == 50
    at.selectbox(key="history_verdict").select("flagged").run()
    assert "24 inspections match" in texts(at)
    at.selectbox(key="history_feedback").select("none").run()
    assert "16 inspections match" in texts(at)
    at.multiselect(key="history_lines").select("line-a").run()
    assert "8 inspections match" in texts(at)
    df = at.dataframe[0].value
    assert set(df["line"]) == {"line-a"} and set(df["verdict"]) == {"flagged"}
    at.selectbox(key="history_verdict").select("all")
    at.selectbox(key="history_feedback").select("all")
    at.selectbox(key="history_page_size").select(25).run()
    assert "page 1 of 7" in texts(at)
    at.number_input(key="history_page").set_value(7).run()
    assert len(at.dataframe[0].value) == 160 - 6 * 25


def test_thresholds_page_save_and_reset(seeded):
    db, _ = seeded
    at = page("thresholds", "erik", "engineer").run()
    assert not at.exception
    m = {x.label: x.value for x in at.metric}
    assert m["Threshold in use"] == "0.5000" and m["Dashboard override"] == "none"
    rates = at.dataframe[0].value
    assert list(rates["misses"]) == ["0 of 2 defects", "0 of 2 defects"]
    # a few dozen normal parts cannot show a 1 % false-alarm rate: said in plain words, with how many would
    normal = int(rates["false alarms"][0].split(" of ")[1].split()[0])
    assert f"Threshold in use 0.5000: Only {normal} normal parts: too few to show a false-alarm rate under 1%" \
        in texts(at) and "299 normal parts would be enough" in texts(at)
    at.selectbox(key="thr_target").set_value("5 %").run()
    assert "too few to show" not in texts(at)  # 0 false alarms among them bound the rate under 5 % at 95 %
    at.number_input(key="thr_new_cam-a1").set_value(0.85).run()
    rates = at.dataframe[0].value
    assert list(rates["miss rate"])[1] == "100.00 %"
    at.text_input(key="thr_reason_cam-a1").input("too many flags")
    at.button(key="thr_save").click().run()
    assert not at.exception
    assert "Saved: cam-a1 threshold model → 0.8500 by erik" in texts(at)
    with db.session() as s:
        assert s.get(Camera, "cam-a1").threshold_override == pytest.approx(0.85)
        ch = s.scalars(select(CameraThresholdChange)).one()
        assert (ch.camera_id, ch.old_threshold, ch.new_threshold, ch.changed_by, ch.reason) == (
            "cam-a1", None, pytest.approx(0.85), "erik", "too many flags")
    assert {x.label: x.value for x in at.metric}["Threshold in use"] == "0.8500"
    at.button(key="thr_reset").click().run()
    with db.session() as s:
        assert s.get(Camera, "cam-a1").threshold_override is None
        assert len(s.scalars(select(CameraThresholdChange)).all()) == 2
    assert len(at.dataframe[-1].value) == 2  # the change history


def test_users_page_add_user(seeded):
    db, _ = seeded
    at = page("users", "ada", "admin").run()
    assert set(at.dataframe[0].value["username"]) == {"ada", "erik", "olga"}
    at.text_input[0].input("nina")
    at.text_input[1].input("nina-password-1")
    at.selectbox[0].select("engineer")
    at.button[0].click().run()
    assert not at.exception
    with db.session() as s:
        assert s.scalars(select(User).where(User.username == "nina")).one().role == "engineer"


def test_models_page_versions_report_and_rollback(seeded, tmp_path, monkeypatch):
    import cv2
    import numpy as np
    from zoneinfo import ZoneInfo

    from storage.db import write_session
    from storage.models import ModelVersion
    from storage.registry import promote, register_candidate

    db, _ = seeded
    monkeypatch.setenv("LINEWATCH_PLANT_TIMEZONE", "Asia/Tokyo")
    store = tmp_path / "models" / "flange"
    store.mkdir(parents=True)
    for v in ("v1", "v2"):
        (store / f"{v}.ckpt").write_bytes(v.encode())
    cv2.imwrite(str(store / "v2.scores.png"), np.full((40, 80, 3), 200, np.uint8))
    (store / "v2.report.md").write_text("# Retraining report: flange v2\n\n**Decision: PROMOTED** — not worse\n\n"
                                        "![score histograms](v2.scores.png)\n")
    with write_session(db.engine) as s:
        v1 = register_candidate(s, "flange", "v1", store / "v1.ckpt", created_by="first-model", threshold=0.5)
        promote(s, v1, "first-model", "registered")
    with write_session(db.engine) as s:
        v2 = register_candidate(s, "flange", "v2", store / "v2.ckpt", created_by="retrain", threshold=0.61,
                                report_path=store / "v2.report.md", metrics={
                                    "image_auroc": 0.97, "false_alarm_rate": 0.01, "detection_rate": 1.0})
        promote(s, v2, "retrain", "not worse than the active model")

    assert "for engineers" in texts(page("models", "olga", "operator").run())
    at = page("models", "erik", "engineer").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["version"]) == ["v2", "v1"] and list(table["status"]) == ["active", "retired"]
    assert list(table["promoted by"]) == ["retrain", "first-model"] and list(table["detection rate"])[0] == 1.0
    with db.session() as s:
        promoted = s.query(ModelVersion).filter_by(version="v2").one().promoted_at
    assert list(table["promoted"])[0] == f"{promoted.astimezone(ZoneInfo('Asia/Tokyo')):%Y-%m-%d %H:%M}"
    assert "Decision: PROMOTED" in texts(at) and "Times in JST" in texts(at)

    at.text_input(key="models_reason_flange").input("v2 misses scratches on the night shift").run()
    at.button(key="models_rollback").click().run()
    assert not at.exception
    assert "Rolled back flange: v1 is active again (by erik)" in texts(at)
    with db.session() as s:
        status = {mv.version: (mv.status, mv.promoted_by) for mv in s.query(ModelVersion)}
    assert status == {"v1": ("active", "erik"), "v2": ("retired", "retrain")}
    assert json.loads((store / "active.json").read_text())["version"] == "v1"  # the detectors' pointer follows


def test_a_review_decision_checks_the_user_when_it_runs(seeded):
    """The tab was opened while olga was active; she is disabled, then clicks a decision: nothing is stored
    (the decision runs in a widget callback, before the page script's own check)."""
    from storage.users import set_active

    db, sd = seeded
    at = page("review", "olga", "operator").run()
    first = sd.flagged_ids[0]
    assert at.button(key=f"review_false_alarm_{first}") is not None
    with db.session() as s:
        set_active(s, "olga", False)
        s.commit()
    at.button(key=f"review_false_alarm_{first}").click().run()
    assert not at.exception
    with db.session() as s:
        assert s.scalars(select(Feedback).where(Feedback.inspection_id == first)).first() is None
        assert s.get(Inspection, first).current_feedback is None
    assert "Please log in" in texts(at)


def test_camera_sourced_values_are_plain_text_on_the_review_page(seeded):
    """A model version (free text from a producer) with a link and emphasis is shown, not rendered."""
    from datetime import datetime, timedelta, timezone

    from dashboard.common import WORD_JOINER
    from storage.results import store_results
    from tests.storage.helpers import make_result

    db, _ = seeded
    evil = "[phish](http://evil.example) **b** www.evil.example"
    r = make_result(1, camera="cam__x__", anomalous=True, model_version=evil,
                    captured_at=datetime.now(timezone.utc) + timedelta(minutes=1), prefix="plain")
    store_results(db.engine, db.blobs, [r])
    at = page("review", "olga", "operator").run()
    assert not at.exception
    body = next(m.value for m in at.markdown if "**Model**" in m.value)
    assert "[phish](" not in body and "**b**" not in body and "**Camera** cam__x__" not in body
    assert r"\[phish\]\(http\:\/\/evil\.example\)" in body.replace(WORD_JOINER, "") and r"cam\_\_x\_\_" in body
