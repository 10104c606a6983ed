"""Drift monitoring on the line simulator: a dirty lens and dimmed light raise the alert within
5 minutes at 2 frames/s; 24 simulated hours of normal part-to-part variation raise none -- against
the reference training stored in the checkpoint, and against the first frames (older checkpoints)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from detector.checkpoint import read_checkpoint
from detector.drift import (STATS, DriftMonitor, DriftReference, DriftSettings, image_stats, psi, reference_from_meta,
                            training_reference)
from ingest.simulator import LineSimulator, apply_fault, write_normal_parts
from tests.retrain.conftest import tiny_checkpoint  # noqa: F401,F811  (the real tiny detector, session-scoped)

FPS = 2.0
FIVE_MINUTES = int(5 * 60 * FPS)
DAY = int(24 * 3600 * FPS)


@pytest.fixture(scope="module")
def detector(tiny_checkpoint):  # noqa: F811
    from detector.inference import Detector

    return Detector.load(tiny_checkpoint, "cpu")


def _frames(first: int, n: int, fault: str | None = None) -> list[np.ndarray]:
    sim = LineSimulator(seed=3, width=64, height=64, defect_rate=0.0)
    imgs = [sim.render(i) for i in range(first, first + n)]
    imgs = [apply_fault(im, fault) for im in imgs] if fault else imgs
    return [cv2.cvtColor(im, cv2.COLOR_BGR2RGB) for im in imgs]


@pytest.fixture(scope="module")
def normal_pool(detector):
    """300 different good parts, scored by the real detector: the line on a normal day."""
    imgs = _frames(0, 300)
    return imgs, np.asarray(detector.score_images(imgs), np.float64)


@pytest.fixture(scope="module")
def trained_reference(tiny_checkpoint) -> DriftReference:
    ref = reference_from_meta(read_checkpoint(tiny_checkpoint)[1], "flange")
    assert ref is not None
    return ref


def _reference(kind: str, request) -> DriftReference | None:
    return request.getfixturevalue("trained_reference") if kind == "training" else None


def _healthy_start(monitor: DriftMonitor, pool, rng, n: int, reference: DriftReference | None = None) -> None:
    imgs, scores = pool
    for k in rng.integers(0, len(imgs), n):
        monitor.observe("cam-1", "v1", float(scores[k]), imgs[k], reference=reference)


@pytest.mark.parametrize("kind", ["training", "first frames"])
def test_a_day_of_normal_variation_raises_nothing(kind, normal_pool, request):
    """24 hours at 2 frames/s, parts drawn at random from the normal pool (each part's image
    statistics computed once: the monitor's arithmetic is what runs 172,800 times)."""
    reference = _reference(kind, request)
    monitor = DriftMonitor()
    imgs, scores = normal_pool
    stats = [image_stats(im) for im in imgs]
    rng = np.random.default_rng(7)
    worst_shift, worst_psi, alerts = 0.0, 0.0, 0
    for k in rng.integers(0, len(imgs), DAY):
        st = monitor.observe("cam-1", "v1", float(scores[k]), None, stats=stats[k], reference=reference)
        if st.phase == "monitoring" and st.frames >= monitor.settings.window_frames:
            worst_shift = max(worst_shift, max(abs(v) for v in st.shift.values()))
            worst_psi = max(worst_psi, st.score_psi or 0.0)
        alerts += st.drifting
    print(f"\n24 h normal ({kind} reference): worst image shift {worst_shift:.2f} std, "
          f"worst score PSI {worst_psi:.3f}, alerts {alerts}")
    assert alerts == 0
    assert 0 < worst_shift < monitor.settings.shift_alert  # measured, and under the limit
    if reference is None or reference.score_edges:
        assert worst_psi > 0


@pytest.mark.parametrize("fault,kind", [("dirty-lens", "training"), ("dim", "training"), ("dirty-lens", "first frames"),
                                        ("dim", "first frames"), ("shift", "first frames")])
def test_a_camera_fault_raises_the_alert_within_five_minutes(fault, kind, normal_pool, detector, request):
    reference = _reference(kind, request)
    monitor = DriftMonitor()
    rng = np.random.default_rng(11)
    s = monitor.settings
    # (the first frames' reference +) 4 quiet minutes
    _healthy_start(monitor, normal_pool, rng, s.baseline_frames + 2 * s.window_frames, reference)
    assert not monitor.tracks[("cam-1", "v1")].breach_run
    assert (monitor.tracks[("cam-1", "v1")].reference.source == "training") == (kind == "training")
    after, j = None, 0
    while after is None and j < FIVE_MINUTES:  # rendered and scored a minute at a time, as they come
        faulty = _frames(5000 + j, 120, fault)
        for img, sc in zip(faulty, detector.score_images(faulty)):
            st = monitor.observe("cam-1", "v1", float(sc), img)
            if st.drifting:
                after = j
                break
            j += 1
    assert after is not None, f"{fault}: no alert in 5 minutes; last window {st}"
    print(f"\n{fault} ({kind} reference): alert after {after} frames ({after / FPS / 60:.1f} min at 2 frames/s): {st.reasons}")
    assert after <= FIVE_MINUTES


def test_gauges_per_camera_and_model_version(normal_pool):
    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry()
    s = DriftSettings(window_frames=40, baseline_frames=60, hold_frames=10)
    monitor = DriftMonitor(s, reg)
    imgs, scores = normal_pool
    for k in range(120):
        st = monitor.observe("cam-1", "v1", float(scores[k]), imgs[k])
    text = generate_latest(reg).decode()
    assert f'linewatch_detector_drift_score_psi{{camera="cam-1",model_version="v1"}} {st.score_psi}' in text
    assert f'linewatch_detector_drift_active{{camera="cam-1",model_version="v1"}} {float(st.drifting)}' in text
    for stat in STATS:
        assert f'linewatch_detector_drift_image_shift{{camera="cam-1",model_version="v1",stat="{stat}"}}' in text
    dim = _frames(100, 30, "dim")
    for img in dim:
        st = monitor.observe("cam-1", "v1", float(scores[0]), img)
    assert st.drifting
    assert 'linewatch_detector_drift_active{camera="cam-1",model_version="v1"} 1.0' in generate_latest(reg).decode()
    # a new model version starts from a new reference; the old version's series go
    monitor.observe("cam-1", "v2", float(scores[0]), imgs[0])
    text = generate_latest(reg).decode()
    assert 'model_version="v1"' not in text and monitor.tracks[("cam-1", "v2")].reference is None


def test_psi_and_image_statistics():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=5000)
    edges = DriftReference.from_samples(ref, np.zeros((5000, 3))).score_edges
    assert psi(edges, rng.normal(size=5000)) < 0.01
    assert psi(edges, rng.normal(1.0, 1.0, size=5000)) > 0.25
    img = _frames(0, 1)[0]
    b, c, sharp = image_stats(img)
    b2, c2, sharp2 = image_stats(cv2.GaussianBlur(img, (0, 0), 2.0))
    assert abs(b2 - b) < 2 and sharp2 < sharp - 1  # blur: same light, much less detail
    assert image_stats((img * 0.5).astype(np.uint8))[0] == pytest.approx(b * 0.5, rel=0.05)


