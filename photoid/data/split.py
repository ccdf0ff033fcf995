"""Split: individuals held out whole as "new", the rest in k folds stratified by individual.

CV must be grouped by individual for the `new_individual` answer to be tested at all: a winner whose
validation shared individuals with training saw CV 0.90 and LB 0.45. So a share of individuals
(per species) is held out whole; they are validation-only in every fold and play the unknown
animals. Every other individual's images are dealt round-robin over the k folds from a random
starting fold, so each fold's validation holds about 1/k of every individual's images and the
individual still has images in that fold's training part.

Fold f trains on known images with ``fold != f`` and validates on ``fold == f`` plus all new ones.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from photoid.data.schema import TRAIN

NEW_FOLD = -1


def split_folds(table: pd.DataFrame, n_folds: int, new_fraction: float, seed: int) -> tuple[pd.DataFrame, dict]:
    """Training rows of ``table`` with ``fold`` (0..k-1, or -1 for held-out) and ``is_new``."""
    if n_folds < 2:
        raise ValueError(f"split.n_folds must be at least 2, got {n_folds}")
    train = table[table["part"] == TRAIN].sort_values("image_id").reset_index(drop=True)
    rng = np.random.default_rng(seed)
    new_ids: set[str] = set()
    for _, group in train.groupby("species", sort=True):
        ids = np.array(sorted(group["individual"].unique()))
        n_new = int(round(len(ids) * new_fraction))
        n_new = min(n_new, len(ids) - 1)  # keep at least one known individual per species
        new_ids.update(rng.choice(ids, size=max(n_new, 0), replace=False).tolist())
    fold = np.full(len(train), NEW_FOLD, dtype=np.int64)
    for ind, idx in train.groupby("individual", sort=True).indices.items():
        if ind in new_ids:
            continue
        idx = rng.permutation(idx)
        fold[idx] = (rng.integers(n_folds) + np.arange(len(idx))) % n_folds
    train["fold"] = fold
    train["is_new"] = train["individual"].isin(new_ids)
    known = train[~train.is_new]
    stats = {
        "n_folds": int(n_folds),
        "individuals_known": int(known["individual"].nunique()),
        "individuals_new": int(len(new_ids)),
        "images_known": int(len(known)),
        "images_new": int(train["is_new"].sum()),
        "images_per_fold": {str(f): int((fold == f).sum()) for f in range(n_folds)},
    }
    return train, stats


def fold_view(split: pd.DataFrame, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, validation rows) of fold ``fold``."""
    known = ~split["is_new"]
    return split[known & (split["fold"] != fold)], split[(known & (split["fold"] == fold)) | split["is_new"]]
