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

import csv
import io
import os
import unicodedata
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from photoid.data.schema import BOX_COLUMNS, LISTING_COLUMNS, TEST, TRAIN, UNKNOWN_SPECIES, normalise_species
from photoid.errors import DataError
from photoid.images import broken_link
from photoid.metrics import NEW_INDIVIDUAL

MAX_LISTED = 10  # how many offending rows an error message lists


def listing_table(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=[*LISTING_COLUMNS, "reason"])
    for c in BOX_COLUMNS:
        df[c] = df[c].astype(np.float64)
    df["other_boxes"] = [b if isinstance(b, list) else [] for b in df["other_boxes"]]
    df["reason"] = df["reason"].fillna("")
    df["group"] = df["group"].fillna("").astype(str)
    return df


def _hidden_rows(hidden: list[Path], folder: Path, part: str, origin: str) -> list[dict]:
    return [_row(f"{origin}/{p.relative_to(folder)}", p, part, origin=f"{origin}/{p.relative_to(folder)}",
                 reason=HIDDEN_REASON) for p in hidden]


def _row(image_id, path, part, individual="", species=UNKNOWN_SPECIES, origin="", reason="", group="") -> dict:
    return dict(image_id=str(image_id), path=os.path.normpath(str(path)), part=part,
                individual=str(individual), species=normalise_species(species), group=str(group), origin=origin,
                reason=reason, other_boxes=[], **{c: np.nan for c in BOX_COLUMNS})


HIDDEN_REASON = "hidden file (its name or a folder's starts with '.'): not read"


def list_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """Everything under ``folder`` that is not a folder, recursively, following linked folders (once
    each: a link back to a folder above is not walked again): files, and links that lead nowhere
    (broken, or a loop: :func:`photoid.images.check_image` says which), so that nothing listed
    disappears. Returns (visible, hidden): hidden ones (``.DS_Store``, anything under ``.git/``) apart."""
    folder = Path(folder)
    visible, hidden = [], []
    walked = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in walked:
            dirnames[:] = []
            continue
        walked.add(real)
        dirnames.sort()
        rel = Path(dirpath).relative_to(folder)
        in_hidden = any(part.startswith(".") for part in rel.parts)
        for name in sorted(filenames):
            (hidden if in_hidden or name.startswith(".") else visible).append(Path(dirpath) / name)
    return sorted(visible), sorted(hidden)


def visible_files(folder: Path) -> list[Path]:
    """The visible files under ``folder`` (:func:`list_files`), broken links included."""
    return list_files(folder)[0]


@lru_cache(maxsize=4096)
def _names_by_form(folder: str) -> dict[str, str]:
    try:
        return {unicodedata.normalize("NFC", n): n for n in os.listdir(folder)}
    except OSError:
        return {}


def on_disk(path: Path) -> Path:
    """``path`` as it is spelt on disk: a name written in one Unicode form (é as one character, NFC)
    finds the file stored in the other (e + accent, NFD: copies from macOS), and the other way."""
    path = Path(path)
    if os.path.lexists(path) or path.parent == path:
        return path
    parent = on_disk(path.parent)
    name = _names_by_form(str(parent)).get(unicodedata.normalize("NFC", path.name))
    return parent / name if name is not None else parent / path.name


def rows_error(problem: str, where: list[str], todo: str) -> DataError:
    shown = "\n  ".join(where[:MAX_LISTED])
    more = f"\n  … and {len(where) - MAX_LISTED} more" if len(where) > MAX_LISTED else ""
    return DataError(f"{problem} ({len(where)}):\n  {shown}{more}\n{todo}")


