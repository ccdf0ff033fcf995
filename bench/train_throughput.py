"""Training throughput of three data and compute paths, each in its own process (so each peak RSS is
its own), side by side:

- naive: fp32, contiguous (NCHW) tensors, every crop's JPEG decoded (and resized by the augmentation)
  in the loader every epoch;
- cached: what the training stages do: crops decoded once at the training size into the memory-mapped
  crop cache (photoid.crop_cache), one DataLoader whose workers persist across epochs, pinned batches
  on CUDA, channels_last, bf16 autocast on CUDA (fp32 on a CPU, where bf16 is slower);
- cached + torch.compile: that, with the model compiled (compile time reported apart).

    python bench/train_throughput.py --backbone efficientnet_lite0 --img-size 160 --images 512
    python bench/train_throughput.py --backbone tf_efficientnet_b5 --img-size 512 --batch-size 32   # a GPU box

Synthetic JPEG crops (``--crop-size``, larger than the training size as stored crops are) are
written to a temporary folder. Each path trains ``--epochs`` epochs over ``--images`` crops; the
figures are of the last epoch (the first carries warm-up and compilation; the cache is built before
it, and its build time is printed). On CUDA the GPU's utilisation is sampled with nvidia-smi during
the timed epoch. Prints a table; ``--json FILE`` writes the rows too.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import typer
from PIL import Image
from torch.utils.data import DataLoader

from photoid.crop_cache import CropCache
from photoid.datasets import CropDataset, train_transform
from photoid.models import create_model
from photoid.runtime import autocast, torch_device
from photoid.train.loop import EpochSampler, SeededItems

PATHS = {"naive": "fp32, JPEG decoded every epoch", "cached": "crop cache + channels_last (+bf16 on CUDA)",
         "compiled": "the same + torch.compile"}
app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)


def synthetic_crops(folder: Path, n: int, size: int) -> list[str]:
    """``n`` JPEG crops of ``size`` px with some structure (smooth shapes and noise, ~like photos
    in how hard they are to decode)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    paths = []
    for i in range(n):
        base = np.stack([np.sin(xx * rng.uniform(2, 12) + rng.uniform(0, 6)) * np.cos(yy * rng.uniform(2, 12))
                         for _ in range(3)], -1)
        arr = np.clip(127 + 90 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        p = folder / f"{i:06d}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        paths.append(str(p))
    return paths


class GpuUtilisation:
    """nvidia-smi's utilisation.gpu of this process's GPU, sampled every 0.2 s while running."""

    def __init__(self, device: torch.device):
        self.index, self.samples, self._stop = device.index or 0, [], threading.Event()
        self.ok = device.type == "cuda" and shutil.which("nvidia-smi") is not None

    def _poll(self):
        while not self._stop.wait(0.2):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                  "-i", str(self.index)], capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip().isdigit():
                self.samples.append(int(out.stdout.strip()))

    def __enter__(self):
        if self.ok:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.ok:
            self._thread.join()

    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


