"""Readers that turn a data set on disk into a *listing*: one row per input image.

A listing has :data:`~photoid.data.schema.LISTING_COLUMNS` plus ``reason`` (non-empty when the
reader already knows the image cannot be used, e.g. a file in ``train_images/`` with no label).
Ingest then opens every listed image (:mod:`photoid.data.ingest`).

Problems with the *labels* stop the run with a :class:`DataError` naming the file, row or column
and what to do; problems with an *image* never stop it: the image goes to the rejected table.

Sources (``data.source``):

- ``happywhale``: the Kaggle layout: ``train.csv`` (image, species, individual_id),
  ``train_images/``, ``test_images/``.
- ``folders``: ``root/<individual>/<image>``; an optional ``test_dir`` of unlabelled images.
- ``csv``: one or more label files with the image, individual and species columns named by params.
- ``demo``: generated (:mod:`photoid.data.demo`) in the happywhale layout, then read as such.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from photoid.data.schema import BOX_COLUMNS, LISTING_COLUMNS, TEST, TRAIN, UNKNOWN_SPECIES, normalise_species
from photoid.errors import DataError
from photoid.metrics import NEW_INDIVIDUAL

MAX_LISTED = 10  # how many offending rows an error message lists


def listing_table(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=[*LISTING_COLUMNS, "reason"])
    for c in BOX_COLUMNS:
        df[c] = df[c].astype(np.float64)
    df["reason"] = df["reason"].fillna("")
    return df


def _row(image_id, path, part, individual="", species=UNKNOWN_SPECIES, origin="", reason="") -> dict:
    return dict(image_id=str(image_id), path=os.path.normpath(str(path)), part=part,
                individual=str(individual), species=normalise_species(species), origin=origin,
                reason=reason, **{c: np.nan for c in BOX_COLUMNS})


def visible_files(folder: Path) -> list[Path]:
    """Files under ``folder`` (recursively), hidden files and folders (``.DS_Store``) left out."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            out.append(p)
    return out


def rows_error(problem: str, where: list[str], todo: str) -> DataError:
    shown = "\n  ".join(where[:MAX_LISTED])
    more = f"\n  … and {len(where) - MAX_LISTED} more" if len(where) > MAX_LISTED else ""
    return DataError(f"{problem} ({len(where)}):\n  {shown}{more}\n{todo}")


def read_label_file(path: Path, wanted: dict[str, list[str]], optional: set[str] = frozenset()) -> tuple[pd.DataFrame, dict[str, str]]:
    """Read a CSV of labels; ``wanted`` maps a role to candidate column names (first found wins).

    Returns the table (all cells as stripped strings) and the role → column actually used.
    Raises :class:`DataError` if a required role has none of its candidates in the file.
    """
    if not path.is_file():
        raise DataError(f"label file {path} does not exist: check data.root and data.labels in params.yaml.")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except Exception as e:
        raise DataError(f"cannot read label file {path} as CSV: {e}") from e
    df.columns = [str(c).strip() for c in df.columns]
    used = {}
    for role, candidates in wanted.items():
        found = next((c for c in candidates if c in df.columns), None)
        if found is None and role not in optional:
            raise DataError(
                f"{path}: no {role} column; looked for {candidates}, the file has {list(df.columns)}. "
                f"Name the right column in params.yaml (data.{role}_col; several candidates may be given comma-separated)."
            )
        if found is not None:
            used[role] = found
    for c in df.columns:
        df[c] = df[c].astype(str).str.strip()
    return df, used


def _check_labels(df: pd.DataFrame, path: Path, columns: list[str]) -> None:
    """Empty cells in label columns stop the run: a silent '' individual would become a class."""
    bad = [f"{path} line {i + 2}: empty '{c}'"
           for c in columns for i in np.flatnonzero(df[c].to_numpy() == "")]
    if bad:
        raise rows_error(f"{path}: empty labels", sorted(bad),
                         "Fill in the label or delete the row (a photo without an individual belongs in the test folder).")


def _check_duplicates(listing: pd.DataFrame) -> None:
    dup = listing[listing.duplicated("image_id", keep=False)].sort_values("image_id")
    if len(dup):
        where = [f"{r.image_id}: {r.origin}" for r in dup.itertuples()]
        raise rows_error("duplicate image ids", where,
                         "Each image must be listed once: remove the repeated rows, or rename files that share a name.")


