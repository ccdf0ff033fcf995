"""DOLG: deep orthogonal fusion of local and global features (arXiv 2108.02927) on a timm backbone.

The backbone is the same timm model that train-backbone trained as a classifier (module names
and all), so that stage's weights load as they are. Its last two stages feed the two branches:

    penultimate map ─► local branch (multi-atrous, 1×1, attention) ─► f_l (C×H×W) ─┐
    activated last map ─► GeM ─► linear ─► f_g (C) ──────────────────┬─► orthogonal fusion
                                                                     │   f_orth = f_l − proj_{f_g} f_l
                                                                     │        │ average pool
                                                                     └─► concat [pool(f_orth), f_g] ─► linear + BN ─► embedding

The global branch pools the backbone's *final* features (``forward_features``: for EfficientNet
after ``conv_head`` + ``bn2`` + activation; for ResNet the last stage's ReLU output), never the last
block's raw output: that has no activation in EfficientNet and ConvNeXt, and GeM's clamp to
positive values would zero about half of it. It also means every backbone module receives
gradients (DDP needs that).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from photoid.models.layers import GeM, LocalBranch, orthogonal_fusion
from photoid.models.weights import create_backbone


class DOLG(nn.Module):
    def __init__(self, backbone: str, embedding_dim: int = 512, local_dim: int = 512,
                 dilations: tuple[int, ...] = (3, 6, 9), gem_p: float = 3.0, pretrained="false",
                 drop_rate: float = 0.0):
        super().__init__()
        self.backbone, self.weights_report = create_backbone(backbone, pretrained)
        mid_channels = self.backbone.feature_info[-2]["num_chs"]
        last_channels = self.backbone.num_features
        self.local = LocalBranch(mid_channels, local_dim, tuple(dilations))
        self.gem = GeM(gem_p)
        self.global_fc = nn.Linear(last_channels, local_dim)
        self.dropout = nn.Dropout(drop_rate)
        self.neck = nn.Sequential(nn.Linear(2 * local_dim, embedding_dim), nn.BatchNorm1d(embedding_dim))
        self.embedding_dim = embedding_dim

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f_l, f_g) of a batch of images."""
        final, (mid, _) = self.backbone.forward_intermediates(x, indices=2)
        return self.local(mid), self.global_fc(self.gem(final))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f_l, f_g = self.branches(x)
        f_orth = orthogonal_fusion(f_l, f_g)
        fused = torch.cat([f_orth.mean(dim=(-2, -1)), f_g], dim=1)
        return self.neck(self.dropout(fused))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by part, for discriminative learning rates (backbone < DOLG < neck; head apart)."""
        return {
            "backbone": list(self.backbone.parameters()),
            "dolg": [*self.local.parameters(), *self.gem.parameters(), *self.global_fc.parameters()],
            "neck": list(self.neck.parameters()),
        }


class Classifier(nn.Module):
    """A timm backbone as a plain classifier (train-backbone); ``embed`` gives its pooled features."""

    def __init__(self, backbone: str, n_classes: int, pretrained="false", drop_rate: float = 0.0):
        super().__init__()
        self.backbone, self.weights_report = create_backbone(backbone, pretrained, drop_rate=drop_rate)
        self.fc = nn.Linear(self.backbone.num_features, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"backbone": list(self.backbone.parameters()), "head": list(self.fc.parameters())}
