"""The crops as tensors, for training and for inference (embed, bench): datasets, and the
augmentations that suit fins and flukes.

Augmentations: random scale and aspect (RandomResizedCrop), small shift and tilt, colour and
exposure jitter, blur; horizontal flip only if asked (a flipped left side looks like a right
side, which helps when both sides are photographed and hurts when only one is).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def train_transform(img_size: int, hflip: bool = False) -> v2.Compose:
    steps = [
        v2.RandomResizedCrop(img_size, scale=(0.7, 1.0), ratio=(0.8, 1.25), antialias=True),
        v2.RandomAffine(degrees=10, translate=(0.05, 0.05)),
        v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.2, hue=0.02),
        v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.2),
    ]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])


def eval_transform(img_size: int) -> v2.Compose:
    return v2.Compose([v2.Resize((img_size, img_size), antialias=True), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(MEAN, STD)])


def decode(path: str) -> torch.Tensor:
    """A crop as a 3×H×W uint8 RGB tensor. Decoded by PIL: torchvision's image decoding is deprecated
    since torchvision 0.29 (a warning on every call) and gives the same pixels for these JPEG crops."""
    with Image.open(path) as img:
        return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).contiguous()


class CropDataset(Dataset):
    """Crops with integer labels (-1 for unlabelled), decoded from their JPEG files, or read from a
    :class:`photoid.crop_cache.CropCache` that holds them decoded at the training size (no JPEG
    decoding, no data set in RAM)."""

    def __init__(self, paths, labels=None, transform=None, cache=None):
        self.paths = [str(p) for p in paths]
        self.labels = np.full(len(self.paths), -1, np.int64) if labels is None else np.asarray(labels, np.int64)
        self.transform = transform
        self.cache = cache
        self.rows = np.array([cache.row(p) for p in self.paths], np.int64) if cache is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = self.cache.image(self.rows[i]) if self.cache is not None else decode(self.paths[i])
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[i])