def _check_missing(listing: pd.DataFrame) -> None:
    missing = [f"{r.path} ({r.origin})" for r in listing.itertuples() if not os.path.exists(r.path)]
    if missing:
        raise rows_error("label rows whose image file does not exist", missing,
                         "Fix the file names in the label file or add the images; check data.root in params.yaml.")


def _test_folder(folder: Path, origin: str) -> list[dict]:
    return [_row(str(p.relative_to(folder)), p, TEST, origin=f"{origin}/{p.relative_to(folder)}")
            for p in visible_files(folder)]


def read_happywhale(root: str | os.PathLike) -> pd.DataFrame:
    """The Kaggle Happywhale layout. Unlabelled files in train_images/ are listed as rejected."""
    root = Path(root)
    labels, used = read_label_file(root / "train.csv", {"image": ["image"], "individual": ["individual_id"],
                                                      "species": ["species"]})
    _check_labels(labels, root / "train.csv", list(used.values()))
    rows = [_row(r[used["image"]], root / "train_images" / r[used["image"]], TRAIN, r[used["individual"]],
                 r[used["species"]], origin=f"train.csv line {i + 2}")
            for i, r in enumerate(labels.to_dict("records"))]
    listed = {r["image_id"] for r in rows}
    train_dir = root / "train_images"
    if not train_dir.is_dir():
        raise DataError(f"{train_dir} does not exist: the happywhale layout needs train.csv, train_images/ and test_images/.")
    for p in visible_files(train_dir):
        if str(p.relative_to(train_dir)) not in listed:
            rows.append(_row(p.name, p, TRAIN, origin=f"train_images/{p.name}",
                             reason="in train_images/ but not in train.csv (no label)"))
    test_dir = root / "test_images"
    if test_dir.is_dir():
        rows += _test_folder(test_dir, "test_images")
    listing = listing_table(rows)
    _check_duplicates(listing)
    _check_missing(listing)
    return listing


