"""The training loop that train-backbone, train-dolg and retrain share.

- device picked automatically; channels_last (on a 2-core CPU too: a third less time per DOLG epoch);
  on CUDA bf16 autocast; optional torch.compile;
- AdamW with one param group per model part, each with its own peak LR, under a one-cycle schedule
  (linear warm-up, cosine decay);
- linear probe, then fine-tune: for the first ``freeze_epochs`` the backbone is frozen (no
  gradients, BatchNorm statistics kept) while the new layers learn; the backbone's own one-cycle
  starts when it is released, so a pretrained backbone is never hit by the new layers' first,
  random gradients at its peak LR;
- early stages kept: the backbone's first ``frozen_stages`` feature stages (timm's feature_info)
  never train, their BatchNorm statistics included: few photos per individual cannot improve
  ImageNet's edges and textures, and the backward pass stops before them (faster);
- the epoch kept is the best by ``select`` (a validation metric, e.g. ``val_map5``), not the last;
  with ``select_initial`` the starting weights are scored first and compete too (epoch -1), so
  fine-tuning a trained model (retrain) cannot end worse than it began on that metric;
- gradient accumulation and clipping; img/s logged;
- deterministic: each epoch reseeds from (seed, epoch), and each image's augmentation is drawn from
  (seed, epoch, image) alone (:class:`EpochSampler`), so the same params give the same weights
  whatever the number of DataLoader workers;
- one DataLoader for the whole run: its workers persist across epochs, batches are pinned on CUDA,
  and with a crop cache (photoid.crop_cache) no epoch decodes a JPEG;
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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from photoid.io import atomic_path
from photoid.runtime import autocast, seed_everything, torch_device
from photoid.train.losses import LossFn


@dataclass(frozen=True)
class TrainConfig:
    """The loop's settings. Those above the line are params.yaml's (train.* with the stage's epochs,
    weight_decay and freeze_epochs; see photoid.train.fold.train_config); those below are set by code
    (a stage derives its own with ``dataclasses.replace``: a config is never changed in place)."""

    epochs: int
    batch_size: int
    weight_decay: float
    freeze_epochs: int  # epochs with the backbone frozen (linear probe) before fine-tuning
    frozen_stages: int  # the backbone's first feature stages that never train
    grad_accum: int
    clip_norm: float  # 0: no clipping
    seed: int
    workers: int
    compile: bool
    # ---
    lrs: dict = field(default_factory=dict)  # peak LR per param group (the stage sets them from its params)
    pct_start: float = 0.2  # share of each group's schedule spent warming up
    select: str = ""  # validation metric whose best epoch is kept ('' = the last epoch)
    select_initial: bool = False  # the starting weights compete too (fine-tuning a trained model: never end worse)
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


class EpochSampler(Sampler):
    """An epoch's items as (index, augmentation seed): the order is a permutation drawn from (seed,
    epoch), split across ranks under torchrun as DistributedSampler splits it (padded to a multiple
    of the world size), and each item's seed depends on (seed, epoch, index) only. The sampler
    lives in the main process, so :meth:`set_epoch` reaches persistent workers through it."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.seed, self.rank, self.world, self.epoch = n, seed, rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n / self.world)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        if self.world > 1:
            total = len(self) * self.world
            order = (order * math.ceil(total / max(self.n, 1)))[:total][self.rank::self.world]
        base = (self.seed * 1_000_003 + self.epoch) * 10_000_019
        for i in order:
            yield i, (base + i) % 2**62


class SeededItems(Dataset):
    """``dataset`` asked for by (index, seed), as :class:`EpochSampler` gives them: the item's random
    augmentation is drawn from that seed alone (the process's own random stream is left as it was), so
    an epoch's images are the same whichever process or DataLoader worker made them."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        i, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            return self.dataset[i]


def _seed_epoch(seed: int, epoch: int) -> None:
    seed_everything(seed * 100_003 + epoch)


def build_optimizer(model: nn.Module, lrs: dict[str, float], weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with one group per part in ``model.param_groups()``; every part needs an LR in ``lrs``."""
    groups = model.param_groups()
    missing = sorted(set(groups) - set(lrs))
    if missing:
        raise ValueError(f"no learning rate for param groups {missing}; have {sorted(lrs)}")
    return torch.optim.AdamW([{"params": groups[name], "lr": lrs[name], "name": name} for name in groups],
                             weight_decay=weight_decay)


