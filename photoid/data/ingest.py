"""Ingest: open every listed image, keep the usable ones, report the rest with their reason."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from tqdm import tqdm

from photoid.data.duplicates import EXACT, duplicate_counts, find_duplicates
from photoid.data.schema import BOX_COLUMNS, IMAGE_COLUMNS, REJECTED_COLUMNS, TEST, TRAIN
from photoid.data.sources import rows_error
from photoid.errors import DataError
from photoid.images import ImageCheck, check_image


def check_images(paths: list[str], workers: int = 1, progress: bool = True, min_side: int = 0) -> list[ImageCheck]:
    """:func:`check_image` over many files, in ``workers`` processes, with a progress bar."""
    bar = dict(total=len(paths), desc="ingest: checking images", unit="img", disable=not progress)
    check = partial(check_image, min_side=min_side)
    if workers <= 1 or len(paths) < 64:
        return [check(p) for p in tqdm(paths, **bar)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(check, paths, chunksize=32), **bar))


class Ingested(NamedTuple):
    images: pd.DataFrame  # images.parquet: the usable images
    rejected: pd.DataFrame  # rejected.parquet: every other listed path, with its reason
    stats: dict  # the counts of metrics/ingest.json
    duplicates: pd.DataFrame  # duplicates.parquet: pairs of copies (photoid.data.duplicates)


def attach_boxes(listing: pd.DataFrame, boxes: pd.DataFrame, source: str) -> pd.DataFrame:
    """Each photo's boxes (:func:`photoid.data.sources.read_boxes`) on its row: the labelled animal's
    box (marked ``main``, else the largest) in box_x1 .. y2, the others in ``other_boxes`` (for the
    detector: every animal in a photo is an animal to find)."""
    unknown = sorted(set(boxes.image_id) - set(listing.image_id))
    if unknown:
        raise rows_error(f"{source}: boxes for images that are not in the data set", unknown,
                         "Remove those rows from the box file or add the images.")
    boxes = boxes.assign(_area=(boxes.box_x2 - boxes.box_x1) * (boxes.box_y2 - boxes.box_y1),
                         main=boxes["main"].astype(bool) if "main" in boxes else False)
    main_count = boxes.groupby("image_id")["main"].sum()
    several = sorted(main_count.index[main_count > 1])
    if several:
        raise rows_error(f"{source}: photos with more than one box marked main", several,
                         "Mark one box per photo as main: the animal the photo's label names.")
    ordered = boxes.sort_values(["image_id", "main", "_area"], ascending=[True, False, False], kind="stable")
    chosen = ordered.drop_duplicates("image_id", keep="first")
    others = ordered[ordered.duplicated("image_id", keep="first")]
    other_lists = others.groupby("image_id")[BOX_COLUMNS].apply(lambda b: b.to_numpy(np.float64).ravel().tolist())
    out = listing.drop(columns=BOX_COLUMNS).merge(chosen[["image_id", *BOX_COLUMNS]], on="image_id", how="left")
    out["other_boxes"] = [other_lists.get(i, []) for i in out["image_id"]]
    return out[listing.columns]


def ingest(listing: pd.DataFrame, workers: int = 1, progress: bool = True, min_side: int = 0,
           duplicates: str = "keep", near_bits: int = -1) -> Ingested:
    """Split a listing into the image table and the rejected table, find copies, and count what happened.

    Every row of ``listing`` ends in exactly one of the two tables. Photos whose shorter side is
    below ``min_side`` are rejected; ``duplicates="reject"`` rejects the test copy of a photo that is
    also a training photo (same bytes); near copies are those whose difference hashes are at most
    ``near_bits`` apart (< 0: not looked for).
    """
    if duplicates not in ("keep", "reject"):
        raise DataError(f"data.duplicates is {duplicates!r}: use keep or reject.")
    todo = listing["reason"] == ""
    checks = check_images(listing.loc[todo, "path"].tolist(), workers=workers, progress=progress, min_side=min_side)
    listing = listing.copy()
    for column, empty in (("width", 0), ("height", 0), ("mode", ""), ("sha1", ""), ("dhash", "")):
        listing[column] = empty
        listing.loc[todo, column] = [getattr(c, column) for c in checks]
    listing.loc[todo, "reason"] = [c.reason for c in checks]

    usable = listing[listing["reason"] == ""]
    pairs = find_duplicates(usable[["image_id", "part", "individual", "sha1", "dhash"]], near_bits)
    leaks = pairs[(pairs["kind"] == EXACT) & (pairs["part"] == TEST) & (pairs["other_part"] == TRAIN)]
    if duplicates == "reject" and len(leaks):
        reason = {r.image_id: f"exact copy of a training photo: {r.duplicate_of} (individual {r.other_individual}), "
                              "the same photo in training and test; data.duplicates: keep to answer it with that "
                              "photo's individual"
                  for r in leaks.itertuples()}
        copies = listing["image_id"].isin(reason)
        listing.loc[copies, "reason"] = listing.loc[copies, "image_id"].map(reason)

    counts = duplicate_counts(pairs)
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
        "rejected_by_reason": dict(Counter(reason_kind(r) for r in rejected["reason"])),
        "train_images": int((images.part == TRAIN).sum()),
        "test_images": int((images.part == TEST).sum()),
        "individuals": int(images.loc[images.part == TRAIN, "individual"].nunique()),
        "species": {k: int(v) for k, v in images["species"].value_counts().sort_index().items()},
        "images_with_box": int(images[BOX_COLUMNS].notna().all(axis=1).sum()),
        "images_with_several_boxes": int((images["other_boxes"].map(len) > 0).sum()),
        "other_boxes": int(images["other_boxes"].map(len).sum() // 4),
        "boxes_clipped_to_image": int(clipped),
        "converted_to_rgb": {k: int(v) for k, v in images.loc[images["mode"] != "RGB", "mode"].value_counts().items()},
        "duplicates": {**counts, "exact_train_test_rejected": int(len(leaks)) if duplicates == "reject" else 0},
        "warnings": ingest_warnings(images, counts),
    }
    return Ingested(images[IMAGE_COLUMNS].reset_index(drop=True), rejected, stats, pairs)


def ingest_warnings(images: pd.DataFrame, counts: dict) -> list[str]:
    """What the run can go on with but a person should know (printed by the stage, kept in the metrics);
    ``counts``: :func:`photoid.data.duplicates.duplicate_counts`."""
    out = []
    if not (images["part"] == TEST).any():
        out.append("no test photos: nothing to identify; knn-rank reports cross-validation only (check the test "
                   "folder's name: test_images/ for the happywhale layout, data.test_dir otherwise)")
    if not (images["part"] == TRAIN).any():
        out.append("no usable training photos: nothing to train on (see rejected.parquet)")
    if counts["exact_train_test"]:
        out.append(f"{counts['exact_train_test']} test photos are exact copies of training photos (duplicates.parquet)")
    if counts["exact_with_two_individuals"]:
        out.append(f"{counts['exact_with_two_individuals']} training photos are copies of a photo labelled as another "
                   "individual: fix the labels (duplicates.parquet)")
    return out


def _clip_boxes(images: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    boxes = images[BOX_COLUMNS].to_numpy(dtype=np.float64)
    limits = images[["width", "height", "width", "height"]].to_numpy(dtype=np.float64)
    clipped = np.clip(boxes, 0, limits)
    changed = ~np.all(np.isclose(clipped, boxes) | np.isnan(boxes), axis=1)
    empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    clipped[empty] = np.nan  # a box wholly outside its image says nothing: treat as no box
    images = images.copy()
    images[BOX_COLUMNS] = clipped
    others = []
    for flat, limit in zip(images["other_boxes"], limits):
        b = np.clip(np.asarray(flat, np.float64).reshape(-1, 4), 0, limit)
        b = b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]
        others.append(b.ravel().tolist())
    images["other_boxes"] = others
    return images, int(changed.sum())


def reason_kind(reason: str) -> str:
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


__all__ = ["DataError", "DataParams", "apply_confirmed", "attach_boxes", "check_images", "check_truth", "ingest",
           "read_data_set", "read_source"]


DATA_FILES = ("boxes", "test_truth", "confirmed")  # data.* params naming a table: read under data.root when relative


@dataclass(frozen=True)
class DataParams:
    """params.yaml's data section, but data.demo (the values live there)."""

    source: str
    root: str
    labels: str
    image_col: str
    individual_col: str
    species_col: str
    group_col: str
    species: str
    test_dir: str
    image_dir: str
    boxes: str
    test_truth: str
    confirmed: str
    min_side: int
    duplicates: str
    near_duplicate_bits: int
    workers: int

    def file(self, name: str) -> Path | None:
        """A data file param (``boxes``, ``test_truth``, ``confirmed``) as a path: read under data.root when
        relative (as data.labels is), as it is when absolute; None when empty."""
        value = getattr(self, name)
        if not value:
            return None
        return Path(value) if Path(value).is_absolute() else Path(self.root) / value

    @property
    def checks(self) -> dict:
        """:func:`ingest`'s options."""
        return dict(workers=self.workers, min_side=self.min_side, duplicates=self.duplicates,
                    near_bits=self.near_duplicate_bits)