def read_folders(root: str | os.PathLike, species: str = "", test_dir: str = "", data_files: tuple[str, ...] = ()) -> pd.DataFrame:
    """``root/<individual>/…/<image>``; image ids are paths relative to root, so names may repeat."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.root {root} is not a folder: set data.root in params.yaml to the folder of individuals.")
    test_path = (root / test_dir) if test_dir else None
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if test_path is not None and folder.resolve() == test_path.resolve():
            continue
        for p in visible_files(folder):
            rel = p.relative_to(root)
            rows.append(_row(str(rel), p, TRAIN, folder.name, species or UNKNOWN_SPECIES, origin=str(rel)))
    data_files = {Path(f).resolve() for f in data_files if f}
    for p in sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")):
        if p.resolve() in data_files:  # data.boxes, data.test_truth, data.confirmed: tables, not photos
            continue
        rows.append(_row(p.name, p, TRAIN, origin=p.name,
                         reason="file directly in data.root, not in an individual's folder (no label)"))
    if test_path is not None:
        if not test_path.is_dir():
            raise DataError(f"data.test_dir {test_path} is not a folder: fix data.test_dir in params.yaml or set it to ''.")
        rows += [dict(r, image_id=f"{test_dir}/{r['image_id']}") for r in _test_folder(test_path, test_dir)]
    if not rows:
        raise DataError(f"{root} has no individual folders with images in them.")
    listing = listing_table(rows)
    _check_duplicates(listing)
    return listing


def _split_names(value: str) -> list[str]:
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _resolve_image(label_file: Path, name: str) -> Path:
    """An image named in a label file lies beside it, or in a folder named like it (dolphin.csv → dolphin/)."""
    candidates = [Path(name)] if os.path.isabs(name) else [label_file.parent / name, label_file.parent / label_file.stem / name]
    return next((c for c in candidates if c.exists()), candidates[-1])


def read_csv_labels(root: str | os.PathLike, labels: str, image_col: str = "image", individual_col: str = "individual_id",
                    species_col: str = "species", species: str = "", test_dir: str = "") -> pd.DataFrame:
    """One or more label files (``labels``, comma-separated, relative to ``root``).

    Column params may list candidates, comma-separated (``individual_col: UniqueID,ID``): the first
    one present in a file is used, so label files whose columns differ ingest in one run. A file
    with no species column takes ``species`` if given, else its own name (``dolphin.csv`` → dolphin).
    Images are looked up beside the label file, then in a folder named after it.
    """
    root = Path(root)
    files = _split_names(labels)
    if not files:
        raise DataError("data.source is csv but data.labels is empty: list the label files (comma-separated) in params.yaml.")
    wanted = {"image": _split_names(image_col), "individual": _split_names(individual_col),
              "species": _split_names(species_col)}
    rows = []
    for name in files:
        path = root / name
        df, used = read_label_file(path, wanted, optional={"species"})
        _check_labels(df, path, [used["image"], used["individual"]])
        for i, r in enumerate(df.to_dict("records")):
            sp = r[used["species"]] if "species" in used else (species or path.stem)
            rows.append(_row(r[used["image"]], _resolve_image(path, r[used["image"]]), TRAIN,
                             r[used["individual"]], sp, origin=f"{path} line {i + 2}"))
    if test_dir:
        test_path = root / test_dir
        if not test_path.is_dir():
            raise DataError(f"data.test_dir {test_path} is not a folder: fix data.test_dir in params.yaml or set it to ''.")
        rows += _test_folder(test_path, test_dir)
    listing = listing_table(rows)
    _check_duplicates(listing)
    _check_missing(listing)
    return listing


def read_boxes(path: str | os.PathLike) -> pd.DataFrame:
    """A box file: image, x1, y1, x2, y2 in upright pixel coordinates."""
    path = Path(path)
    df, used = read_label_file(path, {"image": ["image", "image_id"], "x1": ["x1", "box_x1"], "y1": ["y1", "box_y1"],
                                      "x2": ["x2", "box_x2"], "y2": ["y2", "box_y2"]})
    out = pd.DataFrame({"image_id": df[used["image"]]})
    for short, col in zip(["x1", "y1", "x2", "y2"], BOX_COLUMNS):
        values = pd.to_numeric(df[used[short]], errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy())
        if len(bad):
            raise rows_error(f"{path}: box coordinates that are not numbers", [f"line {i + 2}" for i in bad],
                             "Give numeric pixel coordinates, or remove the row (the image then has no box).")
        out[col] = values.astype(np.float64)
    bad = out[(out.box_x2 <= out.box_x1) | (out.box_y2 <= out.box_y1)]
    if len(bad):
        raise rows_error(f"{path}: boxes with x2 <= x1 or y2 <= y1", [f"line {i + 2}: {r.image_id}" for i, r in bad.iterrows()],
                         "Boxes are x1, y1 (top left), x2, y2 (bottom right) in pixels.")
    return out


def read_confirmed(path: str | os.PathLike) -> pd.DataFrame:
    """Confirmed identities of test photos (image, individual_id), as a person decided them looking at
    the candidates: a known individual's id, or the name given to a new one."""
    path = Path(path)
    df, used = read_label_file(path, {"image": ["image", "image_id"], "individual": ["individual_id", "individual"]})
    _check_labels(df, path, list(used.values()))
    image, individual = df[used["image"]], df[used["individual"]]
    unnamed = [f"{path} line {i + 2}: {image.iloc[i]}" for i in np.flatnonzero((individual == NEW_INDIVIDUAL).to_numpy())]
    if unnamed:
        raise rows_error(f"{path}: new individuals without a name", unnamed,
                         "Give each new individual an id of its own (the catalogue's next number, or any name).")
    twice = [f"{path} line {i + 2}: {image.iloc[i]}" for i in np.flatnonzero(image.duplicated(keep=False).to_numpy())]
    if twice:
        raise rows_error(f"{path}: photos confirmed more than once", twice, "Keep one decision per photo.")
    return pd.DataFrame({"image_id": image, "individual": individual})


def read_truth(path: str | os.PathLike) -> pd.DataFrame:
    """Test truth: image, individual_id. Evaluation alone reads it."""
    path = Path(path)
    df, used = read_label_file(path, {"image": ["image", "image_id"], "individual": ["individual_id", "individual"]})
    _check_labels(df, path, list(used.values()))
    return pd.DataFrame({"image_id": df[used["image"]], "individual": df[used["individual"]]})
