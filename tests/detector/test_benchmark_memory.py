"""The benchmark's peak-memory figure is the measured process's own, not its parent's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detector.benchmark import peak_rss_mb

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_a_child_process_does_not_report_its_parents_memory():
    ballast = np.ones((600, 1024, 1024), np.uint8)  # 600 MiB resident in this (parent) process
    parent = peak_rss_mb()
    assert parent >= 600
    # a fresh interpreter started by this process (fork + exec, as the benchmark's timing process is)
    out = subprocess.run([sys.executable, "-c", "from detector.benchmark import peak_rss_mb; print(peak_rss_mb())"],
                         cwd=REPO, capture_output=True, text=True, timeout=180, check=True)
    child = float(out.stdout.strip().splitlines()[-1])
    del ballast
    # the child is an interpreter with torch imported (a few hundred MiB); ru_maxrss would have reported
    # at least the parent's peak, which Linux carries across exec
    assert 0 < child < parent - 500, (child, parent)
