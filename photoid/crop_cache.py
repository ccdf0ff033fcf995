"""Crops decoded once per training size, kept in a memory-mapped file: the training data path.

Training reads every crop once per epoch, and validation embeds every training crop again; decoding
the JPEGs each time costs more CPU than a GPU's training step at Happywhale's size, and decoding
them all into RAM does not fit (51,000 crops at 512 px are 40 GB). So the first training stage that
needs a set of crops at a size decodes them once, resized to that size (uint8, channels first), into
one ``.npy`` file; every later epoch, stage and DataLoader worker reads it by memory map (the page
cache holds what fits, the disk the rest; the processes' own memory stays at a few batches).

A cache is keyed by its size and by the content of the crop files (their bytes are hashed, which
costs a small part of decoding them), so a changed crop is never served stale. It lives outside the
DVC outputs, in ``cache/crops/`` of the project (ignored by git and DVC; delete it at any time, or make
it a link to a fast local disk): ``<size>px-<key>.npy`` with ``<size>px-<key>.json`` listing its crops.
A cache being written is a temporary file until it is complete, so a killed build starts over and two
processes building the same cache both end with a whole one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from tqdm import tqdm

from photoid.datasets import decode
from photoid.errors import DataError


def _content_key(paths: list[str], size: int) -> str:
    h = hashlib.sha256(f"photoid crop cache v1 {size}".encode())
    for p in paths:
        h.update(p.encode() + b"\0")
        try:
            h.update(hashlib.sha1(Path(p).read_bytes()).digest())
        except OSError as e:
            raise DataError(f"{p}: cannot read this crop ({e.strerror}); re-run the crop stage (`dvc repro crop`).") from e
    return h.hexdigest()[:16]


class _Decode(Dataset):
    def __init__(self, paths: list[str], size: int):
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return resized(decode(self.paths[i]), self.size)


def resized(img: torch.Tensor, size: int) -> torch.Tensor:
    """A uint8 CHW crop at size x size, as the evaluation transform resizes it (antialiased)."""
    if tuple(img.shape[-2:]) == (size, size):
        return img
    return v2.functional.resize(img, [size, size], antialias=True)


class CropCache:
    """The crops ``paths`` at ``size`` x ``size``, uint8, by memory map; built on first use.

    ``row(path)`` gives a crop's row, ``image(row)`` its CHW uint8 tensor. Picklable: a DataLoader
    worker opens its own memory map (what is sent to it is the file's name, not its data)."""

    def __init__(self, file: Path, paths: list[str], size: int):
        self.file, self.paths, self.size = Path(file), paths, size
        self._rows = {p: i for i, p in enumerate(paths)}
        self._array: np.ndarray | None = None

    @classmethod
    def open(cls, paths, size: int, root: Path, workers: int = 0) -> "CropCache":
        """The cache of these crops at this size under ``root``, written first when there is none."""
        paths = sorted({str(p) for p in paths})
        key = _content_key(paths, size)
        file = Path(root) / f"{size}px-{key}.npy"
        if not file.exists():
            build(file, paths, size, workers)
        return cls(file, paths, size)

    @property
    def array(self) -> np.ndarray:
        if self._array is None:  # per process: opened where it is first read
            self._array = np.load(self.file, mmap_mode="r")
        return self._array

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}

    def __len__(self) -> int:
        return len(self.paths)

    def row(self, path) -> int:
        try:
            return self._rows[str(path)]
        except KeyError:
            raise KeyError(f"{path} is not in the crop cache {self.file}") from None

    def image(self, row: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.array[row]))  # a copy: the map is read-only


def build(file: Path, paths: list[str], size: int, workers: int = 0) -> None:
    """Decode ``paths``, resize each to ``size``, write them into ``file`` (N x 3 x size x size uint8)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    need = len(paths) * 3 * size * size
    free = shutil.disk_usage(file.parent).free
    if need > free:
        raise DataError(f"the crop cache for {len(paths)} crops at {size} px needs {need / 2**30:.1f} GiB and "
                        f"{file.parent} has {free / 2**30:.1f} GiB free: free some space, or make {file.parent} "
                        "a link to a larger disk.")
    tmp = file.with_name(f".{file.stem}.{os.getpid()}.tmp.npy")
    t0 = time.perf_counter()
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), 3, size, size))
        loader = DataLoader(_Decode(paths, size), batch_size=64, num_workers=workers)
        i = 0
        for batch in tqdm(loader, desc=f"crop cache {size}px", unit="batch", leave=False):
            out[i:i + len(batch)] = batch.numpy()
            i += len(batch)
        out.flush()
        del out
        file.with_suffix(".json").write_text(json.dumps({"size": size, "paths": paths}))
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"crop cache: {len(paths)} crops at {size} px decoded once into {file} ({need / 2**20:.0f} MiB, "
          f"{time.perf_counter() - t0:.1f} s)")
