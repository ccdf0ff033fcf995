"""The training losses, each a callable ``loss(model, images, labels)`` as the training loop takes it.

- :class:`ClassifierLoss`: cross-entropy with label smoothing of a classifier's logits
  (train-backbone: the backbone pre-trained as a classifier of the fold's individuals, the winners' way);
- :class:`ArcFaceLoss`: cross-entropy of an ArcFace head's scaled cosine logits, the true class's
  carrying its additive angular margin (train-dolg and retrain: each class's margin adapted to its
  photo count, :func:`photoid.models.arcface.adaptive_margins`, inside the head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ClassifierLoss:
    """Label-smoothed cross-entropy of ``model(images)``."""

    label_smoothing: float = 0.0

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(images), labels, label_smoothing=self.label_smoothing)


@dataclass(frozen=True)
class ArcFaceLoss:
    """Cross-entropy of ``model(images, labels)``: the ArcFace logits, margins applied to the true class."""

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(images, labels), labels)