def test_the_simulator_faults_from_a_source_spec():
    from ingest.sources import make_source

    src = make_source("sim:seed=1,width=64,height=64,fault=dim,fault_after=2")
    src.open()
    frames = [src.read() for _ in range(4)]
    assert [f.info["fault"] for f in frames] == [None, None, "dim", "dim"]
    assert frames[2].image.mean() < 0.7 * frames[1].image.mean()
    with pytest.raises(ValueError, match="unknown simulator fault 'fog'"):
        make_source("sim:fault=fog")


def test_training_stores_the_statistics_of_its_full_resolution_images(tiny_checkpoint, trained_reference):
    """The tiny checkpoint was trained on 24 simulated parts: its reference holds their statistics;
    2 held-out normals are too few for score bins, so only the image statistics are watched."""
    files = sorted((tiny_checkpoint.parent / "data" / "train" / "good").glob("*.png"))
    expected = np.array([image_stats(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)) for f in files])
    assert len(files) == 24 and trained_reference.n == 24 and trained_reference.source == "training"
    assert trained_reference.stat_mean == pytest.approx(expected.mean(axis=0).tolist())
    assert trained_reference.score_edges == []


def test_statistics_are_taken_before_the_resize(tmp_path):
    from detector.data import Sample, load_images, read_image

    paths = write_normal_parts(tmp_path, 2, seed=5, width=512, height=384)
    loaded = load_images([Sample(p, 0, "good") for p in paths], 32, with_stats=True)
    full = image_stats(read_image(paths[0]))
    assert loaded.stats[0] == pytest.approx(full)
    assert abs(image_stats(loaded.images[0])[2] - full[2]) > 0.5  # sharpness depends on resolution


def test_score_bins_need_enough_held_out_normals():
    rng = np.random.default_rng(1)
    stats = rng.normal(100, 5, size=(50, 3))
    assert len(training_reference(rng.normal(size=32), stats).score_edges) == 2  # 3 bins of ~10
    assert len(training_reference(rng.normal(size=500), stats).score_edges) == 9  # the usual deciles
    assert training_reference(rng.normal(size=12), stats).score_edges == []  # too few: image statistics only


