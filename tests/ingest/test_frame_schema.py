"""The frame schema at the boundary: ids, capture times and sequence numbers storage can always store."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from ingest.messages import FrameMeta, FrameSchemaError, check_capture_window

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)


def headers(**over: str) -> list[tuple[str, bytes]]:
    base = {"lw-schema": "1", "lw-frame-id": "cam-1-run-000001", "lw-line": "L1", "lw-station": "press_3",
            "lw-camera": "cam-1", "lw-seq": "1", "lw-captured-at": NOW.isoformat(), "content-type": "image/png"}
    base.update(over)
    return [(k, v.encode()) for k, v in base.items()]


def test_a_good_frame_parses_and_round_trips():
    meta = FrameMeta.from_headers(headers(**{"lw-part": "P.42", "lw-product": "bottle"}))
    assert FrameMeta.from_headers(meta.to_headers()) == meta


@pytest.mark.parametrize("header, value", [
    ("lw-camera", ".."), ("lw-camera", "."), ("lw-camera", "a/b"), ("lw-camera", "cam 1"), ("lw-camera", "cäm"),
    ("lw-camera", "-cam"), ("lw-camera", "c" * 101), ("lw-line", ""), ("lw-station", "st\n1"),
    ("lw-frame-id", "../../etc/passwd"), ("lw-frame-id", "f" * 201), ("lw-product", "prod/x"),
    ("lw-part", "part\x00"), ("lw-seq", str(2**63)), ("lw-seq", "-1"), ("lw-seq", "1e3"),
    ("lw-captured-at", "0001-01-01T00:30:00+01:00"), ("lw-captured-at", "9999-12-31T23:30:00-01:00"),
    ("lw-captured-at", "1999-12-31T23:59:59+00:00"), ("lw-captured-at", "2026-12-03T12:00:00"),
])
def test_values_storage_could_not_store_are_refused(header, value):
    with pytest.raises(FrameSchemaError):
        FrameMeta.from_headers(headers(**{header: value}))


def test_limits_are_inclusive():
    meta = FrameMeta.from_headers(headers(**{"lw-camera": "c" * 100, "lw-seq": str(2**63 - 1),
                                             "lw-frame-id": "f" * 200}))
    assert meta.seq == 2**63 - 1


def test_a_duplicated_header_is_refused_and_unknown_ones_ignored():
    with pytest.raises(FrameSchemaError, match="more than once"):
        FrameMeta.from_headers(headers() + [("lw-camera", b"cam-2")])
    assert FrameMeta.from_headers(headers() + [("x-gateway", b"a"), ("x-gateway", b"b")]).camera_id == "cam-1"


def test_non_utf8_and_missing_headers_are_refused():
    with pytest.raises(FrameSchemaError):
        FrameMeta.from_headers([(k, b"\xff\xfe" if k == "lw-line" else v) for k, v in headers()])
    with pytest.raises(FrameSchemaError):
        FrameMeta.from_headers([(k, v) for k, v in headers() if k != "lw-seq"])
    with pytest.raises(FrameSchemaError, match="lw-schema"):
        FrameMeta.from_headers(None)


def test_capture_time_must_be_near_the_broker_time():
    meta = FrameMeta.from_headers(headers())
    window = {"max_age": timedelta(days=7), "max_ahead": timedelta(minutes=5)}
    check_capture_window(meta, NOW + timedelta(days=6), **window)
    check_capture_window(meta, NOW - timedelta(minutes=4), **window)
    with pytest.raises(FrameSchemaError, match="before"):
        check_capture_window(meta, NOW + timedelta(days=8), **window)
    with pytest.raises(FrameSchemaError, match="after"):
        check_capture_window(meta, NOW - timedelta(minutes=6), **window)