def read_data_set(d: DataParams) -> pd.DataFrame:
    """The listing of a data set on disk (not the demo: it is generated first), boxes attached."""
    from photoid.data import sources

    listing = read_source(d.source, d.root, labels=d.labels, image_col=d.image_col, individual_col=d.individual_col,
                          species_col=d.species_col, group_col=d.group_col, species=d.species, test_dir=d.test_dir,
                          image_dir=d.image_dir, data_files=tuple(str(f) for f in map(d.file, DATA_FILES) if f))
    return attach_boxes(listing, sources.read_boxes(d.file("boxes")), d.boxes) if d.boxes else listing


def read_source(source: str, root: str, *, labels: str = "", image_col: str = "image",
                individual_col: str = "individual_id", species_col: str = "species", group_col: str = "",
                species: str = "", test_dir: str = "", image_dir: str = "",
                data_files: tuple[str, ...] = ()) -> pd.DataFrame:
    """The listing of data set ``source`` (happywhale, folders or csv) found at ``root``; ``data_files``
    (boxes, test truth, confirmed decisions kept under root) are not photos of the folders layout.
    ``group_col`` is read where a label file has that column (folders have none: no groups)."""
    from photoid.data import sources

    if source == "happywhale":
        return sources.read_happywhale(root, group_col=group_col)
    if source == "folders":
        return sources.read_folders(root, species=species, test_dir=test_dir, data_files=data_files)
    if source == "csv":
        return sources.read_csv_labels(root, labels, image_col=image_col, individual_col=individual_col,
                                       species_col=species_col, species=species, test_dir=test_dir, image_dir=image_dir,
                                       group_col=group_col)
    raise DataError(f"unknown data.source {source!r}: use demo, happywhale, folders or csv.")


def groups_found(listing: pd.DataFrame, group_col: str) -> str:
    """What ingest says of data.group_col: the groups it found in the labels, or that it found none."""
    if not group_col:
        return "no data.group_col: each photo is a group of its own"
    train = listing[listing["part"] == TRAIN]
    grouped = train[train["group"].astype(str) != ""]
    if grouped.empty:
        return f"no label file has a data.group_col column ({group_col}): each photo is a group of its own"
    return (f"{grouped['group'].nunique()} groups (data.group_col {group_col}) over {len(grouped)} of {len(train)} "
            "training photos: the split keeps each group in one fold")
