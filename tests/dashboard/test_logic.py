"""Pure helpers of the dashboard: overlay rendering, consumer-lag parsing, live windows, client address."""

from __future__ import annotations

from datetime import datetime, timezone

import cv2
import numpy as np
import pytest

from dashboard.auth import client_address
from dashboard.images import colorbar, decode_heatmap, decode_rgb, overlay
from dashboard.lag import fetch_consumer_lag, parse_consumer_lag
from dashboard.live_logic import bucket_seconds, shift_start, window_bounds

from .seed import frame_jpeg, heatmap_png


def test_overlay_blends_resized_heatmap():
    frame = decode_rgb(frame_jpeg(1))
    heat = decode_heatmap(heatmap_png(1))
    assert frame.shape == (240, 320, 3) and heat.shape == (120, 160)
    out = overlay(frame, heat, "jet", 0.5)
    assert out.shape == frame.shape and out.dtype == np.uint8
    # hot centre is reddish after blending, the cold background is pulled towards blue
    cy, cx = 240 // 2 - 16, 320 // 2
    assert out[cy, cx, 0] > out[cy, cx, 2]
    assert out[5, 5, 2] > frame[5, 5, 2]
    assert np.array_equal(overlay(frame, heat, "jet", 0.5, show_heatmap=False), frame)
    assert np.array_equal(overlay(frame, heat, "jet", 0.0), frame)
    assert overlay(None, heat, "inferno").shape == (120, 160, 3)
    assert overlay(frame, None).shape == frame.shape
    assert colorbar("viridis", 100, 5).shape == (5, 100, 3)
    with pytest.raises(ValueError):
        overlay(None, None)
    with pytest.raises(ValueError):
        decode_rgb(b"not an image")


def test_decode_heatmap_16bit_and_colour():
    ok, buf = cv2.imencode(".png", np.full((4, 4), 65535, np.uint16))
    assert ok and decode_heatmap(buf.tobytes()).max() == 255
    ok, buf = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))
    assert decode_heatmap(buf.tobytes()).shape == (4, 4)


def test_parse_consumer_lag():
    text = ("# HELP linewatch_detector_consumer_lag messages behind\n# TYPE linewatch_detector_consumer_lag gauge\n"
            'linewatch_detector_consumer_lag{partition="0"} 3\nlinewatch_detector_consumer_lag{partition="1"} 4\n'
            "# TYPE linewatch_frames_total counter\nlinewatch_frames_total 100\n")
    assert parse_consumer_lag(text) == 7
    assert parse_consumer_lag("# TYPE other gauge\nother 1\n") is None
    assert fetch_consumer_lag(None) is None
    assert fetch_consumer_lag("http://127.0.0.1:9/metrics", timeout_s=0.2) is None  # unreachable: n/a


def test_windows_and_buckets():
    now = datetime(2026, 11, 23, 15, 30, tzinfo=timezone.utc)
    assert shift_start(now, [6, 14, 22]) == datetime(2026, 11, 23, 14, tzinfo=timezone.utc)
    early = datetime(2026, 11, 23, 3, 0, tzinfo=timezone.utc)
    assert shift_start(early, [6, 14, 22]) == datetime(2026, 11, 22, 22, tzinfo=timezone.utc)
    since, until = window_bounds("Last 15 minutes", now, [6])
    assert (until - since).total_seconds() == 900
    assert bucket_seconds(since, until) == 15
    since, until = window_bounds("Last 24 hours", now, [6])
    assert bucket_seconds(since, until) == 1800


def test_client_address_trusts_forwarded_for_only_behind_configured_proxies():
    spoofed = ["6.6.6.6, 203.0.113.9"]  # the client claimed 6.6.6.6; our proxy appended 203.0.113.9
    assert client_address(spoofed, "10.0.0.2", 0) == "10.0.0.2"  # no trusted proxy: the header is ignored
    assert client_address(spoofed, "10.0.0.2", 1) == "203.0.113.9"
    assert client_address(["6.6.6.6", "203.0.113.9, 10.0.0.1"], "10.0.0.2", 2) == "203.0.113.9"  # repeated headers
    assert client_address([], "10.0.0.2", 1) == "10.0.0.2"  # header missing: the peer
    assert client_address([], None, 0) == "local"  # Streamlit reports loopback peers as None
    assert len(client_address(["x" * 500], None, 1)) == 64
