"""Filter: keep for training only individuals with at least ``min_samples`` training images.

The beluga seed went from 788 individuals to 383 at a minimum of 4 and gained in CV and LB: an
individual seen once or twice teaches the metric little and makes validation noisy. Test images
are never touched. Dropped images are not lost: they go to a table with the reason.
"""

from __future__ import annotations

import pandas as pd

from photoid.data.schema import TRAIN


def filter_individuals(table: pd.DataFrame, min_samples: int) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Return (kept rows: all test + train of individuals with enough images, dropped rows with reason, counts)."""
    train = table["part"] == TRAIN
    counts = table.loc[train, "individual"].value_counts()
    per_image = table["individual"].map(counts).fillna(0).astype(int)
    drop = train & (per_image < min_samples)
    dropped = table[drop].copy()
    dropped["reason"] = [f"individual has {n} training image{'s' if n != 1 else ''} < filter.min_samples={min_samples}"
                         for n in per_image[drop]]
    kept = table[~drop].reset_index(drop=True)
    stats = {
        "min_samples": int(min_samples),
        "individuals_before": int(counts.size),
        "individuals_after": int((counts >= min_samples).sum()),
        "train_images_before": int(train.sum()),
        "train_images_after": int((kept["part"] == TRAIN).sum()),
        "test_images": int((~train).sum()),
    }
    return kept, dropped.reset_index(drop=True), stats
