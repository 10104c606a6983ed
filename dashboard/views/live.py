"""Live: anomaly rate per line and camera over a window, parts per minute, consumer lag, model
version, camera drift (from the detector service's metrics: a warning per drifting camera, a
column in the camera table, and a chart of the drift measures since the page was opened); the
numbers and charts refresh every few seconds in a fragment (no page reload)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import altair as alt
import pandas as pd
import streamlit as st

from dashboard.common import dashboard_settings, md_text, pct, read_session, require_role
from dashboard.drift import parse_drift
from dashboard.lag import fetch_consumer_lag, fetch_metrics
from dashboard.live_logic import WINDOWS, bucket_seconds, camera_rows, overall_rate, window_bounds
from storage.queries import live as q

require_role("operator")
cfg = dashboard_settings()

st.title("Live")
top = st.columns([2, 2, 3])
window = top[0].selectbox("Window", list(WINDOWS), index=1, key="live_window")
with read_session() as s:
    all_lines = q.lines(s)
line_choice = top[1].selectbox("Line", ["All lines", *all_lines], key="live_line")


def _drift_history(drift: dict, now: datetime) -> None:
    """A chart of each camera's drift measures since this page was opened (Prometheus keeps the
    long history; the alert rules are in deploy/prometheus/)."""
    hist = st.session_state.setdefault("live_drift_history", [])
    for d in drift.values():
        worst = d.worst_shift
        hist.append({"time": now, "camera": d.camera, "measure": "image shift (|std|)",
                     "value": abs(worst[1]) if worst else None})
        if d.psi is not None:
            hist.append({"time": now, "camera": d.camera, "measure": "score PSI", "value": d.psi})
    del hist[:-4000]
    if not hist:
        return
    with st.expander("Drift since this page was opened", expanded=any(d.active for d in drift.values())):
        chart = alt.Chart(pd.DataFrame(hist)).mark_line(point=True).encode(
            x=alt.X("time:T", title=None), y=alt.Y("value:Q", title=None), color="camera:N",
            tooltip=["camera", "measure", alt.Tooltip("value:Q", format=".2f"), alt.Tooltip("time:T", format="%H:%M:%S")],
        ).properties(height=160).facet(row=alt.Row("measure:N", title=None))
        st.altair_chart(chart)
        st.caption("Alert limits: score PSI 0.5, image shift 4 std, held 2 minutes (detector/drift.py).")


@st.fragment(run_every=timedelta(seconds=cfg.dashboard_refresh_s))
def live_panel() -> None:
    now = datetime.now(timezone.utc)
    since, until = window_bounds(window, now, cfg.shift_hours())
    minutes = max((until - since).total_seconds() / 60.0, 1e-9)
    usual_since = since - timedelta(days=cfg.dashboard_usual_days)
    bucket = bucket_seconds(since, until)
    with read_session() as s:
        counts = q.camera_counts(s, since)
        usual = q.camera_counts(s, usual_since, since)
        series = q.rate_series(s, since, until, bucket)
        versions = q.latest_model_versions(s)
    if line_choice != "All lines":
        counts = [c for c in counts if c.line_id == line_choice]
        usual = [c for c in usual if c.line_id == line_choice]
        series = [p for p in series if p.line_id == line_choice]
    metrics_text = fetch_metrics(cfg.detector_metrics_url)
    lag = fetch_consumer_lag(None, body=metrics_text) if metrics_text is not None else None
    drift = parse_drift(metrics_text) if metrics_text is not None else {}
    rows = camera_rows(counts, usual, minutes, versions)
    shown_versions = sorted({r.model_version for r in rows if r.model_version})

    inspected = sum(c.inspected for c in counts)
    rate, usual_rate = overall_rate(counts), overall_rate(usual)
    m = st.columns([1, 1, 1.2, 1, 1.6])
    m[0].metric("Parts inspected", f"{inspected:,}", help=f"captured since {since:%Y-%m-%d %H:%M} UTC")
    m[1].metric("Parts / minute", f"{inspected / minutes:,.1f}")
    delta = None if rate is None or usual_rate is None else f"{100 * (rate - usual_rate):+.2f} pp vs usual"
    m[2].metric("Anomaly rate", pct(rate, 2), delta=delta, delta_color="inverse",
                help=f"usual = the {cfg.dashboard_usual_days:g} days before the window")
    m[3].metric("Consumer lag", "n/a" if lag is None else f"{lag:,.0f} msgs",
                help="detector service's Kafka consumer lag (LINEWATCH_DETECTOR_METRICS_URL)")
    m[4].metric("Model version", (shown_versions[-1] + (f" +{len(shown_versions) - 1}" if len(shown_versions) > 1 else ""))
                if shown_versions else "n/a", help="; ".join(shown_versions) or None)
    for d in drift.values():
        if d.active:
            st.warning(f"Camera {md_text(d.camera)} drifts from what model {md_text(d.model_version)} was calibrated on: "
                       f"{d.describe()}. Check the lens, the lighting and the camera's position.")
    _drift_history(drift, now)

    if not rows:
        st.info("No inspections in this window.")
    else:
        left, right = st.columns([3, 2])
        with left:
            st.subheader("Anomaly rate over time")
            if series:
                df = pd.DataFrame({
                    "time": [p.bucket_start for p in series],
                    "camera": [f"{p.line_id} / {p.camera_id}" for p in series],
                    "rate": [p.rate for p in series],
                    "inspected": [p.inspected for p in series],
                    "flagged": [p.flagged for p in series],
                })
                chart = alt.Chart(df).mark_line(point=alt.OverlayMarkDef(size=18)).encode(
                    x=alt.X("time:T", title=None, axis=alt.Axis(format="%H:%M")),
                    y=alt.Y("rate:Q", title="anomaly rate", axis=alt.Axis(format="%")),
                    color=alt.Color("camera:N", title="camera"),
                    tooltip=["camera", alt.Tooltip("time:T", format="%H:%M:%S"),
                             alt.Tooltip("rate:Q", format=".2%"), "inspected", "flagged"],
                ).properties(height=320)
                st.altair_chart(chart, width="stretch")
            else:
                st.caption("no data in this window")
        with right:
            st.subheader("Now vs usual")
            bars = pd.DataFrame(
                [{"camera": f"{r.line} / {r.camera}", "period": "this window", "rate": r.rate or 0.0} for r in rows]
                + [{"camera": f"{r.line} / {r.camera}", "period": "usual", "rate": r.usual_rate or 0.0}
                   for r in rows]
            )
            chart = alt.Chart(bars).mark_bar().encode(
                y=alt.Y("camera:N", title=None),
                x=alt.X("rate:Q", title="anomaly rate", axis=alt.Axis(format="%")),
                yOffset="period:N",
                color=alt.Color("period:N", title=None,
                                scale=alt.Scale(domain=["this window", "usual"], range=["#d62728", "#9e9e9e"])),
                tooltip=["camera", "period", alt.Tooltip("rate:Q", format=".2%")],
            ).properties(height=320)
            st.altair_chart(chart, width="stretch")
        st.subheader("Per line")
        by_line: dict[str, list] = {}
        for r in rows:
            by_line.setdefault(r.line, []).append(r)
        st.dataframe(
            pd.DataFrame([{
                "line": line, "cameras": len(rs), "inspected": sum(r.inspected for r in rs),
                "flagged": sum(r.flagged for r in rs),
                "anomaly rate": pct(sum(r.flagged for r in rs) / max(1, sum(r.inspected for r in rs))
                                    if sum(r.inspected for r in rs) else None, 2),
                "usual rate": pct(overall_rate([u for u in usual if u.line_id == line]), 2),
                "parts/min": round(sum(r.per_minute for r in rs), 1),
            } for line, rs in by_line.items()]),
            hide_index=True, width="stretch",
        )
        st.subheader("Per camera")
        st.dataframe(
            pd.DataFrame([{
                "line": r.line, "camera": r.camera, "inspected": r.inspected, "flagged": r.flagged,
                "anomaly rate": pct(r.rate, 2), "usual rate": pct(r.usual_rate, 2),
                "parts/min": round(r.per_minute, 1), "model version": r.model_version or "n/a",
                "drift": drift[r.camera].describe() if r.camera in drift else "n/a",
            } for r in rows]),
            hide_index=True, width="stretch",
        )
    st.caption(f"Updated {now:%H:%M:%S} UTC · refreshes every {cfg.dashboard_refresh_s:g} s")


live_panel()
