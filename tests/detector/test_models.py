import pytest
import torch

from detector.models.ear_fader.fader import FADeR, GATE_EPS, patch_ranking_loss, patchify, ranking_loss
from detector.models.ear_fader.mosaic import cell_topq_mask, mosaic, obfuscate
from detector.models.ear_fader.msgms import msgms_loss, msgms_map, ssim_loss
from detector.models.ear_fader.unet import UNet


def test_mosaic_leaves_unmasked_pixels_unchanged():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    sal = torch.rand(2, 1, 32, 32, generator=g)
    mask = cell_topq_mask(sal, 8, 0.5)
    out = obfuscate(x, mask, 8)
    keep = ~mask.bool().expand_as(x)
    assert torch.equal(out[keep], x[keep])  # bit-exact
    # masked pixels hold the mean of their 8x8 cell, and they do differ from the original
    assert torch.allclose(out[~keep], mosaic(x, 8)[~keep])
    assert not torch.equal(out, x)


def test_topq_mask_is_cell_aligned_fraction():
    sal = torch.rand(3, 1, 64, 64)
    for q in (0.25, 0.5, 1.0):
        mask = cell_topq_mask(sal, 8, q)
        cells = torch.nn.functional.avg_pool2d(mask, 8)
        assert set(cells.unique().tolist()) <= {0.0, 1.0}  # whole cells only
        assert cells.flatten(1).sum(1).tolist() == [round(q * 64)] * 3


def test_ranking_loss_zero_when_ordered_beyond_margin_positive_otherwise():
    margin = 0.1
    true_i, true_j = torch.tensor([2.0, 0.5]), torch.tensor([1.0, 3.0])
    ordered_i, ordered_j = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5])  # gaps 0.5 > margin, right sign
    assert ranking_loss(ordered_i, ordered_j, true_i, true_j, margin).item() == 0.0
    within = ranking_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.95, 0.05]), true_i, true_j, margin)
    assert within.item() > 0.0  # right order but inside the margin
    wrong = ranking_loss(ordered_j, ordered_i, true_i, true_j, margin)
    assert wrong.item() > within.item() > 0.0
    # over an image's patches, all pairs (16 * 16 <= 256) and sampled (64 < 256): a perfectly ordered
    # prediction with wide gaps costs nothing, a reversed one does
    target = torch.arange(16.0).repeat(2, 1)
    for max_pairs in (256, 64):
        gen = torch.Generator().manual_seed(0)
        assert patch_ranking_loss(target * 1.0, target, margin, max_pairs, gen).item() == 0.0
        assert patch_ranking_loss(-target, target, margin, max_pairs, gen).item() > 0.0


def test_patch_ranking_loss_uses_every_pair_when_allowed():
    margin = 0.1
    pred, target = torch.randn(3, 10), torch.randn(3, 10)
    every = ranking_loss(pred[:, :, None], pred[:, None, :], target[:, :, None], target[:, None, :], margin)
    assert torch.equal(patch_ranking_loss(pred, target, margin, 100), every)
    # one swapped pair in an otherwise perfectly ordered image is always seen with all pairs
    ordered = torch.arange(10.0)[None]
    swapped = ordered.clone()
    swapped[0, [3, 4]] = swapped[0, [4, 3]]
    assert patch_ranking_loss(swapped, ordered, margin, 100).item() > 0.0


@pytest.mark.parametrize("norm", ["minmax", "fixed"])
def test_soft_mask_in_open_unit_interval(norm):
    f = FADeR(8, 64, "mlp", "soft", norm)
    x = torch.rand(4, 3, 64, 64)
    pred = f.predict(x)
    if norm == "fixed":
        f.set_fixed_stats(pred)
    g = f.gate(pred)
    assert g.shape == (4, 1, 8, 8)
    assert (g > 0).all() and (g < 1).all()
    assert g.min() >= GATE_EPS - 1e-6 and g.max() <= 1 - GATE_EPS + 1e-6
    assert g.std() > 0  # not constant


def test_binary_mask_and_vit_head():
    f = FADeR(8, 64, "vit", "binary", "minmax")
    g = f(torch.rand(2, 3, 64, 64))
    assert set(g.unique().tolist()) <= {0.0, 1.0}


def test_soft_mask_changes_decoder_input_on_every_skip():
    torch.manual_seed(0)
    net = UNet(base_channels=4).eval()
    f = FADeR(8, 64).eval()
    x = torch.rand(2, 3, 64, 64)
    seen = {}

    def hook(mod, args, out):
        seen[mod.depth] = (args[0].clone(), out.clone())

    for gate in net.skip_gates:
        gate.register_forward_hook(hook)
    with torch.no_grad():
        gate_map = f(x)
        y_gated = net(x, gate_map)
        assert sorted(seen) == [1, 2, 3, 4]  # one attenuation hook per skip, depths 1..D-1
        for depth, (inp, out) in seen.items():
            assert inp.shape == out.shape
            assert not torch.allclose(inp, out), f"skip {depth} not attenuated"
            assert (out.abs() <= inp.abs() + 1e-6).all()  # attenuation only
        seen.clear()
        y_plain = net(x)
        for depth, (inp, out) in seen.items():
            assert torch.equal(inp, out)  # identity without a gate
    assert not torch.allclose(y_gated, y_plain)


def test_unet_shapes_and_levels():
    net = UNet(base_channels=4, depth=5)
    assert len(net.encoder) == 5 and len(net.decoder) == 5 and len(net.skip_gates) == 4
    enc = net.encoder[0]
    convs = [m for m in enc if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(1, 1), (1, 1), (2, 2)]
    dec = net.decoder[0]
    assert isinstance(dec[0], torch.nn.Upsample) and dec[0].mode == "nearest"
    feats = net.encode(torch.rand(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]
    assert net(torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_msgms_of_identical_images_is_zero():
    x = torch.rand(2, 3, 64, 64)
    assert msgms_map(x, x).abs().max().item() < 1e-6
    assert msgms_map(x, x, smooth=7).abs().max().item() < 1e-6
    assert abs(msgms_loss(x, x).item()) < 1e-6
    assert abs(ssim_loss(x, x).item()) < 1e-5
    y = x.clone()
    y[:, :, 20:30, 20:30] = 0.0
    amap = msgms_map(x, y)
    assert amap[:, :, 20:30, 20:30].mean() > 10 * amap[:, :, 45:, 45:].mean()


def test_patchify_matches_grid():
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16)
    t = patchify(x, 8)
    assert t.shape == (2, 4, 3 * 64)
    assert torch.equal(t[0, 1].view(3, 8, 8), x[0, :, :8, 8:])  # row-major tokens


def test_vit_attention_masker_random_small_vit():
    from detector.models.ear_fader.maskers import MaskerConfig, build_masker

    cfg = MaskerConfig(kind="vit", arch="vit_tiny_patch16_224", pretrained=False, input_size=64)
    m = build_masker(cfg)
    sal = m(torch.rand(2, 3, 96, 96))
    assert sal.shape == (2, 1, 96, 96)
    assert torch.isfinite(sal).all() and (sal >= 0).all()
