"""Multi-scale gradient-magnitude similarity (MSGMS) and SSIM.

GMS(x, y) = (2 g_x g_y + c) / (g_x^2 + g_y^2 + c), with Prewitt gradient magnitudes of the grey
images and c = 0.0026 (images in [0, 1]).  Three scales (1, 1/2, 1/4, by 2x2 average pooling).

* :func:`msgms_map` -- the anomaly map: 1 - mean over scales of GMS (each upsampled to the input
  size), optionally smoothed by a k x k mean filter.  It is 0 where the images are identical.
* :func:`msgms_loss` -- the training loss: mean over scales of mean(1 - GMS).
* :func:`ssim_loss` -- 1 - SSIM (11 x 11 Gaussian window, sigma 1.5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GMS_C = 0.0026
SCALES = 3

_PREWITT_X = torch.tensor([[1.0, 0.0, -1.0], [1.0, 0.0, -1.0], [1.0, 0.0, -1.0]]) / 3.0


def _grey(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=1, keepdim=True) if x.shape[1] != 1 else x


def _gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    kx = _PREWITT_X.to(x.device, x.dtype).view(1, 1, 3, 3)
    ky = kx.transpose(-1, -2)
    xp = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(xp, kx)
    gy = F.conv2d(xp, ky)
    return torch.sqrt(gx * gx + gy * gy + 1e-12)


def gms(x: torch.Tensor, y: torch.Tensor, c: float = GMS_C) -> torch.Tensor:
    gx, gy = _gradient_magnitude(_grey(x)), _gradient_magnitude(_grey(y))
    return (2 * gx * gy + c) / (gx * gx + gy * gy + c)


def _pyramid(x: torch.Tensor, y: torch.Tensor, scales: int):
    for s in range(scales):
        if s:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        yield x, y


def msgms_map(x: torch.Tensor, y: torch.Tensor, scales: int = SCALES, smooth: int = 0) -> torch.Tensor:
    """Anomaly map ``[B,1,H,W]`` (float32): 1 - multi-scale GMS, mean-filtered with ``smooth`` x ``smooth``."""
    x, y = x.float(), y.float()
    size = x.shape[-2:]
    acc = torch.zeros(x.shape[0], 1, *size, device=x.device)
    for xs, ys in _pyramid(x, y, scales):
        g = gms(xs, ys)
        acc += F.interpolate(g, size=size, mode="bilinear", align_corners=False) if g.shape[-2:] != size else g
    amap = 1.0 - acc / scales
    if smooth and smooth > 1:
        amap = F.avg_pool2d(F.pad(amap, [smooth // 2] * 4, mode="reflect"), smooth, stride=1)
    return amap.clamp_min(0.0)


def msgms_loss(x: torch.Tensor, y: torch.Tensor, scales: int = SCALES) -> torch.Tensor:
    return torch.stack([(1.0 - gms(xs, ys)).mean() for xs, ys in _pyramid(x.float(), y.float(), scales)]).mean()


def _gaussian_window(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float32, device=device) - size // 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim_loss(x: torch.Tensor, y: torch.Tensor, window: int = 11) -> torch.Tensor:
    x, y = x.float(), y.float()
    c = x.shape[1]
    w = _gaussian_window(window, device=x.device).expand(c, 1, window, window)
    pad = window // 2

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, [pad] * 4, mode="reflect"), w, groups=c)

    mx, my = filt(x), filt(y)
    sxx = filt(x * x) - mx * mx
    syy = filt(y * y) - my * my
    sxy = filt(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    ssim = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return 1.0 - ssim.mean()