def test_a_unified_model_has_one_reference_per_product():
    stats = np.ones((20, 3))
    meta = {"drift_reference": {p: training_reference(np.arange(40.0) + i, stats).model_dump()
                                for i, p in enumerate(["a", "b"])}}
    assert reference_from_meta(meta, "b").score_edges != reference_from_meta(meta, "a").score_edges
    assert reference_from_meta(meta, "c") is None and reference_from_meta({}, "a") is None


def test_a_frame_scored_again_counts_once():
    """A batch redone after a failed send brings the same frame ids back: the window must not
    count them twice (nor the breach run grow)."""
    s = DriftSettings(window_frames=20, baseline_frames=20, hold_frames=5, seen_frames=50)
    ref = DriftReference.from_samples(np.linspace(0, 1, 100), np.tile([100.0, 40.0, 5.0], (100, 1)) +
                                      np.random.default_rng(0).normal(0, 1, (100, 3)))
    monitor = DriftMonitor(s)
    dark = np.array([20.0, 40.0, 5.0])
    for i in range(12):
        monitor.observe("cam-1", "v1", 0.5, None, reference=ref, stats=dark, frame_id=f"f{i}")
    track = monitor.tracks[("cam-1", "v1")]
    before = (len(track.window), track.breach_run, track.stat_sum.copy())
    assert before[:2] == (12, 3)  # over the limit since half a window
    for i in range(12):  # the same batch again
        again = monitor.observe("cam-1", "v1", 0.5, None, reference=ref, stats=dark, frame_id=f"f{i}")
    assert (len(track.window), track.breach_run) == before[:2] and np.array_equal(track.stat_sum, before[2])
    assert again is track.last and len(track.frame_ids) == 12
    for i in range(12, 60):  # ids are remembered up to seen_frames, oldest forgotten first
        monitor.observe("cam-1", "v1", 0.5, None, reference=ref, stats=dark, frame_id=f"f{i}")
    assert len(track.frame_ids) == 50 and track.frame_ids[0] == "f10" and len(track.window) == 20


def test_after_a_restart_the_window_refills_and_a_lasting_fault_is_back_within_three_minutes(trained_reference):
    """Drift state is not persisted: a restarted service starts with an empty window against the
    checkpoint's training reference; with the camera still dim, the alert is back after half a
    window plus hold_frames (3 minutes at 2 frames/s)."""
    monitor = DriftMonitor()  # the restarted service
    s = monitor.settings
    dim = [image_stats(im) for im in _frames(7000, 20, "dim")]
    first = None
    for i in range(s.window_frames):
        st = monitor.observe("cam-1", "v1", 0.0, None, reference=trained_reference, stats=dim[i % len(dim)])
        assert st.phase == "monitoring" and st.shift  # gauges from the first frame: nothing to learn first
        first = first if first is not None or not st.breach else i
    assert first == s.window_frames // 2 - 1
    for i in range(s.window_frames, 2 * s.window_frames):
        st = monitor.observe("cam-1", "v1", 0.0, None, reference=trained_reference, stats=dim[i % len(dim)])
        if st.drifting:
            break
    assert st.drifting and i + 1 == s.window_frames // 2 - 1 + s.hold_frames and (i + 1) / FPS <= 180


def test_calibrate_gives_an_older_checkpoint_a_reference_and_keeps_a_training_one(tiny_checkpoint, tmp_path,
                                                                                 trained_reference):
    from detector.checkpoint import load_model, save_checkpoint
    from detector.workflow import calibrate_checkpoint

    images = tiny_checkpoint.parent / "data" / "train" / "good"
    model, meta, _ = load_model(tiny_checkpoint)
    old = tmp_path / "old.pt"
    save_checkpoint(old, model, {k: v for k, v in meta.items() if k != "drift_reference"})
    assert reference_from_meta(read_checkpoint(old)[1], "flange") is None
    res = calibrate_checkpoint(old, images, 0.05, device="cpu", progress=False)
    ref = reference_from_meta(read_checkpoint(old)[1], "flange")
    assert res["drift_reference_added"] and ref.source == "calibration" and ref.n == 24
    assert ref.stat_mean == pytest.approx(trained_reference.stat_mean)  # the same images, full resolution
    res = calibrate_checkpoint(tiny_checkpoint, images, 0.05, out=tmp_path / "recal.pt", device="cpu", progress=False)
    assert not res["drift_reference_added"]
    assert reference_from_meta(read_checkpoint(tmp_path / "recal.pt")[1], "flange") == trained_reference