def read_label_file(path: Path, wanted: dict[str, list[str]], optional: set[str] = frozenset(),
                    param: str = "data.root and data.labels") -> tuple[pd.DataFrame, dict[str, str]]:
    """Read a CSV of labels; ``wanted`` maps a role to candidate column names (first found wins).

    Returns the table (all cells as stripped strings) and the role → column actually used.
    Raises :class:`DataError` if a required role has none of its candidates in the file; ``param``:
    the params.yaml key that named the file (in the message when it does not exist).
    """
    if not path.is_file():
        raise DataError(f"label file {path} does not exist: check {param} in params.yaml"
                        + ("." if param.startswith("data.root") else
                           " (a relative path is read under data.root, an absolute one as it is)."))
    text = decode_text(path)
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True,
                         sep=_separator(text))
    except Exception as e:
        raise DataError(f"cannot read label file {path} as CSV: {e}. Save it as a comma-separated CSV "
                        "(UTF-8) with a header row.") from e
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


def decode_text(path: Path) -> str:
    """A text file in UTF-8 (with or without BOM), UTF-16 (with BOM) or, failing those, Windows-1252 /
    Latin-1 (a spreadsheet's export in western Europe)."""
    data = path.read_bytes()
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        encodings = ["utf-16"]
    else:
        encodings = ["utf-8-sig", "cp1252", "latin-1"]
    for encoding in encodings:
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise DataError(f"cannot read label file {path}: it is neither UTF-8, UTF-16 nor Latin-1 text. "
                    "Save it as CSV (UTF-8).")


def _separator(text: str) -> str:
    """',' unless the header has none and another separator (';' from a spreadsheet set to a comma
    decimal, tab, '|') splits it consistently."""
    lines = text.splitlines()[:20]
    if not lines or "," in lines[0]:
        return ","
    try:
        return csv.Sniffer().sniff("\n".join(lines), delimiters=";\t|").delimiter
    except csv.Error:
        return ","


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


def _check_missing(listing: pd.DataFrame, looked: dict[str, list[Path]] | None = None) -> pd.DataFrame:
    """Every labelled path must name something on disk (a broken link does: ingest rejects it with its
    reason); a name spelt in another Unicode form than the file's is taken as the file's (:func:`on_disk`)."""
    _names_by_form.cache_clear()  # folders listed by an earlier call may have changed since
    listing = listing.copy()
    listing["path"] = [os.path.normpath(on_disk(Path(p))) for p in listing["path"]]
    missing = []
    for r in listing.itertuples():
        if not os.path.lexists(r.path):
            places = (looked or {}).get(r.image_id)
            where = f"; looked in {', '.join(str(p.parent) for p in places)}" if places and len(places) > 1 else ""
            missing.append(f"{r.path} ({r.origin}{where})")
    if missing:
        raise rows_error("label rows whose image file does not exist", missing,
                         "Fix the file names in the label file or add the images; check data.root (and, for csv "
                         "label files, data.image_dir) in params.yaml.")
    return listing


def _test_folder(folder: Path, origin: str) -> list[dict]:
    visible, hidden = list_files(folder)
    return ([_row(str(p.relative_to(folder)), p, TEST, origin=f"{origin}/{p.relative_to(folder)}") for p in visible]
            + _hidden_rows(hidden, folder, TEST, origin))


