"""Review: the queue of flagged parts, newest first.  Frame with the heatmap overlaid (colormap,
alpha, on/off), score against threshold, camera, part, time; the operator marks it defect
confirmed / false alarm / unsure with an optional comment and the next item comes up at once.
Every decision is stored with who and when; a decision can be changed (history is kept)."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import streamlit as st

from dashboard.common import authorize, blobs, md_text, read_session, require_role, writing
from dashboard.images import COLORMAPS, colorbar, decode_heatmap, decode_rgb, overlay
from dashboard.labels import LABELS, QUEUES, label_name
from storage.blobs import BlobNotFound
from storage.queries import live as live_q
from storage.queries import review as q

user = require_role("operator")

# ``review_before``: show the newest queue item strictly older than this (captured_at iso, id);
# None = the newest.  ``review_open_id``: a specific inspection (opened from History).
ss = st.session_state
ss.setdefault("review_before", None)
ss.setdefault("review_open_id", None)


def _cursor_value(c):
    return None if c is None else (datetime.fromisoformat(c[0]), int(c[1]))


def _advance(cursor: tuple[datetime, int]) -> None:
    ss["review_before"] = (cursor[0].isoformat(), cursor[1])
    ss["review_open_id"] = None


def _decide(inspection_id: int, label: str, cursor: tuple[datetime, int], advance: bool) -> None:
    # a callback runs before the page script: the role is checked again now, not when the page was drawn
    actor = authorize("operator")
    if actor is None:
        return
    comment = ss.get(f"review_comment_{inspection_id}", "")
    with writing() as s:
        q.decide(s, inspection_id, label, actor.username, comment)
    ss["review_last"] = (inspection_id, label)
    if advance:
        _advance(cursor)


def _reset_queue() -> None:
    ss["review_before"] = None
    ss["review_open_id"] = None


st.title("Review")
controls = st.columns([3, 3, 2, 2])
mode = controls[0].radio("Queue", list(QUEUES), format_func=QUEUES.get, horizontal=True, key="review_mode",
                         on_change=_reset_queue)
with read_session() as s:
    all_cams = [c for _, c in live_q.cameras(s)]
cams = controls[1].multiselect("Cameras", all_cams, key="review_cameras", on_change=_reset_queue,
                               placeholder="all cameras")
colormap = controls[2].selectbox("Colormap", list(COLORMAPS), key="review_colormap")
alpha = controls[3].slider("Heatmap opacity", 0.0, 1.0, 0.45, 0.05, key="review_alpha")

if "review_last" in ss:
    iid, lab = ss.pop("review_last")
    st.toast(f"Saved: {label_name(lab)} (inspection {iid})")

with read_session() as s:
    n_queue = q.queue_count(s, mode, cams or None)
    if ss["review_open_id"] is not None:
        item = q.get_inspection(s, ss["review_open_id"])
    else:
        item = q.queue_item(s, mode, _cursor_value(ss["review_before"]), cams or None)
    history = q.history_of(s, item.id) if item is not None else []

st.caption(f"{n_queue:,} in the “{QUEUES[mode]}” queue" + (f" · cameras: {md_text(', '.join(cams))}" if cams else ""))

if item is None:
    if ss["review_before"] is None:
        st.success("Nothing to review here. New flagged parts appear at the top of the queue.")
    else:
        st.info("End of the queue.")
        st.button("Back to the newest", on_click=_reset_queue, key="review_newest_end")
    st.stop()

left, right = st.columns([4, 3], gap="large")
with left:
    show_heat = st.toggle("Heatmap overlay", value=True, key="review_show_heatmap")
    frame = heat = None
    problems = []
    if item.frame_key:
        try:
            frame = decode_rgb(blobs().get(item.frame_key))
        except (BlobNotFound, ValueError) as exc:
            problems.append(f"frame image unavailable ({type(exc).__name__})")
    else:
        problems.append("no frame image stored for this part")
    if item.heatmap_key:
        try:
            heat = decode_heatmap(blobs().get(item.heatmap_key))
        except (BlobNotFound, ValueError) as exc:
            problems.append(f"heatmap unavailable ({type(exc).__name__})")
    if frame is None and heat is None:
        st.warning("No image to show: " + "; ".join(problems))
    else:
        img = overlay(frame, heat, colormap, alpha, show_heat)
        what = "frame + heatmap" if (frame is not None and heat is not None and show_heat) else (
            "frame" if frame is not None and (heat is None or not show_heat) else "heatmap")
        st.image(img, caption=f"{item.camera_id} · part {item.part_id or '—'} · {what}", width="stretch")
        if heat is not None and show_heat:
            st.image(colorbar(colormap, width=512, height=10), width="stretch",
                     caption=f"heatmap scale: 0 … {item.heatmap_max or 0:.3g} (anomaly score units)")
        for p in problems:
            st.caption(p)

with right:
    verdict = "above" if item.score >= item.threshold else "below"
    st.metric("Score", f"{item.score:.4f}", delta=f"{item.score - item.threshold:+.4f} vs threshold {item.threshold:.4f}",
              delta_color="inverse", help=f"score is {verdict} the threshold the detector used")
    st.markdown(
        f"**Camera** {md_text(item.camera_id)} · **Line** {md_text(item.line_id)}  \n"
        f"**Part** {md_text(item.part_id or '—')} · **Product** {md_text(item.product or '—')}  \n"
        f"**Captured** {item.captured_at:%Y-%m-%d %H:%M:%S} UTC  \n"
        f"**Model** {md_text(item.model_version)} · **Frame** `{item.frame_id}`  \n"
        f"**Current decision:** {label_name(item.current_feedback)}"
    )
    st.text_input("Comment (optional)", key=f"review_comment_{item.id}", max_chars=2000)
    # in the unreviewed queue the decided item leaves the queue: show the next one at once;
    # elsewhere, also move on (the decision can be revisited with "All flagged"/"Reviewed")
    b = st.columns([5, 4, 3])
    for col, (label, name) in zip(b, LABELS.items()):
        col.button(name, key=f"review_{label}_{item.id}", on_click=_decide, args=(item.id, label, item.cursor, True),
                   type="primary" if label == "defect_confirmed" else "secondary", width="stretch")
    nav = st.columns(2)
    nav[0].button("Skip", key=f"review_skip_{item.id}", on_click=_advance, args=(item.cursor,), width="stretch")
    nav[1].button("Newest", key="review_newest", on_click=_reset_queue, width="stretch")
    st.subheader("Decisions")
    if history:
        st.dataframe(pd.DataFrame([{
            "when (UTC)": f"{h.created_at:%Y-%m-%d %H:%M:%S}", "who": h.username,
            "decision": label_name(h.label), "comment": h.comment or "",
        } for h in reversed(history)]), hide_index=True, width="stretch")
    else:
        st.caption("No decision yet.")
