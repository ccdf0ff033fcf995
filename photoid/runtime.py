"""Device, seeds and threads: set the same way by every stage."""

from __future__ import annotations

import os
import random

import numpy as np


def pick_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_device(name: str = ""):
    """The torch device to run on: ``name`` when given, else this process's GPU (``LOCAL_RANK``
    under torchrun) when there is one, else the CPU."""
    import torch

    if name:
        return torch.device(name)
    if pick_device() == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def autocast(device):
    """bf16 autocast on CUDA, nothing elsewhere: how every forward pass runs."""
    import torch

    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