def read_happywhale(root: str | os.PathLike, group_col: str = "") -> pd.DataFrame:
    """The Kaggle Happywhale layout. Unlabelled files in train_images/ are listed as rejected.
    ``group_col``: a column of train.csv that groups photos taken together (see :func:`read_csv_labels`)."""
    root = Path(root)
    wanted = {"image": ["image"], "individual": ["individual_id"], "species": ["species"]}
    if group_col:
        wanted["group"] = _split_names(group_col)
    labels, used = read_label_file(root / "train.csv", wanted, optional={"group"},
                                   param="data.root (the Happywhale layout's folder, with train.csv)")
    _check_labels(labels, root / "train.csv", [used[k] for k in ("image", "individual", "species")])
    rows = [_row(r[used["image"]], root / "train_images" / r[used["image"]], TRAIN, r[used["individual"]],
                 r[used["species"]], origin=f"train.csv line {i + 2}", group=r[used["group"]] if "group" in used else "")
            for i, r in enumerate(labels.to_dict("records"))]
    listed = {unicodedata.normalize("NFC", r["image_id"]) for r in rows}
    train_dir, test_dir = root / "train_images", root / "test_images"
    for folder in (train_dir, test_dir):
        if not folder.is_dir():
            raise DataError(f"{folder} does not exist: the happywhale layout needs train.csv, train_images/ and "
                            "test_images/ (an empty test_images/ for a run without photos to identify).")
    visible, hidden = list_files(train_dir)
    for p in visible:
        rel = str(p.relative_to(train_dir))
        if unicodedata.normalize("NFC", rel) not in listed:
            unlabelled = "in train_images/ but not in train.csv (no label)"
            broken = broken_link(p)  # the first thing to fix is that the photo is not there
            rows.append(_row(rel, p, TRAIN, origin=f"train_images/{rel}",
                             reason=f"{broken}; also {unlabelled}" if broken else unlabelled))
    rows += _hidden_rows(hidden, train_dir, TRAIN, "train_images")
    rows += _test_folder(test_dir, "test_images")
    listing = listing_table(rows)
    _check_duplicates(listing)
    return _check_missing(listing)


