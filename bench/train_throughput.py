"""Training throughput and peak memory: fp32 with JPEG decoding in the loader, against bf16 +
channels_last from crops decoded once into memory, side by side in one run.

    python bench/train_throughput.py --backbone efficientnet_b0 --img-size 512 --batch-size 32

Uses the pipeline's crops (data/processed/crops) when they exist, else writes synthetic JPEG crops
to a temporary folder. Prints one row per mode. On CUDA bf16 is autocast on the GPU; on a CPU it is
CPU autocast (often slower than fp32 there: the comparison is for the GPU box).
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import typer
from PIL import Image
from torch.utils.data import DataLoader

from photoid.datasets import CropDataset, train_transform
from photoid.models import create_model


def _crops(n: int, size: int) -> list[str]:
    existing = sorted(Path("data/processed/crops/images").glob("*.jpg"))
    if len(existing) >= n:
        return [str(p) for p in existing[:n]]
    folder = Path(tempfile.mkdtemp(prefix="photoid-bench-"))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        p = folder / f"{i}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        paths.append(str(p))
    return paths


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(backbone: str, img_size: int, batch_size: int, steps: int, bf16_stored: bool, paths, workers: int) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = create_model(dict(kind="classifier", backbone=backbone, n_classes=100)).to(device)
    if bf16_stored and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    ds = CropDataset(paths, labels=np.arange(len(paths)) % 100, transform=train_transform(img_size), preload=bf16_stored)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    done, t0, it = 0, None, iter(loader)
    for step in range(steps + 2):  # two warm-up steps
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        if step == 2:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device)
        if bf16_stored and device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_stored):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= 2:
            done += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    return {"img_per_s": done / elapsed, "peak_mb": _peak_mb(device), "device": str(device)}


def main(backbone: str = typer.Option("efficientnet_b0", help="timm model name."),
         img_size: int = typer.Option(96, help="Training image size."),
         batch_size: int = typer.Option(32, help="Batch size."),
         steps: int = typer.Option(10, help="Timed steps per mode (after two warm-up steps)."),
         workers: int = typer.Option(2, help="Loader processes."),
         crop_size: int = typer.Option(0, help="Size of synthetic crops [default: img_size]."),
         ):
    paths = _crops(batch_size * 4, crop_size or img_size)
    print(f"{backbone} at {img_size}px, batch {batch_size}, {steps} steps, {len(paths)} crops")
    print(f"{'mode':<40} {'img/s':>8} {'peak MB':>9}")
    rows = {}
    for label, fast in (("fp32, JPEG decoded in the loader", False), ("bf16 + channels_last, stored crops", True)):
        r = run(backbone, img_size, batch_size, steps, fast, paths, workers)
        rows[label] = r
        print(f"{label:<40} {r['img_per_s']:>8.1f} {r['peak_mb']:>9.0f}   ({r['device']})", flush=True)
    a, b = rows.values()
    print(f"speed-up: {b['img_per_s'] / a['img_per_s']:.2f}x")
    if a["device"] == "cpu":
        print("peak MB on a CPU is the process's resident high-water mark, so the second row includes the first")


if __name__ == "__main__":
    typer.run(main)
