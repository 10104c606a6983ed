"""deploy/gpu-check.sh: the prepared GPU check runs its real steps on the CPU (--dry-run) and refuses
clearly where there is no CUDA device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "gpu-check.sh"


def _env() -> dict[str, str]:
    # the console script of the environment running the tests, importing this checkout
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)}


def test_dry_run_trains_checks_autocast_and_batching_and_times(tmp_path):
    out = tmp_path / "gpu-check.json"
    # CRAD: the quickest family to train on the CPU (the script does the same for every family)
    r = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--model", "crad", "--fps-seconds", "0.2", "--json", str(out)],
                       env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["profile"] == "smoke" and res["device"] == "cpu"
    assert res["image_auroc"] > 0.9  # the smoke profile separates the painted toy defects
    # on the CPU autocast is off, so float32 and "autocast" scores are the same numbers
    assert res["autocast"]["ok"] and res["autocast"]["auroc_float32"] == res["autocast"]["auroc_autocast"]
    assert res["batching"]["ok"] and res["batching"]["max_relative_difference"] <= 1e-3
    assert set(res["fps"]) == {"1", "8", "32"} and all(v > 0 for v in res["fps"].values())
    for row in res["backends"].values():  # each installed export runtime agrees with PyTorch
        assert row["max_relative_difference"] <= 1e-4, row
    assert "[gpu-check] autocast" in r.stdout and "[gpu-check] batching" in r.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the real check would run")
def test_without_cuda_it_says_so_and_exits_2():
    r = subprocess.run(["bash", str(SCRIPT)], env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "no CUDA device" in r.stderr and "--dry-run" in r.stderr
