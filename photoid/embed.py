"""Embeddings of crops, written as they are computed.

An embedding set is a folder:

- ``rows.parquet``: one row per embedded crop (image_id, part, individual, species, crop_path), in
  the order of the arrays;
- ``embeddings.npy``: float32 N×D, L2-normalised embeddings of the crops as they are;
- ``flipped.npy`` (flip TTA on): float32 N×D, L2-normalised embeddings of the horizontally flipped crops;
- ``meta.json``: the model it came from (its path and, for a saved model, the SHA-256 of its file), its
  fold and image size, whether flips are there.

Arrays are written batch by batch into memory-mapped .npy files, so memory stays bounded by one
batch of images whatever the size of the data set. Readers derive what they need:
:meth:`EmbeddingSet.queries` (the flip-TTA mean of the two, L2-normalised) and
:meth:`EmbeddingSet.gallery` (the flip-TTA means, or the originals and, as more entries, the flipped
ones, or the originals alone).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from photoid.datasets import CropDataset, eval_transform
from photoid.errors import MissingInput
from photoid.io import atomic_path, file_digest, read_parquet, write_json, write_parquet
from photoid.retrieval.search import l2_normalise
from photoid.runtime import autocast, eval_batch_size, torch_device

ROW_COLUMNS = ["image_id", "part", "individual", "species", "crop_path"]
# how gallery images use their mirror images (knn.gallery_flip): the flip-TTA mean, a second entry, or not at all
GALLERY_FLIPS = ("mean", "entries", "none")


@torch.no_grad()
def iter_embeddings(model_embed: Callable[[torch.Tensor], torch.Tensor], paths, img_size: int, batch_size: int = 0,
                    flip: bool = False, device: torch.device | None = None, workers: int = 0,
                    desc: str = "embedding", cache=None) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Batches of (L2-normalised embeddings, L2-normalised embeddings of the flipped crops or None),
    float32, in the order of ``paths``. Autocast as :func:`photoid.runtime.autocast` says. ``batch_size``
    0: :func:`photoid.runtime.eval_batch_size`. ``cache``: a crop cache at ``img_size`` (photoid.crop_cache)
    to read the crops from instead of their JPEG files."""
    device = device or torch.device("cpu")
    loader = DataLoader(CropDataset(paths, transform=eval_transform(img_size), cache=cache),
                        batch_size=batch_size or eval_batch_size(device),
                        shuffle=False, num_workers=workers, pin_memory=device.type == "cuda")
    for x, _ in tqdm(loader, desc=desc, unit="batch", leave=False):
        x = x.to(device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            e = F.normalize(model_embed(x).float(), dim=1).cpu().numpy()
            f = F.normalize(model_embed(torch.flip(x, dims=[3])).float(), dim=1).cpu().numpy() if flip else None
        yield e, f


def flip_tta(original: np.ndarray, flipped: np.ndarray | None) -> np.ndarray:
    """The flip-TTA embedding: mean of the L2-normalised original and flipped embeddings, L2-normalised
    (the original alone when there is no flipped one)."""
    if flipped is None:
        return l2_normalise(original)
    return l2_normalise(l2_normalise(original) + l2_normalise(flipped))


def embed_rows(model: torch.nn.Module, rows: pd.DataFrame, img_size: int, out_dir: Path, flip: bool,
               batch_size: int = 0, workers: int = 0, device: torch.device | None = None, meta: dict | None = None) -> dict:
    """Write the embedding set of ``rows`` (crops) made by ``model.embed`` to ``out_dir``; return figures."""
    device = device or torch.device("cpu")
    model = model.to(device).eval()
    model = model.to(memory_format=torch.channels_last)
    rows = rows[ROW_COLUMNS].reset_index(drop=True)
    dim = int(model.embed(torch.zeros(1, 3, img_size, img_size, device=device)).shape[1])
    start = time.perf_counter()
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        arrays = {"embeddings": np.lib.format.open_memmap(tmp / "embeddings.npy", mode="w+", dtype=np.float32,
                                                          shape=(len(rows), dim))}
        if flip:
            arrays["flipped"] = np.lib.format.open_memmap(tmp / "flipped.npy", mode="w+", dtype=np.float32,
                                                          shape=(len(rows), dim))
        at = 0
        for e, f in iter_embeddings(model.embed, rows["crop_path"], img_size, batch_size, flip, device, workers,
                                    desc="embed"):
            arrays["embeddings"][at:at + len(e)] = e
            if flip:
                arrays["flipped"][at:at + len(e)] = f
            at += len(e)
        for a in arrays.values():
            a.flush()
        del arrays
        write_parquet(rows, tmp / "rows.parquet")
        info = {**(meta or {}), "images": len(rows), "dim": dim, "img_size": img_size, "flip": flip}
        write_json(info, tmp / "meta.json")
    seconds = time.perf_counter() - start
    return {**info, "seconds": round(seconds, 2), "img_per_s": round(len(rows) * (2 if flip else 1) / max(seconds, 1e-9), 1)}


@dataclass
class EmbeddingSet:
    """An embedding set read back (arrays memory-mapped)."""

    rows: pd.DataFrame
    original: np.ndarray
    flipped: np.ndarray | None
    meta: dict

    @classmethod
    def load(cls, folder: str | Path) -> "EmbeddingSet":
        folder = Path(folder)
        if not (folder / "embeddings.npy").exists():
            raise MissingInput(f"{folder} holds no embeddings.npy: run the stage that embeds (`dvc repro`).")
        flipped = folder / "flipped.npy"
        return cls(read_parquet(folder / "rows.parquet"), np.load(folder / "embeddings.npy", mmap_mode="r"),
                   np.load(flipped, mmap_mode="r") if flipped.exists() else None,
                   json.loads((folder / "meta.json").read_text()))

    def queries(self, index: np.ndarray, flip: bool = True) -> np.ndarray:
        """Query vectors of rows ``index``: the flip-TTA mean when ``flip`` and flips are there, else the originals."""
        return flip_tta(self.original[index], self.flipped[index] if flip and self.flipped is not None else None)

    def gallery(self, index: np.ndarray, flip: str) -> tuple[np.ndarray, np.ndarray]:
        """Gallery vectors of rows ``index`` and, for each vector, the row it belongs to. ``flip`` (one of
        :data:`GALLERY_FLIPS`, knn.gallery_flip), when flips are there: ``"mean"``, each image's flip-TTA
        mean, as a query is (so a similarity is the same whichever side of the animal either photo shows);
        ``"entries"``, every original and every flipped embedding as one more entry of the same image;
        ``"none"``, the originals. Without flips, the originals."""
        if flip not in GALLERY_FLIPS:
            raise ValueError(f"gallery flip {flip!r}: use one of {', '.join(GALLERY_FLIPS)}")
        index = np.asarray(index)
        if self.flipped is None or flip == "none":
            return l2_normalise(self.original[index]), index
        if flip == "mean":
            return self.queries(index, flip=True), index
        return (np.concatenate([l2_normalise(self.original[index]), l2_normalise(self.flipped[index])]),
                np.concatenate([index, index]))


def embed_checkpoint(model_path: Path, crops: pd.DataFrame, out_dir: Path, flip: bool, batch_size: int = 0,
                     workers: int = 0) -> dict:
    """Embed every crop of ``crops`` with the model saved at ``model_path`` (DOLG, or train-backbone's
    classifier: its pooled features), at the image size it was trained at, on the GPU when there is one."""
    from photoid.models import load_model

    model, ckpt = load_model(model_path)
    meta = {"model": str(model_path), "model_sha256": file_digest(model_path), "fold": ckpt.get("fold"),
            "backbone": ckpt["config"].get("backbone")}
    return embed_rows(model, crops, int(ckpt["img_size"]), Path(out_dir), flip, batch_size, workers,
                      torch_device(), meta)


def embedded_by(folder: Path, model_path: Path, crops: pd.DataFrame, flip: bool) -> bool:
    """Whether ``folder`` holds what :func:`embed_checkpoint` would write for ``crops`` with the model
    saved at ``model_path`` as it is now (the same file's bytes), flips as ``flip`` asks: the same
    crops in the same order. So a stage whose model is that one can copy the set instead of embedding again."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text())
        rows = read_parquet(folder / "rows.parquet")
    except (OSError, ValueError):
        return False
    if meta.get("model_sha256") != file_digest(model_path) or bool(meta.get("flip")) != flip:
        return False
    return rows.equals(crops[ROW_COLUMNS].reset_index(drop=True))


def embed_untrained(backbone: str, pretrained: str, img_size: int, crops: pd.DataFrame, out_dir: Path, flip: bool,
                    batch_size: int = 0, workers: int = 0) -> dict:
    """Embed every crop with the pooled features of ``backbone`` as ``pretrained`` gives it, with no
    training at all: the baseline that fine-tuning must beat."""
    from photoid.models import create_model

    model = create_model(dict(kind="classifier", backbone=backbone, n_classes=1, pretrained=pretrained))
    meta = {"model": f"untrained {backbone} ({pretrained})", "fold": None, "backbone": backbone}
    return embed_rows(model, crops, img_size, Path(out_dir), flip, batch_size, workers, torch_device(), meta)
