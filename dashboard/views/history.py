"""History: every inspection, filtered by line, camera, time range, verdict and feedback;
paginated (newest first) and exportable as CSV."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

import pandas as pd
import streamlit as st

from dashboard.common import dashboard_settings, read_session, require_role
from dashboard.labels import LABELS, label_name
from storage.queries import live as live_q
from storage.queries.history import HistoryFilter, history_count, history_csv, history_page

require_role("operator")
cfg = dashboard_settings()
ss = st.session_state

st.title("History")
with read_session() as s:
    cams = live_q.cameras(s)
all_lines = sorted({line for line, _ in cams})


def _first_page() -> None:
    ss["history_page"] = 1


today = datetime.now(timezone.utc).date()
f1 = st.columns([2, 3, 3])
lines = f1[0].multiselect("Lines", all_lines, key="history_lines", on_change=_first_page, placeholder="all lines")
cam_choices = [c for line, c in cams if not lines or line in lines]
cameras = f1[1].multiselect("Cameras", cam_choices, key="history_cameras", on_change=_first_page,
                            placeholder="all cameras")
period = f1[2].date_input("Captured (UTC days)", value=(today - timedelta(days=6), today), key="history_period",
                          on_change=_first_page, max_value=today + timedelta(days=1))
f2 = st.columns([2, 2, 1, 3])
verdicts = {"all": "all", "flagged": "flagged", "normal": "normal"}
verdict = f2[0].selectbox("Verdict", list(verdicts), format_func=verdicts.get, key="history_verdict",
                          on_change=_first_page)
fb_names = {"all": "all", "none": "not reviewed", "any": "reviewed (any)", **LABELS}
feedback = f2[1].selectbox("Feedback", list(fb_names), format_func=fb_names.get, key="history_feedback",
                           on_change=_first_page)
page_size = f2[2].selectbox("Rows", [25, 50, 100, 200], index=1, key="history_page_size", on_change=_first_page)

if isinstance(period, (tuple, list)):
    start_d = period[0] if len(period) > 0 else None
    end_d = period[1] if len(period) > 1 else start_d
else:
    start_d = end_d = period


def _utc(d: date | None, plus_days: int = 0) -> datetime | None:
    if d is None:
        return None
    return datetime.combine(d + timedelta(days=plus_days), time(0), tzinfo=timezone.utc)


flt = HistoryFilter(lines=tuple(lines), cameras=tuple(cameras), start=_utc(start_d), end=_utc(end_d, 1),
                    verdict=verdict, feedback=feedback)

with read_session() as s:
    total = history_count(s, flt)
pages = max(1, -(-total // page_size))
ss.setdefault("history_page", 1)
if ss["history_page"] > pages:
    ss["history_page"] = pages
page = f2[3].number_input(f"Page (of {pages:,})", min_value=1, max_value=pages, step=1, key="history_page")
with read_session() as s:
    rows = history_page(s, flt, limit=page_size, offset=(int(page) - 1) * page_size)

st.caption(f"{total:,} inspections match · page {int(page):,} of {pages:,}")
if rows:
    df = pd.DataFrame([{
        "id": r["id"], "captured (UTC)": f"{r['captured_at']:%Y-%m-%d %H:%M:%S}", "line": r["line_id"],
        "camera": r["camera_id"], "part": r["part_id"] or "", "score": round(r["score"], 4),
        "threshold": round(r["threshold"], 4), "verdict": "flagged" if r["is_anomalous"] else "normal",
        "feedback": label_name(r["current_feedback"]) if r["current_feedback"] else "",
        "model": r["model_version"],
    } for r in rows])
    st.dataframe(df, hide_index=True, width="stretch", height=min(38 + 35 * len(df), 600))
else:
    st.info("No inspections match these filters.")

c = st.columns([2, 2, 3])


def _csv() -> bytes:
    with read_session() as s:
        return history_csv(s, flt, max_rows=cfg.dashboard_csv_max_rows)


c[0].download_button(
    f"Export CSV ({min(total, cfg.dashboard_csv_max_rows):,} rows)", data=_csv, file_name="linewatch-history.csv",
    mime="text/csv", key="history_csv", disabled=total == 0,
    help=f"all matching rows, newest first (at most {cfg.dashboard_csv_max_rows:,})",
)
if rows:
    choice = c[1].selectbox("Open in Review", [r["id"] for r in rows], key="history_open",
                            format_func=lambda i: f"inspection {i}")
    if c[2].button("Open", key="history_open_btn"):
        ss["review_open_id"] = int(choice)
        st.switch_page("views/review.py")