def early_stages(backbone: nn.Module, n: int) -> list[nn.Module]:
    """The backbone's modules from its input to the end of its ``n``-th feature stage (timm's
    ``feature_info``), in forward order; [] for n = 0."""
    if n <= 0:
        return []
    info = getattr(backbone, "feature_info", None)
    if info is None or n > len(info):
        raise ValueError(f"frozen_stages={n}: the backbone has {len(info) if info else 0} feature stages")
    target = info[n - 1]["module"]
    modules = list(backbone.named_modules())[1:]
    last = max(i for i, (name, _) in enumerate(modules) if name == target or name.startswith(target + "."))
    return [m for _, m in modules[:last + 1]]


def one_cycle(total: int, start: int = 0, pct_start: float = 0.2, div: float = 25.0,
              final_div: float = 1e4) -> Callable[[int], float]:
    """The LR multiplier at step t of a one-cycle schedule that begins at step ``start`` (0 before):
    linear warm-up from 1/div to 1 over ``pct_start`` of the steps left, then cosine down to 1/final_div."""
    span = max(1, total - start)
    warm = max(1, int(round(pct_start * span)))

    def factor(t: int) -> float:
        if t < start:
            return 0.0
        u = t - start
        if u < warm:
            return 1 / div + (1 - 1 / div) * u / warm
        v = min(1.0, (u - warm) / max(1, span - warm))
        return 1 / final_div + (1 - 1 / final_div) * 0.5 * (1 + math.cos(math.pi * v))

    return factor


def backbone_of(model: nn.Module) -> nn.Module | None:
    """The pretrained part a linear probe freezes (``model.backbone`` or ``model.dolg.backbone``)."""
    for path in ("backbone", "dolg.backbone"):
        m = model
        for name in path.split("."):
            m = getattr(m, name, None)
        if isinstance(m, nn.Module):
            return m
    return None


