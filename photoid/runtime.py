"""Device, seeds and threads: set the same way by every stage."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np


def pick_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


GPU_CLAIM_ENV = "PHOTOID_GPU"  # "claim": each stage process takes a GPU no other one holds (see claim_gpu)
_claimed: dict[str, object] = {}  # the lock this process holds, kept open (and so held) until it exits


def claim_gpu(count: int, lock_dir: Path | None = None, wait_s: float = float("inf"), poll_s: float = 2.0) -> int:
    """The first of ``count`` GPUs that no other process on this machine has claimed, claimed for this
    process until it exits (an exclusive lock on ``lock_dir``/gpu<i>.lock; the system drops it when the
    process ends, killed or not). When every GPU is held, waits for one (up to ``wait_s`` seconds, then
    raises TimeoutError). This is how queued experiments get one GPU each: ``PHOTOID_GPU=claim dvc queue
    start --jobs N`` on a machine with N GPUs (the workers pass the environment to every stage)."""
    import fcntl
    import time

    if "index" in _claimed:
        return _claimed["index"]
    lock_dir = Path(lock_dir or Path(tempfile.gettempdir()) / f"photoid-gpus-{os.getuid()}")
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline, said = time.monotonic() + wait_s, False
    while True:
        for i in range(count):
            f = open(lock_dir / f"gpu{i}.lock", "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            _claimed.update(index=i, file=f)
            return i
        if time.monotonic() >= deadline:
            raise TimeoutError(f"all {count} GPUs are claimed by other photoid processes (locks in {lock_dir})")
        if not said:
            print(f"waiting for a free GPU: all {count} are claimed by other photoid processes (locks in {lock_dir})",
                  flush=True)
            said = True
        time.sleep(poll_s)


def torch_device(name: str = ""):
    """The torch device to run on: ``name`` when given, else this process's GPU (``LOCAL_RANK``
    under torchrun; with PHOTOID_GPU=claim, a GPU no other photoid process holds: :func:`claim_gpu`;
    else the first) when there is one, else the CPU."""
    import torch

    if name:
        return torch.device(name)
    if pick_device() == "cuda":
        if "LOCAL_RANK" not in os.environ and os.environ.get(GPU_CLAIM_ENV) == "claim":
            new = "index" not in _claimed
            index = claim_gpu(torch.cuda.device_count())
            torch.cuda.set_device(index)  # what else runs on "cuda" in this process runs there too
            if new:
                print(f"claimed GPU {index} of {torch.cuda.device_count()} ({GPU_CLAIM_ENV}=claim)", flush=True)
            return torch.device("cuda", index)
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


CPU_BF16_ENV = "PHOTOID_CPU_BF16"  # "0": forward passes on the CPU stay in float32 even where bf16 is native


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (Intel AMX or AVX512-BF16) and PHOTOID_CPU_BF16 is not
    "0": there bf16 autocast embeds crops with an EfficientNet about twice as fast as float32 (at 224 px
    on 2 cores, 16 crops a pass: about 100 img/s against 65); elsewhere it would be emulated, and slower."""
    import torch

    if os.environ.get(CPU_BF16_ENV, "1") == "0":
        return False
    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check is not None and check() for check in checks)


def autocast(device, training: bool = False):
    """How every forward pass runs: bf16 autocast on CUDA; on a CPU that computes bf16 natively
    (:func:`native_cpu_bf16`) when embedding, not when training (the training stages' epochs ran slower
    in bf16 there: 14 img/s against 19 at 224 px, fine-tuning on 2 cores); float32 elsewhere."""
    import torch

    enabled = device.type == "cuda" or (device.type == "cpu" and not training and native_cpu_bf16())
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


EVAL_BATCH = {"cpu": 16, "cuda": 128}  # crops per forward pass when embedding: on a CPU small batches stay in
# its caches (16 embeds about 1.5 times as many crops a second as 64 at 224 px on 2 cores)


def eval_batch_size(device) -> int:
    """Crops per forward pass when embedding on ``device`` (validation; embed reads embed.batch_size)."""
    return EVAL_BATCH.get(device.type, 16)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

