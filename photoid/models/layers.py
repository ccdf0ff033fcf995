"""The small layers DOLG is made of, each doing one thing (arXiv 2108.02927)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class GeM(nn.Module):
    """Generalised-mean pooling over H×W: (mean x^p)^(1/p), p learned; p=1 is average, p→∞ max."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)


class MultiAtrous(nn.Module):
    """Parallel 3×3 convolutions with different dilations plus an image-level branch, concatenated."""

    def __init__(self, in_channels: int, out_channels: int, dilations: tuple[int, ...] = (3, 6, 9)):
        super().__init__()
        branch = out_channels // (len(dilations) + 1)
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, branch, 3, padding=d, dilation=d) for d in dilations)
        self.image_level = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, branch, 1))
        self.out_channels = branch * (len(dilations) + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pooled = F.interpolate(self.image_level(x), size=(h, w), mode="nearest")
        return torch.cat([b(x) for b in self.branches] + [pooled], dim=1)


class SpatialAttention(nn.Module):
    """DOLG's local self-attention, as the paper's code has it: ``x = bn(conv1×1(x))``; the output is
    ``normalize(x) · softplus(conv1×1(relu(x)))``: the channel-L2-normalised map (normalised *before*
    the ReLU, so it keeps its negative half) weighted by one attention score per location."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 1)
        self.bn = nn.BatchNorm2d(channels)
        self.score = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        attention = F.softplus(self.score(F.relu(x)))
        return F.normalize(x, p=2, dim=1) * attention


class LocalBranch(nn.Module):
    """Multi-atrous convolution (ReLU) → self-attention: the local features f_l (C×H×W)."""

    def __init__(self, in_channels: int, dim: int, dilations: tuple[int, ...] = (3, 6, 9)):
        super().__init__()
        self.atrous = MultiAtrous(in_channels, dim, dilations)
        self.attention = SpatialAttention(self.atrous.out_channels, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(F.relu(self.atrous(x)))


def orthogonal_fusion(f_l: torch.Tensor, f_g: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The component of every local vector orthogonal to the global one.

    ``f_proj = (f_l · f_g) / ‖f_g‖² · f_g`` at each location; ``f_orth = f_l − f_proj``. The
    denominator is squared: dividing by ‖f_g‖ (as some public ports do) leaves f_orth not orthogonal.
    f_l: (B, C, H, W); f_g: (B, C). Returns (B, C, H, W).
    """
    dot = torch.einsum("bchw,bc->bhw", f_l, f_g)
    norm2 = f_g.pow(2).sum(dim=1).clamp(min=eps)
    f_proj = (dot / norm2[:, None, None]).unsqueeze(1) * f_g[:, :, None, None]
    return f_l - f_proj
