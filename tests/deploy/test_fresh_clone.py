"""A machine with only the cloned repository: its own thin environment, and the README's first
command starting the whole stack with nothing beside the checkout (no ``../shared``).

Each test clones this repository (its committed HEAD) into an empty folder and sources
``deploy/bootstrap.sh`` there, as the README's commands do.  The shared environment in
``$LINEWATCH_CACHE`` is reused (the dependencies are installed once per machine) and must come out
of it unchanged: nothing of a checkout is installed into it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .test_local_stack import REPO, TINY_FIRST_MODEL, LocalStack, _groups_alive, _inspections

pytestmark = pytest.mark.kafka  # the stack starts its own broker with deploy/kafka/kafka.sh


def _clone(dest: Path) -> Path:
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(dest)], check=True, timeout=120)
    return dest


def _plain_env() -> dict[str, str]:
    """The caller's environment without what points at this checkout (as in a new terminal)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "LINEWATCH_PY", "VIRTUAL_ENV", "LINEWATCH_SHARED_DIR")}
    here = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != here)
    return env


def _in_checkout(checkout: Path, script: str) -> subprocess.CompletedProcess:
    """``source deploy/bootstrap.sh test`` in ``checkout``, then ``script``, run from ``/``."""
    return subprocess.run(["bash", "-c", f"source deploy/bootstrap.sh test >&2 && cd / && {script}"], cwd=checkout,
                          env=_plain_env(), capture_output=True, text=True, timeout=900)


def _shared_site() -> Path:
    cache = Path(os.environ.get("LINEWATCH_CACHE") or Path(os.environ.get("XDG_CACHE_HOME")
                                                             or Path.home() / ".cache") / "linewatch")
    return next((cache / "venv" / "lib").glob("python3*/site-packages"))


def test_two_checkouts_never_run_each_others_code(tmp_path):
    a, b = _clone(tmp_path / "a" / "linewatch"), _clone(tmp_path / "b" / "linewatch")
    (b / "detector" / "__init__.py").write_text((b / "detector" / "__init__.py").read_text() + "\nCHECKOUT = 'b'\n")
    site = _shared_site()
    before = sorted(p.name for p in site.iterdir())

    probe = ("python -c 'import detector, storage; print(detector.__file__, storage.__file__, "
             "getattr(detector, \"CHECKOUT\", \"a\"))' && linewatch-detector --help >/dev/null && "
             "linewatch-detector retrain --help | head -1 && command -v linewatch-detector")
    runs = {name: _in_checkout(root, probe) for name, root in (("a", a), ("b", b))}
    for name, root in (("a", a), ("b", b)):
        run = runs[name]
        assert run.returncode == 0, run.stderr[-3000:]
        det, sto, mark = run.stdout.splitlines()[0].split()
        assert (det, sto, mark) == (str(root / "detector" / "__init__.py"), str(root / "storage" / "__init__.py"),
                                    name)
        assert run.stdout.splitlines()[-1] == str(root / ".venv" / "bin" / "linewatch-detector")
        assert "usage: linewatch-detector retrain" in run.stdout  # the storage plug-in of its own checkout
    # the shared environment holds the dependencies only: no checkout was installed into it
    assert sorted(p.name for p in site.iterdir()) == before
    # a second start installs nothing
    again = _in_checkout(a, "true")
    assert again.returncode == 0 and "[bootstrap]" not in again.stderr, again.stderr


def test_fresh_clone_starts_the_local_stack_with_nothing_beside_it(tmp_path):
    """README command 1 in a clone with no ../shared: the masker weights come from the install."""
    root = _clone(tmp_path / "empty" / "linewatch")
    assert not (root.parent / "shared").exists()
    state = tmp_path / "state"
    stack = LocalStack(state, tmp_path, {**_plain_env(), **TINY_FIRST_MODEL, "LINEWATCH_BOOTSTRAP_EXTRAS": "test"},
                       repo=root)
    try:
        stack.start()
        stack.wait_for("banner", lambda: "linewatch is running" in stack.stdout(), timeout=900)
        assert "first model trained and registered" in stack.stderr()
        db = state / "data" / "linewatch.db"
        stack.wait_for("inspections", lambda: _inspections(db) >= 3, timeout=300)
        stack.remember_groups()
        assert stack.stop("SIGINT") == 0, stack.stderr()[-4000:]
        assert not _groups_alive(stack.pgids)
    finally:
        stack.kill_everything()
    train = (state / "first-model" / "flange.train.json").read_text()
    assert "/shared/" not in train and "tf_efficientnet_lite0_in1k.safetensors" in train, train[:2000]
