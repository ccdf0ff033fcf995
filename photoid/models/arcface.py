"""ArcFace with per-class adaptive margins and sub-centres.

The logit of the true class is ``s · cos(θ + m_c)``, of every other class ``s · cos θ``; ``m_c``
is larger for rare individuals (they need the push most), from the class's training count n_c:

- ``minmax`` (a seed's rule): ``m_c = m_min + (m_max − m_min) · (n_c^−¼ − min) / (max − min)``,
  min and max of n^−¼ over the classes;
- ``power`` (Happywhale 1st): ``m_c = a · n_c^p + b`` (a 0.271, p −0.364, b 0.05).

With ``k`` sub-centres each class has k weight vectors and its cosine is the best of them, so a
class with two looks (left and right side of a fin) need not average them.

Computed in fp32 even under autocast, with ``1 − cos²`` clamped before the square root: at
cos = ±1 the naive form NaNs, and in bf16 the margin drowns in rounding.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def adaptive_margins(counts, rule: str = "minmax", m_min: float = 0.05, m_max: float = 0.35,
                     a: float = 0.271, p: float = -0.364, b: float = 0.05) -> np.ndarray:
    """Per-class margins from per-class training counts (any order; one margin per count)."""
    n = np.asarray(counts, dtype=np.float64)
    if (n < 1).any():
        raise ValueError("every class needs at least one training image to have a margin")
    if rule == "minmax":
        t = n ** -0.25
        span = t.max() - t.min()
        if span == 0:
            return np.full_like(n, (m_min + m_max) / 2)
        return m_min + (m_max - m_min) * (t - t.min()) / span
    if rule == "power":
        return a * n ** p + b
    if rule == "fixed":
        return np.full_like(n, m_max)
    raise ValueError(f"unknown margin rule {rule!r}: use minmax, power or fixed")


class ArcFaceHead(nn.Module):
    def __init__(self, dim: int, n_classes: int, margins, scale: float = 30.0, subcenters: int = 1):
        super().__init__()
        self.n_classes, self.subcenters, self.scale = n_classes, subcenters, scale
        self.weight = nn.Parameter(torch.empty(n_classes * subcenters, dim))
        nn.init.xavier_uniform_(self.weight)
        margins = torch.as_tensor(np.asarray(margins, dtype=np.float32))
        if margins.numel() == 1:
            margins = margins.expand(n_classes).clone()
        if margins.shape != (n_classes,):
            raise ValueError(f"need one margin per class ({n_classes}), got {tuple(margins.shape)}")
        self.register_buffer("margins", margins)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, n_classes): each class's best sub-centre cosine, in fp32."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            cos = F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(self.weight.float(), dim=1))
            if self.subcenters > 1:
                cos = cos.view(-1, self.n_classes, self.subcenters).amax(dim=2)
            return cos

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled logits; with ``labels`` the true class's logit carries its margin."""
        cos = self.cosine(embeddings)
        if labels is None:
            return cos * self.scale
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            m = self.margins[labels]
            cos_t = cos.gather(1, labels[:, None]).squeeze(1).clamp(-1.0, 1.0)
            sin_t = torch.sqrt((1.0 - cos_t * cos_t).clamp(min=1e-7))
            target = cos_t * torch.cos(m) - sin_t * torch.sin(m)  # cos(θ + m)
            # past θ + m = π, cos(θ + m) would rise again: keep the logit falling with θ instead
            target = torch.where(cos_t > torch.cos(math.pi - m), target, cos_t - torch.sin(math.pi - m) * m)
            logits = cos.scatter(1, labels[:, None], target[:, None])
            return logits * self.scale