def _read_state(state_file: Path | None, rank: int) -> dict | None:
    """The resume state, or None when there is none or it cannot be read (a truncated or corrupt file:
    said in one line and, by rank 0, deleted, so that training starts over instead of failing for good)."""
    if state_file is None or not state_file.exists():
        return None
    try:
        return torch.load(state_file, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable state is discarded, whatever the reader raised
        if rank == 0:
            print(f"discarding an unreadable training state ({state_file}: {type(e).__name__}); training starts over")
            state_file.unlink(missing_ok=True)
        return None


@dataclass(frozen=True)
class _Plan:
    """How an epoch is cut: batches per rank (the last dropped when it would hold one sample: BatchNorm
    cannot train on it), optimiser steps per epoch and in all, and the steps the backbone stays frozen."""

    drop_last: bool
    steps_per_epoch: int
    total_steps: int
    frozen_steps: int

    @staticmethod
    def of(n: int, cfg: TrainConfig, world: int) -> "_Plan":
        per_rank = math.ceil(n / world)
        drop_last = per_rank > cfg.batch_size and per_rank % cfg.batch_size == 1
        batches = per_rank // cfg.batch_size if drop_last else math.ceil(per_rank / cfg.batch_size)
        steps = max(1, math.ceil(batches / cfg.grad_accum))
        return _Plan(drop_last, steps, cfg.epochs * steps, min(cfg.freeze_epochs, cfg.epochs) * steps)


def _snapshot(model: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _resume(state_file: Path | None, key: str, model, optimizer, scheduler, cfg: TrainConfig, rank: int,
            world: int) -> tuple[int, list[dict], dict]:
    """(first epoch to run, history, best epoch) from the state a run with the same ``key`` left; a
    state of another key is discarded."""
    start, history, best = 0, [], {}
    state = _read_state(state_file, rank)
    if world > 1:
        dist.barrier()  # every rank has read the state before rank 0 may delete a stale one
    if state is not None:
        if state.get("key") == key:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start = state["epoch"] + 1
            if rank == 0:  # history and the best epoch live on rank 0 only: it alone validates and writes
                history, best = state["history"], state.get("best", {})
                print(f"resuming from epoch {start} of {cfg.epochs} ({state_file})")
        elif rank == 0:
            print(f"discarding a training state made with other params or data ({state_file})")
            state_file.unlink()
    return start, history, best


def _score_starting_weights(model: nn.Module, on_epoch_end, select: str) -> tuple[dict, dict]:
    """(the starting weights' record as epoch -1, that epoch as the best so far)."""
    model.eval()
    with torch.no_grad():
        initial = {"epoch": -1, "train_loss": float("nan"), "img_per_s": 0.0, **on_epoch_end(model, -1)}
    print(f"before training: {select} {initial[select]:.4g}")
    return initial, {"epoch": -1, "value": initial[select], "model": _snapshot(model)}


def _wrap(model: nn.Module, cfg: TrainConfig, world: int, device: torch.device) -> nn.Module:
    """The module the loop calls: DistributedDataParallel under torchrun, torch.compile'd when asked."""
    net = model
    if world > 1:
        if device.type == "cuda":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(net) if cfg.compile else net


def _train_epoch(net: nn.Module, model: nn.Module, loss_fn: LossFn, loader: DataLoader, optimizer, scheduler,
                 cfg: TrainConfig, plan: _Plan, epoch: int, backbone: nn.Module | None, kept: list[nn.Module],
                 kept_params: list, device: torch.device, rank: int, world: int) -> dict:
    """One epoch of training; its record (mean loss, img/s, each group's LR, whether the backbone was frozen)."""
    frozen = epoch < cfg.freeze_epochs
    if backbone is not None and world == 1:  # under DDP a frozen backbone gets LR 0 instead (same ranks' graphs)
        backbone.requires_grad_(not frozen)
    for p in kept_params:
        p.requires_grad_(False)
    net.train()
    if frozen:
        backbone.eval()  # keep the pretrained BatchNorm statistics while probing
    for m in kept:
        m.eval()
    total, count, t0 = 0.0, 0, time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=rank != 0, leave=False)
    for step, (x, y) in enumerate(bar):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, training=True):
            loss = loss_fn(net, x, y)
        (loss / cfg.grad_accum).backward()
        last = step + 1 == len(loader)
        if (step + 1) % cfg.grad_accum == 0 or last:
            if cfg.clip_norm:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if scheduler.last_epoch + 1 < plan.total_steps:
                scheduler.step()
        total += loss.item() * len(x)
        count += len(x)
        bar.set_postfix(loss=f"{total / count:.3f}")
    elapsed = time.perf_counter() - t0
    return {"epoch": epoch, "train_loss": total / max(count, 1), "img_per_s": count * world / elapsed,
            "lr": {g["name"]: g["lr"] for g in optimizer.param_groups}, "frozen": frozen}


def _keep_if_best(record: dict, best: dict, model: nn.Module, select: str) -> dict:
    """The best epoch so far by ``select``, this one's weights if it beats it."""
    if select not in record:
        raise ValueError(f"select={select!r} is not among the validation metrics {sorted(record)}")
    if not best or record[select] > best["value"]:
        return {"epoch": record["epoch"], "value": record[select], "model": _snapshot(model)}
    return best


