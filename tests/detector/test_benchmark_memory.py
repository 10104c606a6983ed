"""The benchmark's peak-memory figure is the measured process's own, not its parent's."""

from __future__ import annotations

import multiprocessing as mp
import sys

import numpy as np
import pytest

from detector.benchmark import peak_rss_mb


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_a_spawned_child_does_not_report_its_parents_memory():
    ballast = np.ones((600, 1024, 1024), np.uint8)  # 600 MiB resident in this (parent) process
    parent = peak_rss_mb()
    assert parent >= 600
    # a fresh interpreter, as the benchmark's timing process is; it imports only detector.benchmark
    with mp.get_context("spawn").Pool(1) as pool:
        child = pool.apply(peak_rss_mb)
    del ballast
    # the child is an interpreter with torch imported (a few hundred MiB); ru_maxrss would have reported
    # at least the parent's peak, which Linux carries across exec
    assert 0 < child < parent - 500, (child, parent)