def read_folders(root: str | os.PathLike, species: str = "", test_dir: str = "",
                 data_files: tuple[str, ...] = ()) -> pd.DataFrame:
    """``root/<individual>/…/<image>``; image ids are paths relative to root, so names may repeat."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.root {root} is not a folder: set data.root in params.yaml to the folder of individuals.")
    test_path = (root / test_dir) if test_dir else None
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if test_path is not None and folder.resolve() == test_path.resolve():
            continue
        visible, hidden = list_files(folder)
        if folder.name.startswith("."):
            visible, hidden = [], sorted(visible + hidden)
        for p in visible:
            rel = p.relative_to(root)
            rows.append(_row(str(rel), p, TRAIN, folder.name, species or UNKNOWN_SPECIES, origin=str(rel)))
        rows += [dict(r, image_id=str(Path(r["path"]).relative_to(root)), origin=str(Path(r["path"]).relative_to(root)))
                 for r in _hidden_rows(hidden, folder, TRAIN, folder.name)]
    data_files = {Path(f).resolve() for f in data_files if f}
    for p in sorted(p for p in root.iterdir() if not p.is_dir()):
        if p.resolve() in data_files:  # data.boxes, data.test_truth, data.confirmed: tables, not photos
            continue
        reason = (HIDDEN_REASON if p.name.startswith(".")
                  else "file directly in data.root, not in an individual's folder (no label)")
        rows.append(_row(p.name, p, TRAIN, origin=p.name, reason=reason))
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


def image_places(label_file: Path, name: str, image_dir: Path | None = None) -> list[Path]:
    """Where an image named in a label file may be, in order: beside the label file, in a folder named
    like it (dolphin.csv → dolphin/), in ``image_dir`` (data.image_dir); an absolute name is itself."""
    if os.path.isabs(name):
        return [Path(name)]
    places = [label_file.parent / name, label_file.parent / label_file.stem / name]
    return places + ([image_dir / name] if image_dir is not None else [])


def read_csv_labels(root: str | os.PathLike, labels: str, image_col: str = "image", individual_col: str = "individual_id",
                    species_col: str = "species", species: str = "", test_dir: str = "",
                    image_dir: str = "", group_col: str = "") -> pd.DataFrame:
    """One or more label files (``labels``, comma-separated, relative to ``root``).

    Column params may list candidates, comma-separated (``individual_col: UniqueID,ID``): the first
    one present in a file is used, so label files whose columns differ ingest in one run. A file
    with no species column takes ``species`` if given, else its own name (``dolphin.csv`` → dolphin).
    Images are looked up beside the label file, then in a folder named after it, then in
    ``image_dir`` (relative to root); a name found nowhere is reported with every place looked.
    ``group_col`` (optional, candidates as for the others): the column that groups photos taken
    together, an encounter or a survey day, used where a file has it; a photo of a file without it,
    or with an empty cell, is a group of its own.
    """
    root = Path(root)
    files = _split_names(labels)
    if not files:
        raise DataError("data.source is csv but data.labels is empty: list the label files (comma-separated) in params.yaml.")
    images_at = (root / image_dir) if image_dir else None
    if images_at is not None and not images_at.is_dir():
        raise DataError(f"data.image_dir {images_at} is not a folder: fix data.image_dir in params.yaml or set it to ''.")
    wanted = {"image": _split_names(image_col), "individual": _split_names(individual_col),
              "species": _split_names(species_col)}
    if group_col:
        wanted["group"] = _split_names(group_col)
    rows, looked = [], {}
    for name in files:
        path = root / name
        df, used = read_label_file(path, wanted, optional={"species", "group"})
        _check_labels(df, path, [used["image"], used["individual"]])
        for i, r in enumerate(df.to_dict("records")):
            sp = r[used["species"]] if "species" in used else (species or path.stem)
            places = image_places(path, r[used["image"]], images_at)
            found = next((p for p in places if os.path.lexists(on_disk(p))), places[0])
            rows.append(_row(r[used["image"]], found, TRAIN, r[used["individual"]], sp, origin=f"{path} line {i + 2}",
                             group=r[used["group"]] if "group" in used else ""))
            looked[str(r[used["image"]])] = places
    if test_dir:
        test_path = root / test_dir
        if not test_path.is_dir():
            raise DataError(f"data.test_dir {test_path} is not a folder: fix data.test_dir in params.yaml or set it to ''.")
        rows += _test_folder(test_path, test_dir)
    listing = listing_table(rows)
    _check_duplicates(listing)
    return _check_missing(listing, looked)


def read_boxes(path: str | os.PathLike, param: str = "data.boxes") -> pd.DataFrame:
    """A box file: image, x1, y1, x2, y2 in upright pixel coordinates, one row per animal; a photo of
    several animals has several rows. An optional column ``main`` (1/0, true/false, yes/no) marks the
    box of the animal the photo's label names; without it, a photo's largest box is that one."""
    path = Path(path)
    df, used = read_label_file(path, {"image": ["image", "image_id"], "x1": ["x1", "box_x1"], "y1": ["y1", "box_y1"],
                                      "x2": ["x2", "box_x2"], "y2": ["y2", "box_y2"], "main": ["main"]}, param=param,
                               optional={"main"})
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
    out["main"] = False
    if "main" in used:
        flags = df[used["main"]].str.lower()
        truthy, falsy = flags.isin(["1", "true", "yes", "y"]), flags.isin(["0", "false", "no", "n", ""])
        bad = np.flatnonzero(~(truthy | falsy).to_numpy())
        if len(bad):
            raise rows_error(f"{path}: 'main' values that are not yes or no", [f"line {i + 2}" for i in bad],
                             "Write 1 for the box of the animal the photo's label names, 0 (or nothing) for the others.")
        out["main"] = truthy.to_numpy()
    return out


def read_confirmed(path: str | os.PathLike, param: str = "data.confirmed") -> pd.DataFrame:
    """Confirmed identities of test photos (image, individual_id), as a person decided them looking at
    the candidates: a known individual's id, or the name given to a new one."""
    path = Path(path)
    df, used = read_label_file(path, {"image": ["image", "image_id"], "individual": ["individual_id", "individual"]},
                               param=param)
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


def read_truth(path: str | os.PathLike, param: str = "data.test_truth") -> pd.DataFrame:
    """Test truth: image, individual_id. Evaluation alone reads it."""
    path = Path(path)
    df, used = read_label_file(path, {"image": ["image", "image_id"], "individual": ["individual_id", "individual"]},
                               param=param)
    _check_labels(df, path, list(used.values()))
    return pd.DataFrame({"image_id": df[used["image"]], "individual": df[used["individual"]]})