def run_path(path: str, crops: list[str], backbone: str, img_size: int, batch_size: int, epochs: int, workers: int,
             cache_dir: Path) -> dict:
    device = torch_device()
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = create_model(dict(kind="classifier", backbone=backbone, n_classes=100)).to(device)
    labels = np.arange(len(crops)) % 100
    build_s = 0.0
    if path == "naive":
        ds = CropDataset(crops, labels, train_transform(img_size))
        loader_kw = dict(shuffle=True, num_workers=workers, pin_memory=False)
    else:
        t0 = time.perf_counter()
        cache = CropCache.open(crops, img_size, cache_dir, workers)
        build_s = time.perf_counter() - t0
        ds = SeededItems(CropDataset(crops, labels, train_transform(img_size), cache=cache))
        loader_kw = dict(sampler=EpochSampler(len(crops), 0), num_workers=workers, pin_memory=cuda,
                         persistent_workers=workers > 0)
        model = model.to(memory_format=torch.channels_last)
    loader = DataLoader(ds, batch_size=batch_size, drop_last=True, **loader_kw)
    net = torch.compile(model) if path == "compiled" else model
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    first_s = epoch_s = 0.0
    util = None
    for epoch in range(epochs):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        timed = epoch == epochs - 1
        meter = GpuUtilisation(device) if timed else None
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with meter or nullcontext():
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if path != "naive":
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(device) if path != "naive" else nullcontext():
                    loss = F.cross_entropy(net(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if cuda:
                torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        if epoch == 0:
            first_s = seconds
        if timed:
            epoch_s, util = seconds, meter.mean()
    images = len(loader) * batch_size
    return {"path": path, "device": torch.cuda.get_device_name(device) if cuda else "cpu",
            "img_per_s": images / epoch_s, "first_epoch_s": first_s, "cache_build_s": build_s,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None, "gpu_util_pct": util}


@app.command()
def main(backbone: str = typer.Option("efficientnet_lite0", help="timm model name."),
         img_size: int = typer.Option(160, help="Training image size."),
         crop_size: int = typer.Option(0, help="Size of the synthetic stored crops [default: 1.5 x img-size]."),
         images: int = typer.Option(512, help="Crops per epoch."),
         batch_size: int = typer.Option(32, help="Batch size."),
         epochs: int = typer.Option(2, help="Epochs per path; the last is timed."),
         workers: int = typer.Option(2, help="DataLoader worker processes."),
         paths: str = typer.Option("naive,cached,compiled", help="Which paths, comma-separated."),
         json_out: Path = typer.Option(None, "--json", help="Also write the rows to this JSON file."),
         only: str = typer.Option("", hidden=True), folder: Path = typer.Option(None, hidden=True)):
    if only:  # one path, in this process: the parent reads its JSON line
        crops = sorted(str(p) for p in folder.glob("*.jpg"))
        row = run_path(only, crops, backbone, img_size, batch_size, epochs, workers, folder / "cache")
        print("RESULT " + json.dumps(row))
        return
    work = Path(tempfile.mkdtemp(prefix="photoid-throughput-"))
    try:
        crop_size = crop_size or int(img_size * 1.5)
        t0 = time.perf_counter()
        synthetic_crops(work, images, crop_size)
        print(f"{backbone} at {img_size} px from {crop_size} px JPEG crops, batch {batch_size}, {images} crops, "
              f"{epochs} epochs per path (the last timed), {workers} workers; crops written in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        rows = []
        for path in paths.split(","):
            cmd = [sys.executable, __file__, "--only", path, "--folder", str(work), "--backbone", backbone,
                   "--img-size", str(img_size), "--batch-size", str(batch_size), "--epochs", str(epochs),
                   "--workers", str(workers)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if out.returncode != 0 or line is None:
                print(f"{path}: failed\n{out.stderr[-2000:]}")
                continue
            rows.append(json.loads(line[len("RESULT "):]))
        if not rows:
            raise SystemExit("no path ran")
        print(f"\n{'path':<45} {'img/s':>8} {'x naive':>8} {'1st epoch s':>12} {'cache s':>8} {'peak RSS MB':>12} "
              f"{'GPU MB':>7} {'GPU %':>6}")
        naive = next((r["img_per_s"] for r in rows if r["path"] == "naive"), None)
        for r in rows:
            gpu_mb = f"{r['peak_gpu_mb']:.0f}" if r["peak_gpu_mb"] is not None else "-"
            util = f"{r['gpu_util_pct']:.0f}" if r["gpu_util_pct"] is not None else "-"
            ratio = f"{r['img_per_s'] / naive:.2f}" if naive else "-"
            print(f"{PATHS[r['path']]:<45} {r['img_per_s']:>8.1f} {ratio:>8} {r['first_epoch_s']:>12.1f} "
                  f"{r['cache_build_s']:>8.1f} {r['peak_rss_mb']:>12.0f} {gpu_mb:>7} {util:>6}")
        print(f"device: {rows[0]['device']}")
        if json_out:
            json_out.write_text(json.dumps(rows, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    app()
