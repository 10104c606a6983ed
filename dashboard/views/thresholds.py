"""Thresholds (engineers and admins): per camera, the score distribution of normal parts vs
confirmed defects, the current threshold, and the false-alarm and miss rates a new threshold
would give on stored data, with how sure the stored normal parts let one be of the false-alarm
rate (a plain-words warning when they are too few for the target rate).  Saving records
who/when/old/new in ``camera_threshold_changes`` and sets ``cameras.threshold_override``, which
the detector services read (and reload on change)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import altair as alt
import pandas as pd
import streamlit as st

from dashboard.common import pct, read_session, require_role, storage_settings, writing
from detector.calibration import DEFAULT_CONFIDENCE, far_upper_bound, measured_far_warning
from storage.queries import live as live_q
from storage.queries import thresholds as q
from storage.thresholds import set_camera_threshold, threshold_history

user = require_role("engineer")
ss = st.session_state

st.title("Thresholds")
st.caption("A part is flagged when its score is at or above the threshold. Normal = not flagged and not "
           "marked, or marked false alarm; defect = marked defect confirmed. Unreviewed flags and "
           "“unsure” are left out.")

with read_session() as s:
    cams = live_q.cameras(s)
if not cams:
    st.info("No cameras yet.")
    st.stop()

WINDOWS = {"Last 7 days": 7, "Last 30 days": 30, "Last 90 days": 90, "All stored": None}
top = st.columns([3, 2, 2])
camera = top[0].selectbox("Camera", [c for _, c in cams], format_func=lambda c: f"{dict((c2, l) for l, c2 in cams)[c]} / {c}",
                          key="thr_camera")
window = top[1].selectbox("Data", list(WINDOWS), index=1, key="thr_window")
days = WINDOWS[window]
since = datetime.now(timezone.utc) - timedelta(days=days) if days else None

if "thr_saved" in ss:
    st.success(ss.pop("thr_saved"))

with read_session() as s:
    cur = q.camera_threshold(s, camera)
effective = cur.effective if cur else None

m = st.columns(3)
m[0].metric("Threshold in use", "n/a" if effective is None else f"{effective:.4f}",
            help="the dashboard override if set, else the model's own")
m[1].metric("Dashboard override", "none" if cur.override is None else f"{cur.override:.4f}")
m[2].metric("Model's threshold", "n/a" if cur.model_threshold is None else f"{cur.model_threshold:.4f}",
            help="the threshold on the camera's newest inspection")

new_key = f"thr_new_{camera}"
if new_key not in ss:
    ss[new_key] = float(round(effective if effective is not None else 0.5, 6))
new = top[2].number_input("New threshold", key=new_key, step=0.01, format="%.4f")

@st.cache_data(ttl=60, show_spinner=False, max_entries=64)
def _histogram(url: str, camera: str, window: str) -> q.Histogram | None:
    """The distribution changes with the data, not with the threshold being tried: kept 60 s,
    so trying thresholds only re-counts the rates."""
    days = WINDOWS[window]
    since = datetime.now(timezone.utc) - timedelta(days=days) if days else None
    with read_session() as s:
        return q.score_histogram(s, camera, bins=40, since=since)


hist = _histogram(storage_settings().url, camera, window)
with read_session() as s:
    ts = [new] if effective is None else [effective, new]
    rates = q.rates(s, camera, ts, since=since)
if hist is None:
    st.info("No labelled inspections for this camera in this window.")

if hist is not None:
    n_norm, n_def = sum(hist.normal), sum(hist.defect)
    edges = hist.edges()
    rows = []
    for i in range(hist.bins):
        mid = (edges[i] + edges[i + 1]) / 2
        rows.append({"score": mid, "lo": edges[i], "hi": edges[i + 1], "class": "normal",
                     "share": hist.normal[i] / n_norm if n_norm else 0.0, "parts": hist.normal[i]})
        rows.append({"score": mid, "lo": edges[i], "hi": edges[i + 1], "class": "confirmed defect",
                     "share": hist.defect[i] / n_def if n_def else 0.0, "parts": hist.defect[i]})
    df = pd.DataFrame(rows)
    bars = alt.Chart(df).mark_bar(opacity=0.6, binSpacing=0).encode(
        x=alt.X("lo:Q", title="anomaly score", bin="binned"),
        x2="hi:Q",
        y=alt.Y("share:Q", title="share of the class", axis=alt.Axis(format="%"), stack=None),
        color=alt.Color("class:N", scale=alt.Scale(domain=["normal", "confirmed defect"], range=["#1f77b4", "#d62728"])),
        tooltip=["class", alt.Tooltip("lo:Q", format=".3f"), alt.Tooltip("hi:Q", format=".3f"), "parts",
                 alt.Tooltip("share:Q", format=".2%")],
    )
    rules_df = pd.DataFrame(
        ([{"t": effective, "which": "in use"}] if effective is not None else []) + [{"t": new, "which": "new"}]
    )
    rules = alt.Chart(rules_df).mark_rule(strokeWidth=2).encode(
        x="t:Q", strokeDash=alt.StrokeDash("which:N", title="threshold"),
        color=alt.value("black"), tooltip=["which", alt.Tooltip("t:Q", format=".4f")],
    )
    st.altair_chart((bars + rules).properties(height=320), width="stretch")
    st.caption(f"{n_norm:,} normal parts, {n_def:,} confirmed defects · left out: "
               f"{hist.excluded_unreviewed:,} unreviewed flags, {hist.excluded_unsure:,} unsure")

TARGETS = {"0.1 %": 0.001, "0.5 %": 0.005, "1 %": 0.01, "2 %": 0.02, "5 %": 0.05}
head = st.columns([5, 2])
head[0].subheader("What a threshold would give on stored data")
target = TARGETS[head[1].selectbox("Target false-alarm rate", list(TARGETS), index=2, key="thr_target",
                                   help="the rate the stored normal parts should show a threshold keeps within")]
conf = f"{DEFAULT_CONFIDENCE:.0%}"
st.dataframe(pd.DataFrame([{
    "threshold": ("in use " if (effective is not None and i == 0) else "new ") + f"{r.threshold:.4f}",
    "false alarms": f"{r.false_alarms:,} of {r.normal:,} normal",
    "false-alarm rate": pct(r.false_alarm_rate, 2),
    f"false-alarm rate, at most ({conf} sure)": pct(far_upper_bound(r.normal, r.false_alarms), 2) if r.normal else "n/a",
    "misses": f"{r.misses:,} of {r.defects:,} defects",
    "miss rate": pct(r.miss_rate, 2),
} for i, r in enumerate(rates)]), hide_index=True, width="stretch")
for i, r in enumerate(rates):
    if (warning := measured_far_warning(r.normal, r.false_alarms, target)) is not None:
        which = "in use" if (effective is not None and i == 0) else "new"
        st.warning(f"Threshold {which} {r.threshold:.4f}: {warning}")

reason = st.text_input("Reason (optional)", key=f"thr_reason_{camera}", max_chars=500)
b = st.columns([2, 2, 4])
if b[0].button(f"Save threshold {new:.4f}", type="primary", key="thr_save"):
    with writing() as s:
        ch = set_camera_threshold(s, camera, float(new), user.username, reason or None)
    ss["thr_saved"] = (f"Saved: {camera} threshold {('model' if ch.old_threshold is None else f'{ch.old_threshold:.4f}')}"
                       f" → {new:.4f} by {user.username}. Detectors pick it up at their next reload.")
    st.rerun()
if b[1].button("Back to the model's threshold", key="thr_reset", disabled=cur.override is None):
    with writing() as s:
        set_camera_threshold(s, camera, None, user.username, reason or "reset to the model's threshold")
    ss["thr_saved"] = f"Saved: {camera} uses the model's own threshold again."
    ss.pop(new_key, None)
    st.rerun()

st.subheader("Changes")
with read_session() as s:
    changes = threshold_history(s, camera)
if changes:
    fmt = lambda v: "model" if v is None else f"{v:.4f}"  # noqa: E731
    st.dataframe(pd.DataFrame([{
        "when (UTC)": f"{c.changed_at:%Y-%m-%d %H:%M:%S}", "who": c.changed_by,
        "old": fmt(c.old_threshold), "new": fmt(c.new_threshold), "reason": c.reason or "",
    } for c in reversed(changes)]), hide_index=True, width="stretch")
else:
    st.caption("No changes yet: the camera uses the model's threshold.")