def fit(model: nn.Module, loss_fn: LossFn, dataset: Dataset, cfg: TrainConfig, state_dir: Path | None, key: str,
        on_epoch_end: Callable[[nn.Module, int], dict] | None = None, log: Callable[[int, dict], None] | None = None,
        stop_after: int | None = None) -> list[dict]:
    """Train ``model`` in place; return the per-epoch history.

    ``loss_fn(model, images, labels)`` gives the loss (:mod:`photoid.train.losses`);
    ``on_epoch_end(model, epoch)`` may return validation metrics (rank 0); ``log(epoch, metrics)``
    records them (dvclive). ``stop_after`` ends after that many epochs as if killed (for tests).
    """
    rank, world = distributed()
    device = torch_device(cfg.device)
    model.to(device)
    model.to(memory_format=torch.channels_last)  # faster convolutions on CUDA and on the CPU (oneDNN) alike
    optimizer = build_optimizer(model, cfg.lrs, cfg.weight_decay)
    plan = _Plan.of(len(dataset), cfg, world)
    backbone = backbone_of(model)
    if (cfg.freeze_epochs or cfg.frozen_stages) and backbone is None:
        raise ValueError("freeze_epochs and frozen_stages need a model with a backbone")
    kept = early_stages(backbone, cfg.frozen_stages) if cfg.frozen_stages else []
    kept_params = [p for m in kept for p in m.parameters(recurse=False)]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [
        one_cycle(plan.total_steps, plan.frozen_steps if g["name"] == "backbone" else 0, cfg.pct_start)
        for g in optimizer.param_groups])
    state_file = state_dir / "state.pt" if state_dir is not None else None
    start, history, best = _resume(state_file, key, model, optimizer, scheduler, cfg, rank, world)
    if cfg.select and cfg.select_initial and start == 0 and rank == 0 and on_epoch_end is not None:
        initial, best = _score_starting_weights(model, on_epoch_end, cfg.select)
        history.append(initial)
    for record in history:  # a resumed run re-logs what the killed one had logged
        if record["epoch"] >= 0 and log is not None and rank == 0:
            log(record["epoch"], record)

    for p in kept_params:  # before DDP is built: it leaves them out of its reduction for good
        p.requires_grad_(False)
    net = _wrap(model, cfg, world, device)
    sampler = EpochSampler(len(dataset), cfg.seed, rank, world)
    loader = DataLoader(SeededItems(dataset), batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                        pin_memory=device.type == "cuda", drop_last=plan.drop_last, persistent_workers=cfg.workers > 0)
    for epoch in range(start, cfg.epochs):
        _seed_epoch(cfg.seed, epoch)
        sampler.set_epoch(epoch)
        record = _train_epoch(net, model, loss_fn, loader, optimizer, scheduler, cfg, plan, epoch, backbone, kept,
                              kept_params, device, rank, world)
        if rank == 0:
            if on_epoch_end is not None:
                model.eval()
                with torch.no_grad():
                    record.update(on_epoch_end(model, epoch))
            history.append(record)
            if cfg.select:
                best = _keep_if_best(record, best, model, cfg.select)
            if log is not None:
                log(epoch, record)
            print(f"epoch {epoch + 1}/{cfg.epochs}: " + ", ".join(
                f"{k} {v:.4g}" for k, v in record.items() if isinstance(v, float)))
            if state_file is not None:
                with atomic_path(state_file) as tmp:
                    torch.save({"key": key, "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(), "history": history, "best": best}, tmp)
        if world > 1:
            dist.barrier()
        if stop_after is not None and epoch + 1 - start >= stop_after:
            return history
    if backbone is not None:
        backbone.requires_grad_(True)
    if best and rank == 0:
        model.load_state_dict(best["model"])
        for record in history:
            record["selected"] = record["epoch"] == best["epoch"]
        which = "the starting weights" if best["epoch"] < 0 else f"epoch {best['epoch'] + 1} of {cfg.epochs}"
        print(f"kept {which}: best {cfg.select} {best['value']:.4g}")
    return history


def selected(history: list[dict]) -> dict:
    """The record of the epoch whose weights were kept (the best by ``select``, else the last)."""
    return next((r for r in history if r.get("selected")), history[-1])


def finished(state_dir: Path | None) -> None:
    """Remove the resume state once the outputs are safely written."""
    if state_dir is not None and (state_dir / "state.pt").exists():
        (state_dir / "state.pt").unlink()
