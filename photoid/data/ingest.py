"""Ingest: open every listed image, keep the usable ones, report the rest with their reason."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd
from tqdm import tqdm

from photoid.data.schema import BOX_COLUMNS, IMAGE_COLUMNS, REJECTED_COLUMNS, TEST, TRAIN
from photoid.data.sources import rows_error
from photoid.errors import DataError
from photoid.images import ImageCheck, check_image


def check_images(paths: list[str], workers: int = 1, progress: bool = True) -> list[ImageCheck]:
    """:func:`check_image` over many files, in ``workers`` processes, with a progress bar."""
    bar = dict(total=len(paths), desc="ingest: checking images", unit="img", disable=not progress)
    if workers <= 1 or len(paths) < 64:
        return [check_image(p) for p in tqdm(paths, **bar)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(check_image, paths, chunksize=32), **bar))


def attach_boxes(listing: pd.DataFrame, boxes: pd.DataFrame, source: str) -> pd.DataFrame:
    unknown = sorted(set(boxes.image_id) - set(listing.image_id))
    if unknown:
        raise rows_error(f"{source}: boxes for images that are not in the data set", unknown,
                         "Remove those rows from the box file or add the images.")
    dup = sorted(boxes.image_id[boxes.image_id.duplicated()].unique())
    if dup:
        raise rows_error(f"{source}: more than one box for an image", dup, "Keep one box per image (the animal to identify).")
    out = listing.drop(columns=BOX_COLUMNS).merge(boxes, on="image_id", how="left")
    return out[listing.columns]


def ingest(listing: pd.DataFrame, workers: int = 1, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Split a listing into the image table and the rejected table, and count what happened.

    Every row of ``listing`` ends in exactly one of the two tables.
    """
    todo = listing["reason"] == ""
    checks = check_images(listing.loc[todo, "path"].tolist(), workers=workers, progress=progress)
    listing = listing.copy()
    listing["width"] = 0
    listing["height"] = 0
    listing["mode"] = ""
    listing.loc[todo, "reason"] = [c.reason for c in checks]
    listing.loc[todo, "width"] = [c.width for c in checks]
    listing.loc[todo, "height"] = [c.height for c in checks]
    listing.loc[todo, "mode"] = [c.mode for c in checks]

    ok = listing["reason"] == ""
    images = listing[ok].copy()
    images["width"] = images["width"].astype(np.int64)
    images["height"] = images["height"].astype(np.int64)
    images, clipped = _clip_boxes(images)
    rejected = listing[~ok][REJECTED_COLUMNS].reset_index(drop=True)

    stats = {
        "listed": int(len(listing)),
        "images": int(len(images)),
        "rejected": int(len(rejected)),
        "rejected_by_reason": dict(Counter(_reason_kind(r) for r in rejected["reason"])),
        "train_images": int((images.part == TRAIN).sum()),
        "test_images": int((images.part == TEST).sum()),
        "individuals": int(images.loc[images.part == TRAIN, "individual"].nunique()),
        "species": {k: int(v) for k, v in images["species"].value_counts().sort_index().items()},
        "images_with_box": int(images[BOX_COLUMNS].notna().all(axis=1).sum()),
        "boxes_clipped_to_image": int(clipped),
        "converted_to_rgb": {k: int(v) for k, v in images.loc[images["mode"] != "RGB", "mode"].value_counts().items()},
    }
    return images[IMAGE_COLUMNS].reset_index(drop=True), rejected, stats


def _clip_boxes(images: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    boxes = images[BOX_COLUMNS].to_numpy(dtype=np.float64)
    limits = images[["width", "height", "width", "height"]].to_numpy(dtype=np.float64)
    clipped = np.clip(boxes, 0, limits)
    changed = ~np.all(np.isclose(clipped, boxes) | np.isnan(boxes), axis=1)
    empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    clipped[empty] = np.nan  # a box wholly outside its image says nothing: treat as no box
    images = images.copy()
    images[BOX_COLUMNS] = clipped
    return images, int(changed.sum())


def _reason_kind(reason: str) -> str:
    """Group reasons for the metrics: the text before the first ':' or '('."""
    for sep in (":", "("):
        reason = reason.split(sep)[0]
    return reason.strip()


def check_truth(truth: pd.DataFrame, images: pd.DataFrame, rejected: pd.DataFrame, source: str) -> pd.DataFrame:
    """Test truth must name test images of this data set (rejected ones are allowed and kept out)."""
    test_ids = set(images.image_id[images.part == TEST]) | set(rejected.image_id[rejected.part == TEST])
    unknown = sorted(set(truth.image_id) - test_ids)
    if unknown:
        raise rows_error(f"{source}: truth for images that are not test images of this data set", unknown,
                         "data.test_truth must list test images only; fix or remove those rows.")
    return truth[truth.image_id.isin(images.image_id)].reset_index(drop=True)


def apply_confirmed(images: pd.DataFrame, rejected: pd.DataFrame, truth: pd.DataFrame, confirmed: pd.DataFrame,
                    source: str) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Confirmed test photos become training photos of the individual confirmed (the catalogue grows):
    they leave the test part and its truth. Each must be a usable test photo of this data set."""
    test_ids = set(images.image_id[images.part == TEST])
    unusable = sorted(set(confirmed.image_id) & set(rejected.image_id))
    if unusable:
        raise rows_error(f"{source}: confirmed photos that ingest rejected (see rejected.parquet for why)", unusable,
                         "A photo that cannot be used cannot be trained on: remove those rows.")
    unknown = sorted(set(confirmed.image_id) - test_ids)
    if unknown:
        raise rows_error(f"{source}: confirmed photos that are not test photos of this data set", unknown,
                         "data.confirmed lists test photos (as submission.csv and photoid identify name them); "
                         "fix or remove those rows.")
    known = set(images.individual[images.part == TRAIN])
    label = dict(zip(confirmed.image_id, confirmed.individual))
    images = images.copy()
    moved = images.image_id.isin(label)
    images.loc[moved, "part"] = TRAIN
    images.loc[moved, "individual"] = images.loc[moved, "image_id"].map(label)
    stats = {"confirmed": int(moved.sum()),
             "confirmed_new_individuals": int(len(set(confirmed.individual) - known))}
    return images, truth[~truth.image_id.isin(label)].reset_index(drop=True), stats


__all__ = ["DataError", "apply_confirmed", "attach_boxes", "check_images", "check_truth", "ingest", "read_source"]


def read_source(source: str, root: str, *, labels: str = "", image_col: str = "image",
                individual_col: str = "individual_id", species_col: str = "species", species: str = "",
                test_dir: str = "", data_files: tuple[str, ...] = ()) -> pd.DataFrame:
    """The listing of data set ``source`` (happywhale, folders or csv) found at ``root``; ``data_files``
    (boxes, test truth, confirmed decisions kept under root) are not photos of the folders layout."""
    from photoid.data import sources

    if source == "happywhale":
        return sources.read_happywhale(root)
    if source == "folders":
        return sources.read_folders(root, species=species, test_dir=test_dir, data_files=data_files)
    if source == "csv":
        return sources.read_csv_labels(root, labels, image_col=image_col, individual_col=individual_col,
                                       species_col=species_col, species=species, test_dir=test_dir)
    raise DataError(f"unknown data.source {source!r}: use demo, happywhale, folders or csv.")
