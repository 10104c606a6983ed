"""The benchmark's peak-memory figure is the measured process's own, not its parent's."""

from __future__ import annotations

import multiprocessing as mp
import sys

import numpy as np
import pytest

from detector.benchmark import peak_rss_mb


def _report(q) -> None:
    q.put(peak_rss_mb())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_a_spawned_child_does_not_report_its_parents_memory():
    ballast = np.ones((400, 1024, 1024), np.uint8)  # 400 MiB resident in this (parent) process
    assert peak_rss_mb() >= 400
    q = mp.get_context("spawn").Queue()
    p = mp.get_context("spawn").Process(target=_report, args=(q,))
    p.start()
    child = q.get(timeout=120)
    p.join(30)
    del ballast
    # a bare interpreter importing numpy and this module is tens of MiB (torch: a few hundred), not the
    # parent's 400 MiB on top (ru_maxrss carries the forked parent's peak across exec on Linux)
    assert 0 < child < peak_rss_mb() - 300
