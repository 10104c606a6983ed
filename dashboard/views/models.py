"""Models (engineers and admins): per product, every registered version with its status, who
created and promoted it, its metrics and threshold; the retraining report of a version (Markdown
and its score histograms); rolling back to the version active before the current one.  Times are
in the plant's time zone (``LINEWATCH_PLANT_TIMEZONE``, default the server's); the CSV export is UTC."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import streamlit as st

from dashboard.common import dashboard_settings, read_session, require_role, writing
from storage.queries.common import csv_text
from storage.registry import list_versions, rollback

user = require_role("engineer")
ss = st.session_state
cfg = dashboard_settings()
tz = ZoneInfo(cfg.plant_timezone) if cfg.plant_timezone else datetime.now().astimezone().tzinfo

st.title("Models")
if "models_done" in ss:
    st.success(ss.pop("models_done"))

with read_session() as s:
    products = sorted({mv.product for mv in list_versions(s)})
if not products:
    st.info("No model registered yet: the first start registers one (deploy/first-model.sh).")
    st.stop()
product = st.selectbox("Product", products, key="models_product")


def _local(t: datetime | None) -> str:
    return "" if t is None else f"{t.astimezone(tz):%Y-%m-%d %H:%M}"


def _num(m: dict | None, key: str) -> float | None:
    v = (m or {}).get(key)
    return None if v is None else round(float(v), 4)


with read_session() as s:
    versions = list(reversed(list_versions(s, product)))  # newest first
rows = [{
    "version": v.version, "status": v.status, "created": v.created_at, "created by": v.created_by or "",
    "promoted": v.promoted_at, "promoted by": v.promoted_by or "",
    "image AUROC": _num(v.metrics, "image_auroc"), "false-alarm rate": _num(v.metrics, "false_alarm_rate"),
    "detection rate": _num(v.metrics, "detection_rate"), "threshold": v.threshold,
    "training images": v.train_image_count, "reason": v.reason or "",
} for v in versions]
shown = pd.DataFrame([{**r, "created": _local(r["created"]), "promoted": _local(r["promoted"])} for r in rows])
st.dataframe(shown, hide_index=True, width="stretch")
tzname = datetime.now(tz).tzname()
utc = pd.DataFrame([{**{k: csv_text(v) if isinstance(v, str) else v for k, v in r.items()},
                     "created": r["created"].isoformat() if r["created"] else "",
                     "promoted": r["promoted"].isoformat() if r["promoted"] else ""} for r in rows])
c = st.columns([3, 2])
c[0].caption(f"Times in {tzname} (the plant's time zone); the CSV is in UTC.")
c[1].download_button("CSV (UTC)", utc.to_csv(index=False).encode(), f"models-{product}.csv", "text/csv",
                     key="models_csv")

st.subheader("Retraining report")
with_report = [v for v in versions if v.report_path]
if not with_report:
    st.caption("No version of this product has a retraining report yet (reports come from `retrain`).")
else:
    pick = st.selectbox("Version", [v.version for v in with_report], key=f"models_report_{product}")
    mv = next(v for v in with_report if v.version == pick)
    md = Path(mv.report_path)
    if not md.is_file():
        st.warning(f"The report file is missing: {md}")
    else:
        text = md.read_text(encoding="utf-8")
        images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
        st.markdown(re.sub(r"!\[[^\]]*\]\([^)]+\)", "", text))
        for name in images:  # the histogram PNG beside the report
            png = md.parent / name
            if png.is_file():
                st.image(str(png), caption=name)

st.subheader("Roll back")
active = next((v for v in versions if v.status == "active"), None)
previous = max((v for v in versions if v.status == "retired" and v.promoted_at),
               key=lambda v: v.promoted_at, default=None)
if active is None or previous is None:
    st.caption("Nothing to roll back to: the product has no earlier active version.")
else:
    reason = st.text_input("Reason", key=f"models_reason_{product}", max_chars=500)
    if st.button(f"Make {previous.version} active again (now {active.version})", key="models_rollback",
                 type="primary", disabled=not reason.strip(), help="a reason is required"):
        with writing() as s:
            mv = rollback(s, product, user.username, reason.strip())
            done = mv.version
        ss["models_done"] = (f"Rolled back {product}: {done} is active again (by {user.username}). "
                             "Detectors pick it up at their next reload.")
        st.rerun()
