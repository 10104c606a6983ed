"""The anomalib anchors (PaDiM, PatchCore) behind the family contract, on generated images.

Needs the ``bench`` extra (anomalib); CI does not install it, so this module skips there.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from detector.anchors import ANCHORS, available, fit_anchor

if not available():
    pytest.skip("anomalib not installed (the bench extra: pip install -e .[bench])", allow_module_level=True)

import timm  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from detector.data import MVTecFolder, load_images, to_tensor  # noqa: E402
from detector.synthetic import make_toy_dataset  # noqa: E402

SIZE = 64
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    ds = MVTecFolder.open(make_toy_dataset(tmp_path_factory.mktemp("toy"), n_train=16, n_good=8, n_bad=8,
                                           size=SIZE), need_test=True)
    train = to_tensor(load_images(ds.train, SIZE).images, CPU)
    test = load_images(ds.test, SIZE)
    labels = np.array([s.label for s in test.samples])
    return train, to_tensor(test.images, CPU), labels


@pytest.mark.parametrize("name", ANCHORS)
def test_anchor_contract_and_separation(toy, name):
    train, images, labels = toy
    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)
    model = fit_anchor(name, train, None, image_size=SIZE, progress=False)  # random backbone: no weights here
    assert torch.equal(torch.rand(1), expected_draw)  # fitting leaves the caller's RNG alone
    assert not model.training and model.image_size == SIZE
    scores, maps = model(images)
    assert scores.dtype == maps.dtype == torch.float32
    assert scores.shape == (len(images),) and maps.shape == (len(images), 1, SIZE, SIZE)
    assert torch.isfinite(scores).all() and torch.isfinite(maps).all()
    s = scores.numpy()
    assert s[labels == 1].mean() > s[labels == 0].mean()

    model.train()  # the contract module stays in eval mode: a forward must not grow a memory bank
    assert not model.training
    again, _ = model(images)
    assert torch.equal(again, scores)

    # the benchmark pickles the module and times it in a fresh process
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    torch.testing.assert_close(loaded(images)[0], scores)


@pytest.fixture(scope="module")
def lite0_file(tmp_path_factory):
    """A complete tf_efficientnet_lite0 state (random values) in the shared weights file's format."""
    torch.manual_seed(0)
    state = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    path = tmp_path_factory.mktemp("w") / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path, state


def test_weights_file_is_loaded_into_the_extractor(toy, lite0_file):
    path, state = lite0_file
    model = fit_anchor("patchcore", toy[0][:4], str(path), image_size=SIZE, progress=False)
    net = model.model.feature_extractor.feature_extractor
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_weights_file_missing_a_tensor_is_refused(toy, lite0_file, tmp_path):
    _, state = lite0_file
    bad = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items() if not k.startswith("blocks.2.0.conv_pw")}, str(bad))
    with pytest.raises(ValueError, match="missing.*blocks.2.0.conv_pw"):
        fit_anchor("padim", toy[0][:4], str(bad), image_size=SIZE, progress=False)


def test_bad_input_is_refused(toy):
    train = toy[0]
    with pytest.raises(ValueError, match="unknown anchor"):
        fit_anchor("nope", train, None, image_size=SIZE)
    with pytest.raises(ValueError, match="expected 32 x 32"):
        fit_anchor("padim", train, None, image_size=32)
    with pytest.raises(ValueError, match="uint8"):
        fit_anchor("padim", train.float(), None, image_size=SIZE)


def test_coreset_picks_are_anomalibs_k_center_greedy():
    """Our faster k-center greedy picks what anomalib's KCenterGreedy picks (same projection, same start)."""
    from types import SimpleNamespace

    from anomalib.models.components import KCenterGreedy
    from anomalib.models.components.dimensionality_reduction import SparseRandomProjection

    from detector.anchors import _subsample_coreset

    bank = torch.randn(4000, 48, generator=torch.Generator().manual_seed(0))
    model = SimpleNamespace(embedding_store=[bank[:1000], bank[1000:]])
    torch.manual_seed(1)
    _subsample_coreset(model, 0.02, seed=5, progress=False)
    torch.manual_seed(1)
    reference = KCenterGreedy(embedding=bank, sampling_ratio=0.02)
    reference.model = SparseRandomProjection(eps=0.9, random_state=5)
    assert model.embedding_store == []
    assert torch.equal(model.memory_bank, reference.sample_coreset())
