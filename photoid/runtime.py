"""Device, seeds and threads: set the same way by every stage."""

from __future__ import annotations

import os
import random

import numpy as np


def pick_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def use_all_cores() -> None:
    """Undo ``OMP_NUM_THREADS=1``, which ``import ultralytics`` sets when it is unset: on a CPU box
    torch would then train on one core."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
