"""EAR obfuscation: pixels under the binary mask are replaced by a mosaic of the image.

The mosaic at scale ``m`` is an ``m x m`` average pooling followed by nearest upsampling, so each
``m x m`` cell becomes its mean colour.  Pixels outside the mask are copied bit-exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mosaic(x: torch.Tensor, m: int) -> torch.Tensor:
    """``[B,C,H,W]`` -> the same size, each ``m x m`` cell replaced by its mean (H, W divisible by m)."""
    if x.shape[-1] % m or x.shape[-2] % m:
        raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by the mosaic scale {m}")
    return F.interpolate(F.avg_pool2d(x, m, m), scale_factor=m, mode="nearest")


def obfuscate(x: torch.Tensor, mask: torch.Tensor, m: int) -> torch.Tensor:
    """Replace the pixels where ``mask`` ([B,1,H,W], nonzero = masked) is set by the mosaic of ``x``."""
    return torch.where(mask.to(torch.bool), mosaic(x, m), x)


def cell_topq_mask(saliency: torch.Tensor, m: int, q: float) -> torch.Tensor:
    """Binarise a saliency map ([B,1,H,W]) into the mask M_B: the top-``q`` fraction of ``m x m`` cells.

    The saliency is averaged over the mosaic cells first, so the mask is aligned with the mosaic grid
    (and with FADeR's tokens): a cell is either fully obfuscated or untouched.  At least one cell is
    always masked.  Returns a float mask of 0/1 at the input resolution.
    """
    cells = F.avg_pool2d(saliency.float(), m, m)  # [B,1,h,w]
    flat = cells.flatten(1)
    n = int(flat.shape[1])  # a plain int: the cell count is fixed by the input size (TorchScript traces it)
    k = max(1, min(n, int(round(q * n))))
    thr = flat.topk(k, dim=1).values[:, -1:]  # k-th largest per image
    cell_mask = (flat >= thr).to(saliency.dtype if saliency.is_floating_point() else torch.float32)
    cell_mask = cell_mask.view_as(cells)
    return F.interpolate(cell_mask, scale_factor=m, mode="nearest")
