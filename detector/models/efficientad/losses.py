"""EfficientAD's training losses: the hard feature loss, the generic-image penalty and DFSC."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hard_feature_loss(teacher: torch.Tensor, student: torch.Tensor, quantile: float = 0.999) -> torch.Tensor:
    """Mean of the squared differences at or above their ``quantile`` (the rest gets no gradient).

    The student stops learning what it already imitates well, so it does not generalise to
    anomalies by over-fitting the easy, common patterns.
    """
    d = (teacher - student).pow(2)
    return d[d >= quantile_of(d, quantile)].mean()


def quantile_of(x: torch.Tensor, q: float) -> torch.Tensor:
    """The ``q`` quantile of all values of ``x`` (no gradient; torch.quantile stops at 2**24 values)."""
    flat = x.detach().flatten().float()
    if flat.numel() <= 1 << 24:
        return torch.quantile(flat, q)
    return flat.kthvalue(max(1, int(round(q * flat.numel())))).values


def penalty_loss(student_on_generic: torch.Tensor) -> torch.Tensor:
    """Keep the student's (teacher-imitating) output small on images that are not the product."""
    return student_on_generic.pow(2).mean()


def feature_distance(teacher: torch.Tensor, ae: torch.Tensor) -> torch.Tensor:
    """Per-feature distance: mean squared difference over channels at each location, [B,h,w]."""
    return (teacher - ae).pow(2).mean(1)


def dfsc_split(distance: torch.Tensor, quantile: float) -> torch.Tensor:
    """Bool mask of the novel features: those at or above the ``quantile`` of the distances."""
    return distance >= quantile_of(distance, quantile)


def dfsc_margin_loss(distance: torch.Tensor, novel: torch.Tensor, margin: float) -> torch.Tensor:
    """Hinge that keeps novel features at least ``margin`` away: zero when all are beyond it."""
    if not bool(novel.any()):
        return distance.sum() * 0.0
    return F.relu(margin - distance[novel]).mean()


def autoencoder_loss(teacher: torch.Tensor, ae: torch.Tensor, *, dfsc: bool = False, quantile: float = 0.9,
                     margin: float = 1.0) -> torch.Tensor:
    """The autoencoder's loss: plain mean squared error, or with DFSC the error on the similar
    features only plus the margin on the novel ones (the autoencoder is not pulled onto what it
    cannot reconstruct from the layout, so the student's second half keeps a gap there too)."""
    if not dfsc:
        return (teacher - ae).pow(2).mean()
    d = feature_distance(teacher, ae)
    novel = dfsc_split(d, quantile)
    similar = d[~novel].mean() if bool((~novel).any()) else d.sum() * 0.0
    return similar + dfsc_margin_loss(d, novel, margin)
