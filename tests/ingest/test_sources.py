"""Frame sources, simulator and encodings (no broker needed)."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from ingest.frames import EncodingError, decode_image, encode_image
from ingest.simulator import DEFECT_KINDS, LineSimulator, write_normal_parts, write_parts
from ingest.sources import FolderSource, OpenCVSource, SourceError, make_source


def test_simulator_is_deterministic_per_seed():
    a = LineSimulator(seed=7, defect_rate=0.3, width=128, height=96)
    b = LineSimulator(seed=7, defect_rate=0.3, width=128, height=96)
    c = LineSimulator(seed=8, defect_rate=0.3, width=128, height=96)
    a.open(), b.open(), c.open()
    fa = [a.read() for _ in range(20)]
    fb = [b.read() for _ in range(20)]
    fc = [c.read() for _ in range(20)]
    for x, y in zip(fa, fb):
        assert np.array_equal(x.image, y.image)
        assert x.part_id == y.part_id and x.info["defect"] == y.info["defect"]
    assert any(not np.array_equal(x.image, z.image) for x, z in zip(fa, fc))
    # random access gives the same frame as sequential reading
    assert np.array_equal(a.frame(13).image, fa[13].image)
    assert fa[0].image.shape == (96, 128, 3) and fa[0].image.dtype == np.uint8
    assert fa[3].part_id == "P7-000003" and fa[3].product == "flange"


def test_simulator_defects_are_painted_and_rate_holds():
    sim = LineSimulator(seed=1, defect_rate=0.25)
    kinds = [sim.defect_of(i) for i in range(400)]
    rate = sum(k is not None for k in kinds) / len(kinds)
    assert 0.18 < rate < 0.32
    assert set(filter(None, kinds)) == set(DEFECT_KINDS)
    i = next(i for i, k in enumerate(kinds) if k == "scratch")
    good = sim.render(i, defect=None)
    bad = sim.render(i, defect="scratch")
    diff = np.abs(good.astype(int) - bad.astype(int)).max(axis=2)
    assert 20 < (diff > 40).sum() < good.shape[0] * good.shape[1] * 0.05
    assert LineSimulator(seed=1, defect_rate=0.0).defect_of(i) is None


def test_simulator_count_and_frames_per_part():
    sim = LineSimulator(seed=0, count=6, frames_per_part=3)
    frames = list(sim.__enter__())
    assert len(frames) == 6
    assert [f.part_id for f in frames] == ["P0-000000"] * 3 + ["P0-000001"] * 3
    assert not np.array_equal(frames[0].image, frames[1].image)  # the part moves


def test_write_normal_parts(tmp_path):
    paths = write_normal_parts(tmp_path / "good", 5, seed=3, width=64, height=64)
    assert [p.name for p in paths] == [f"part_{i:06d}.png" for i in range(5)]
    sim = LineSimulator(seed=3, width=64, height=64, defect_rate=0.0)
    assert np.array_equal(cv2.imread(str(paths[2])), sim.render(2))
    mixed = write_parts(tmp_path / "mix", 40, seed=3, width=64, height=64, defect_rate=0.5)
    assert all(p.parent.name == (d or "good") for p, d in mixed)


def test_folder_source_sorted_loop_and_paced(tmp_path):
    for name in ("b.png", "a.png", "c.jpg"):
        cv2.imwrite(str(tmp_path / name), np.full((8, 8, 3), 100, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    src = FolderSource(tmp_path, part_from_name=True)
    with src:
        names = [f.part_id for f in src]
    assert names == ["a", "b", "c"]
    assert src.skipped == 1

    src = FolderSource(tmp_path, loop=True, fps=50)
    with src:
        started = time.monotonic()
        frames = [src.next_frame() for _ in range(10)]
        elapsed = time.monotonic() - started
    assert [f.info["path"].rsplit("/", 1)[1] for f in frames[:4]] == ["a.png", "b.png", "c.jpg", "a.png"]
    assert 0.15 <= elapsed < 1.5  # 10 frames at 50 fps: ~0.18 s

    with pytest.raises(SourceError):
        FolderSource(tmp_path / "missing").open()


def test_opencv_video_file_source(tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(5):
        writer.write(np.full((48, 64, 3), i * 40, np.uint8))
    writer.release()
    with OpenCVSource(str(video)) as src:
        frames = list(src)
    assert len(frames) == 5 and frames[0].image.shape == (48, 64, 3)
    with OpenCVSource(str(video), loop=True) as src:
        assert len([src.read() for _ in range(12)]) == 12
    with pytest.raises(SourceError):
        OpenCVSource(str(tmp_path / "missing.avi")).open()


def test_make_source_specs(tmp_path):
    assert isinstance(make_source("sim:seed=3,width=64,height=64,defect_rate=0.5"), LineSimulator)
    assert make_source("sim:seed=3").seed == 3
    assert isinstance(make_source(str(tmp_path), fps=5, loop=True), FolderSource)
    assert isinstance(make_source(f"folder:{tmp_path}"), FolderSource)
    assert make_source("0").kind == "device"
    assert make_source("device:2").target == 2
    assert make_source("rtsp://cam.local/stream").kind == "stream"
    assert make_source("rtsp://cam.local/stream").api_preference == cv2.CAP_FFMPEG
    for spec in ("videotestsrc ! videoconvert ! appsink", "gst:videotestsrc ! appsink"):
        with pytest.raises(ValueError, match="built without GStreamer"):  # the PyPI OpenCV could never open it
            make_source(spec)
    assert make_source("video:/x/y.mp4").kind == "file"
    with pytest.raises(ValueError):
        make_source("sim:bogus=1")


def test_encodings_roundtrip_and_truncation():
    img = LineSimulator(seed=2, width=64, height=64).render(0)
    png, ctype = encode_image(img, "png")
    assert ctype == "image/png" and np.array_equal(decode_image(png), img)
    jpg, ctype = encode_image(img, "jpeg", jpeg_quality=95)
    assert ctype == "image/jpeg"
    assert np.abs(decode_image(jpg).astype(int) - img.astype(int)).mean() < 3
    low, _ = encode_image(img, "jpeg", jpeg_quality=20)
    assert len(low) < len(jpg)
    for bad in (jpg[: len(jpg) // 2], png[:-20], b"", b"GIF89a...."):
        with pytest.raises(EncodingError):
            decode_image(bad)
    with pytest.raises(EncodingError):
        decode_image(png, content_type="image/jpeg")
