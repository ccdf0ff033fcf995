"""Filter: keep for training only individuals with at least ``min_samples`` training images.

The beluga seed went from 788 individuals to 383 at a minimum of 4 and gained in CV and LB: an
individual seen once or twice teaches the metric little and makes validation noisy. Test images
are never touched. Dropped images are not lost: they go to a table with the reason.
"""

from __future__ import annotations

import pandas as pd

from photoid.data.schema import TRAIN
from photoid.errors import DataError

MIN_INDIVIDUALS = 2  # the classifier and the ArcFace head need two individuals at the least


def filter_individuals(table: pd.DataFrame, min_samples: int) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Return (kept rows: all test + train of individuals with enough images, dropped rows with reason, counts)."""
    train = table["part"] == TRAIN
    counts = table.loc[train, "individual"].value_counts()
    if int((counts >= min_samples).sum()) < MIN_INDIVIDUALS:
        # the largest min_samples that keeps MIN_INDIVIDUALS individuals, if the photos allow it
        keeps = int(counts.sort_values(ascending=False).iloc[MIN_INDIVIDUALS - 1]) if counts.size >= MIN_INDIVIDUALS else 0
        what = (f"lower filter.min_samples (-S filter.min_samples={keeps} keeps {int((counts >= keeps).sum())}) or add "
                "labelled photos" if keeps else f"add labelled photos of at least {MIN_INDIVIDUALS} individuals")
        raise DataError(f"filter: {int((counts >= min_samples).sum())} of {counts.size} individuals have at least "
                        f"filter.min_samples={min_samples} training images; training needs {MIN_INDIVIDUALS}: {what}.")
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
