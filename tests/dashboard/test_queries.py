"""storage.queries: the dashboard's read side, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest

from storage.queries import history, live, review, thresholds
from storage.thresholds import set_camera_threshold


def test_live_counts_series_versions(seeded):
    db, sd = seeded
    with db.session() as s:
        counts = live.camera_counts(s, sd.now - timedelta(hours=1))
        assert {(c.line_id, c.camera_id) for c in counts} == {
            ("line-a", "cam-a1"), ("line-a", "cam-a2"), ("line-b", "cam-b1"), ("line-b", "cam-b2")}
        assert all(c.inspected == 40 and c.flagged == 4 for c in counts)
        assert counts[0].rate == pytest.approx(0.1)
        usual = live.camera_counts(s, sd.now - timedelta(days=2), sd.now - timedelta(hours=1))
        assert all(c.inspected == 40 and c.flagged == 2 for c in usual)
        series = live.rate_series(s, sd.now - timedelta(hours=1), sd.now + timedelta(seconds=1), 300)
        assert sum(p.inspected for p in series) == 160
        assert sum(p.flagged for p in series) == 16
        # buckets are aligned to the window start and 300 s wide
        starts = {p.bucket_start for p in series}
        assert all(((t - (sd.now - timedelta(hours=1))).total_seconds()) % 300 == 0 for t in starts)
        assert len(starts) == 6  # parts span the last 30 min of the hour: 6 buckets of 5 min
        versions = live.latest_model_versions(s)
        assert {v for v, _ in versions.values()} == {"ear-fader-v3"}


def test_review_queue_walk_and_decide(seeded):
    db, sd = seeded
    with db.session() as s:
        assert review.queue_count(s, "pending") == 16
        first = review.queue_item(s, "pending")
        assert first.id == sd.flagged_ids[0] and first.heatmap_key and first.frame_key
        second = review.queue_item(s, "pending", before=first.cursor)
        assert second.id == sd.flagged_ids[1]
        assert review.queue_count(s, "pending", cameras=["cam-a1"]) == 4
        assert review.queue_item(s, "pending", cameras=["cam-a1"]).camera_id == "cam-a1"
        # walk the whole queue: newest first, each exactly once
        seen, cur = [], None
        while (item := review.queue_item(s, "pending", before=cur)) is not None:
            seen.append(item.id)
            cur = item.cursor
        assert seen == sd.flagged_ids
        review.decide(s, first.id, "false_alarm", "olga", "  glare  ")
        s.commit()
        assert review.queue_count(s, "pending") == 15
        assert review.queue_item(s, "pending").id == sd.flagged_ids[1]
        review.decide(s, first.id, "defect_confirmed", "erik")
        s.commit()
        hist = review.history_of(s, first.id)
        assert [(h.label, h.username, h.comment) for h in hist] == [
            ("false_alarm", "olga", "glare"), ("defect_confirmed", "erik", None)]
        assert review.get_inspection(s, first.id).current_feedback == "defect_confirmed"
        assert review.queue_count(s, "reviewed") >= 1
        with pytest.raises(ValueError):
            review.queue_count(s, "bogus")


def test_history_filters_pages_csv(seeded):
    db, sd = seeded
    with db.session() as s:
        all_ = history.HistoryFilter()
        assert history.history_count(s, all_) == 320
        f = history.HistoryFilter(lines=("line-a",), start=sd.now - timedelta(hours=1), verdict="flagged")
        assert history.history_count(s, f) == 8
        page1 = history.history_page(s, f, limit=5, offset=0)
        page2 = history.history_page(s, f, limit=5, offset=5)
        assert len(page1) == 5 and len(page2) == 3
        assert not {r["id"] for r in page1} & {r["id"] for r in page2}
        times = [r["captured_at"] for r in page1 + page2]
        assert times == sorted(times, reverse=True)
        assert history.history_count(s, history.HistoryFilter(feedback="any")) == 8
        assert history.history_count(s, history.HistoryFilter(feedback="false_alarm")) == 4
        assert history.history_count(s, history.HistoryFilter(cameras=("cam-b2",), verdict="normal")) == 74
        data = history.history_csv(s, history.HistoryFilter(cameras=("cam-a1",)), max_rows=None)
        rows = list(csv.reader(io.StringIO(data.decode())))
        assert rows[0] == list(history.CSV_COLUMNS) and len(rows) == 81
        assert len({r[0] for r in rows[1:]}) == 80
        # chunked keyset export gives the same rows as one big page
        chunked = list(history.iter_rows(s, all_, chunk=7))
        assert [r[0] for r in chunked] == [r["id"] for r in history.history_page(s, all_, limit=1000)]
        assert len(list(history.iter_rows(s, all_, max_rows=10, chunk=3))) == 10
        with pytest.raises(ValueError):
            history.HistoryFilter(verdict="maybe")


def test_threshold_rates_and_histogram(seeded):
    db, sd = seeded
    with db.session() as s:
        # cam-a1: 36 + 38 normal (recent + day-old unflagged), 2 confirmed defects, 4 unreviewed flags
        r_cur, r_low, r_high = thresholds.rates(s, "cam-a1", [0.5, 0.15, 0.85])
        assert (r_cur.normal, r_cur.defects) == (74, 2)
        assert r_cur.false_alarms == 0 and r_cur.misses == 0
        assert r_low.false_alarms > 0 and r_low.misses == 0
        assert r_high.misses == 2 and r_high.miss_rate == 1.0
        assert r_cur.false_alarm_rate == 0.0
        h = thresholds.score_histogram(s, "cam-a1", bins=10)
        assert sum(h.normal) == 74 and sum(h.defect) == 2
        assert h.excluded_unreviewed == 4 and h.excluded_unsure == 0
        assert h.defect[-1] == 2  # the maximum score lands in the last bin
        assert len(h.edges()) == 11
        recent = thresholds.rates(s, "cam-a1", [0.5], since=sd.now - timedelta(hours=1))[0]
        assert (recent.normal, recent.defects) == (36, 0) and recent.miss_rate is None
        assert thresholds.score_histogram(s, "cam-a1", since=sd.now + timedelta(days=1)) is None
        cur = thresholds.camera_threshold(s, "cam-a1")
        assert cur.override is None and cur.model_threshold == 0.5 and cur.effective == 0.5
        set_camera_threshold(s, "cam-a1", 0.62, "erik", "fewer false alarms")
        s.commit()
        assert thresholds.camera_threshold(s, "cam-a1").effective == 0.62
        assert thresholds.camera_threshold(s, "nope") is None


def test_distribution_matches_histogram_and_rates(seeded):
    db, sd = seeded
    with db.session() as s:
        for since in (None, sd.now - timedelta(hours=1)):
            hist, rates = thresholds.distribution(s, "cam-a1", [0.3, 0.5, 0.9], bins=12, since=since)
            assert hist == thresholds.score_histogram(s, "cam-a1", bins=12, since=since)
            assert rates == thresholds.rates(s, "cam-a1", [0.3, 0.5, 0.9], since=since)
        hist, rates = thresholds.distribution(s, "cam-a1", [0.5], since=sd.now + timedelta(days=1))
        assert hist is None and rates[0].normal == 0
