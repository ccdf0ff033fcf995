"""The training loop that train-backbone, train-dolg and retrain share.

- device picked automatically; on CUDA bf16 autocast and channels_last; optional torch.compile;
- AdamW with one param group per model part, each with its own LR, under a one-cycle schedule;
- gradient accumulation and clipping; img/s logged;
- deterministic: each epoch reseeds from (seed, epoch), so the same params give the same weights;
- resumable: after every epoch the full state (weights, optimiser, schedule, history) is written
  atomically to ``state_dir``; started again with the same key (params + data), it continues from
  the last completed epoch and ends with the same weights as an uninterrupted run. A different key
  never resumes: the stale state is discarded;
- multi-GPU/multi-process: started by ``torchrun`` (WORLD_SIZE > 1) it runs DistributedDataParallel
  (NCCL on CUDA, gloo on CPU), rank 0 alone writing state and outputs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler
from tqdm import tqdm

from photoid.io import atomic_path


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    lrs: dict = field(default_factory=lambda: {"backbone": 1e-3})  # peak LR per param group
    weight_decay: float = 1e-4
    pct_start: float = 0.2  # share of the schedule spent warming up
    grad_accum: int = 1
    clip_norm: float = 1.0  # 0: no clipping
    seed: int = 0
    workers: int = 0
    compile: bool = False
    device: str = ""  # '' = automatic


def config_key(*parts) -> str:
    """A digest of everything that decides the result; a state saved under another key is stale."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _seed_epoch(seed: int, epoch: int) -> int:
    s = seed * 100_003 + epoch
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    return s


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device:
        return torch.device(cfg.device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def build_optimizer(model: nn.Module, lrs: dict[str, float], weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with one group per part in ``model.param_groups()``; every part needs an LR in ``lrs``."""
    groups = model.param_groups()
    missing = sorted(set(groups) - set(lrs))
    if missing:
        raise ValueError(f"no learning rate for param groups {missing}; have {sorted(lrs)}")
    return torch.optim.AdamW([{"params": groups[name], "lr": lrs[name], "name": name} for name in groups],
                             weight_decay=weight_decay)


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def fit(model: nn.Module, loss_fn: LossFn, dataset: Dataset, cfg: TrainConfig, state_dir: Path | None, key: str,
        on_epoch_end: Callable[[nn.Module, int], dict] | None = None, log: Callable[[int, dict], None] | None = None,
        stop_after: int | None = None) -> list[dict]:
    """Train ``model`` in place; return the per-epoch history.

    ``loss_fn(model, images, labels)`` gives the loss; ``on_epoch_end(model, epoch)`` may return
    validation metrics (rank 0); ``log(epoch, metrics)`` records them (dvclive). ``stop_after``
    ends after that many epochs as if killed (for tests).
    """
    rank, world = distributed()
    device = _device(cfg)
    cuda = device.type == "cuda"
    model.to(device)
    if cuda:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.lrs, cfg.weight_decay)
    per_rank = math.ceil(len(dataset) / world)
    # a last batch of one sample cannot train BatchNorm (it raises): drop it, and only it
    drop_last = per_rank > cfg.batch_size and per_rank % cfg.batch_size == 1
    batches = per_rank // cfg.batch_size if drop_last else math.ceil(per_rank / cfg.batch_size)
    steps_per_epoch = math.ceil(batches / cfg.grad_accum)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], epochs=cfg.epochs,
        steps_per_epoch=max(1, steps_per_epoch), pct_start=cfg.pct_start)
    history: list[dict] = []
    start = 0
    state_file = state_dir / "state.pt" if state_dir is not None else None
    if state_file is not None and state_file.exists():
        state = torch.load(state_file, map_location="cpu", weights_only=False)
        if state.get("key") == key:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            history, start = state["history"], state["epoch"] + 1
            if rank == 0:
                print(f"resuming from epoch {start} of {cfg.epochs} ({state_file})")
        elif rank == 0:
            print(f"discarding a training state made with other params or data ({state_file})")
            state_file.unlink()
    for record in history:  # a resumed run re-logs what the killed one had logged
        if log is not None and rank == 0:
            log(record["epoch"], record)

    net = model
    if world > 1:
        if cuda:
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if cuda else None)
    if cfg.compile:
        net = torch.compile(net)

    for epoch in range(start, cfg.epochs):
        s = _seed_epoch(cfg.seed, epoch)
        generator = torch.Generator().manual_seed(s)
        sampler = (DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=False)
                   if world > 1 else RandomSampler(dataset, generator=generator))
        if world > 1:
            sampler.set_epoch(epoch)
        loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                            generator=generator, pin_memory=cuda, drop_last=drop_last, persistent_workers=False)
        net.train()
        total, count, t0 = 0.0, 0, time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=rank != 0, leave=False)
        for step, (x, y) in enumerate(bar):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = loss_fn(net, x, y)
            (loss / cfg.grad_accum).backward()
            last = step + 1 == len(loader)
            if (step + 1) % cfg.grad_accum == 0 or last:
                if cfg.clip_norm:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if scheduler.last_epoch + 1 < scheduler.total_steps:
                    scheduler.step()
            total += loss.item() * len(x)
            count += len(x)
            bar.set_postfix(loss=f"{total / count:.3f}")
        elapsed = time.perf_counter() - t0
        record = {"epoch": epoch, "train_loss": total / max(count, 1), "img_per_s": count * world / elapsed,
                  "lr": {g["name"]: g["lr"] for g in optimizer.param_groups}}
        if rank == 0:
            if on_epoch_end is not None:
                model.eval()
                with torch.no_grad():
                    record.update(on_epoch_end(model, epoch))
            history.append(record)
            if log is not None:
                log(epoch, record)
            print(f"epoch {epoch + 1}/{cfg.epochs}: " + ", ".join(
                f"{k} {v:.4g}" for k, v in record.items() if isinstance(v, float)))
            if state_file is not None:
                with atomic_path(state_file) as tmp:
                    torch.save({"key": key, "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(), "history": history}, tmp)
        if world > 1:
            dist.barrier()
        if stop_after is not None and epoch + 1 - start >= stop_after:
            break
    return history


def finished(state_dir: Path | None) -> None:
    """Remove the resume state once the outputs are safely written."""
    if state_dir is not None and (state_dir / "state.pt").exists():
        (state_dir / "state.pt").unlink()
