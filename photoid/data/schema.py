"""The data contract every stage after ingest relies on.

``images.parquet`` (written by ingest, one row per usable image)

=============  =======  ==========================================================================
column         type     meaning
=============  =======  ==========================================================================
image_id       str      unique over the whole data set; the file name for Kaggle-style sets
path           str      where the file is, relative to the repo root (or absolute)
part           str      ``train`` (labelled) or ``test`` (to identify)
individual     str      the individual's id; empty for test images (their truth is kept apart)
species        str      species name, normalised to lower_snake_case; ``unknown`` if not given
group          str      the photos taken together (an encounter, a survey day: ``data.group_col``); the split
                        keeps a group in one fold. Empty where the data set does not say
width, height  int64    size of the upright image (EXIF orientation applied), in pixels
box_x1 .. y2   float64  the animal's box in upright pixel coordinates; NaN where the set has none
other_boxes    list     other animals' boxes in the photo, x1, y1, x2, y2 after one another (the
                        detector trains on them; the photo's label is the box_x1 .. y2 animal's)
sha1           str      SHA-1 of the file's bytes: a photo given again (to ``photoid identify``, or as a test
                        photo) is known as an exact copy by it
=============  =======  ==========================================================================

``rejected.parquet``: image_id, path, part, individual, species, reason: every listed path that
could not be used, with why (the text before the first ':' or '(' is the kind metrics count).
``images`` ∪ ``rejected`` is exactly the input: nothing is dropped.

``duplicates.parquet``: pairs of usable photos that are copies (:mod:`photoid.data.duplicates`).

Three boxes, three tables, three names, so that none is taken for another: ``box_x1 .. y2`` here
is the box the data set gave (the detector's training target); ``x1 .. y2`` in the detect stage's
``boxes.parquet`` is the box used (detected, given, or the full frame: ``box_source``); and
``crop_x1 .. y2`` in ``crops.parquet`` is that box with the crop's margin, squared, as cut.

``test_truth.parquet``: image_id, individual: the identity of test images where the data set
knows it (the demo does). Only evaluation reads it; an individual absent from training is a new one.

Later tables (boxes, crops, filtered, split) keep ``image_id`` as the key and add columns.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

TRAIN, TEST = "train", "test"
DETECTED, FULL_FRAME = "detector", "full_frame"  # box_source: where a crop's box came from
BOX_COLUMNS = ["box_x1", "box_y1", "box_x2", "box_y2"]
LISTING_COLUMNS = ["image_id", "path", "part", "individual", "species", "group", *BOX_COLUMNS, "other_boxes", "origin"]
IMAGE_COLUMNS = ["image_id", "path", "part", "individual", "species", "group", "width", "height", *BOX_COLUMNS,
                 "other_boxes", "sha1"]
REJECTED_COLUMNS = ["image_id", "path", "part", "individual", "species", "reason"]
TRUTH_COLUMNS = ["image_id", "individual"]
UNKNOWN_SPECIES = "unknown"

# Known misspellings in the Happywhale labels, as both winning solutions fixed them.
SPECIES_FIXES = {
    "bottlenose_dolpin": "bottlenose_dolphin",
    "kiler_whale": "killer_whale",
    "beluga": "beluga_whale",
    "globis": "short_finned_pilot_whale",
    "pilot_whale": "short_finned_pilot_whale",
}


def normalise_species(name: str) -> str:
    name = str(name).strip().lower().replace(" ", "_").replace("-", "_")
    if not name or name == "nan":
        return UNKNOWN_SPECIES
    return SPECIES_FIXES.get(name, name)


def empty_table(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in columns})


def _dtype(column: str):
    if column in BOX_COLUMNS:
        return np.float64
    if column in ("width", "height"):
        return np.int64
    return object


def has_box(df: pd.DataFrame) -> pd.Series:
    return df[BOX_COLUMNS].notna().all(axis=1)
