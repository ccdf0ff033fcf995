"""Split: individuals held out whole as "new", the rest in k folds stratified by individual.

CV must be grouped by individual for the `new_individual` answer to be tested at all: a winner whose
validation shared individuals with training saw CV 0.90 and LB 0.45. So a share of individuals
(per species) is held out whole; they are validation-only in every fold and play the unknown
animals. Every other individual's images are dealt round-robin over the k folds from a random
starting fold, so each fold's validation holds about 1/k of every individual's images and the
individual still has images in that fold's training part.

Photos taken together (an encounter's burst: ``group``, from ``data.group_col``) look more alike
than photos of the same animal on another day; dealt apart, CV would validate on near copies of
training photos and promise more than test gives. With groups, an individual's *groups* are dealt
round-robin instead of its photos, so a group never straddles folds; an individual seen in one
group only then sits in one fold, and in that fold's validation it is a new individual, as a
re-sighting on another day is to a catalogue that never saw it.

Fold f trains on known images with ``fold != f`` and validates on ``fold == f`` plus all new ones.
Fold ``all`` trains on every labelled photo (known and held-out individuals alike) and validates on
nothing: the model for the test ranking, as the winners trained one on all their data after CV
(ensemble.folds: [0, all] — the numbered folds cross-validate and tune the threshold, ``all`` answers).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from photoid.data.schema import TRAIN
from photoid.errors import DataError

NEW_FOLD = -1
ALL = "all"  # the fold id of the model trained on every labelled photo


def parse_fold(value) -> int | str:
    """A fold id as params.yaml or a command line gives it: a fold number, or ``all``."""
    text = str(value).strip()
    if text == ALL:
        return ALL
    try:
        return int(text)
    except ValueError:
        raise DataError(f"fold {value!r}: give a fold number (0 .. split.n_folds - 1) or {ALL!r} "
                        "(a model on every labelled photo, for the test ranking).") from None


def ensemble_folds(values: list) -> list:
    """params.yaml's ensemble.folds: fold numbers, and ``all`` for a model on every labelled photo."""
    folds = [parse_fold(v) for v in values]
    if len(set(folds)) != len(folds):
        raise DataError(f"ensemble.folds {values} names a fold twice: list each once.")
    return folds


def cv_folds(folds) -> list[int]:
    """The folds of ``folds`` (ensemble.folds) that cross-validate: the numbered ones."""
    out = [f for f in map(parse_fold, folds) if f != ALL]
    if not out:
        raise DataError(f"ensemble.folds is {list(folds)}: it needs at least one fold number, for cross-validation "
                        "(the new_individual threshold is tuned there), e.g. [0, all].")
    return out


def test_folds(folds) -> list:
    """The folds whose models rank the test photos: ``all`` when listed, else every numbered fold."""
    folds = [parse_fold(f) for f in folds]
    return [ALL] if ALL in folds else cv_folds(folds)


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
    # the units dealt: an image (no group given) or a group of images; each unit's images share its fold
    groups = train["group"].fillna("").astype(str) if "group" in train.columns else pd.Series("", index=train.index)
    unit = np.where(groups == "", "\0" + train["image_id"].astype(str), groups)
    for ind, idx in train.groupby("individual", sort=True).indices.items():
        if ind in new_ids:
            continue
        units = pd.unique(unit[idx])  # in image order: one unit per image when there are no groups
        order = rng.permutation(len(units))
        dealt = dict(zip(units[order], (rng.integers(n_folds) + np.arange(len(units))) % n_folds))
        fold[idx] = [dealt[u] for u in unit[idx]]
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
        "groups": int(groups[groups != ""].nunique()),  # 0: no data.group_col
    }
    return train, stats


def fold_view(split: pd.DataFrame, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, validation rows) of fold ``fold`` (``all``: every row, and no validation)."""
    if fold == ALL:
        return split, split.iloc[:0]
    known = ~split["is_new"]
    return split[known & (split["fold"] != fold)], split[(known & (split["fold"] == fold)) | split["is_new"]]
