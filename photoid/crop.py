"""Crop each image to its box, with a margin; store square crops.

The box grows by ``margin`` × its width/height on every side (fins are cut tight by detectors,
and the trailing edge is what identifies them), is clipped to the image, and fits a ``size`` ×
``size`` square as ``fit`` says (crop.fit): ``pad`` scales it so that its long side is ``size`` and
centres it on a black canvas (the aspect ratio kept); ``stretch`` scales each side to ``size`` (every
pixel of the square shows the animal: a tall cow face or a long fin is not squeezed into a strip).
Photos are streamed one at a time, JPEGs decoded at the smallest scale that still gives ``size``
pixels across the box, so a data set of 5000-pixel photos never sits in memory.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from photoid.errors import DataError
from photoid.images import load_rgb, reduce_factor

CROP_COLUMNS = ["image_id", "part", "individual", "species", "group", "crop_path",
                "crop_x1", "crop_y1", "crop_x2", "crop_y2", "box_source", "box_confidence"]
FITS = ("pad", "stretch")  # crop.fit: how a box fits the square crop


def expand_box(box: tuple[float, float, float, float], margin: float, width: int, height: int) -> tuple[float, ...]:
    """``box`` grown by ``margin`` of its size on each side, clipped to the image."""
    x1, y1, x2, y2 = box
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    return max(0.0, x1 - mx), max(0.0, y1 - my), min(float(width), x2 + mx), min(float(height), y2 + my)


def scaled_region(img: Image.Image, box: tuple[float, ...], long_side: int, mode: str = "RGB",
                  square: bool = False) -> Image.Image:
    """Cut ``box`` (in ``img``'s pixels) out, in ``mode``, and scale it so that its long side is ``long_side``
    (``square``: both sides): bicubic where a side is enlarged, Lanczos where both shrink."""
    x1, y1, x2, y2 = box
    region = img.crop((int(np.floor(x1)), int(np.floor(y1)), max(int(np.ceil(x2)), int(np.floor(x1)) + 1),
                       max(int(np.ceil(y2)), int(np.floor(y1)) + 1))).convert(mode)
    scale = long_side / max(region.size)
    w, h = max(1, round(region.width * scale)), max(1, round(region.height * scale))
    if square:
        w = h = long_side
    enlarged = w > region.width or h > region.height
    return region.resize((w, h), Image.Resampling.BICUBIC if enlarged else Image.Resampling.LANCZOS)


def read_region(path, size: tuple[int, int], box: tuple[float, ...], long_side: int, mode: str = "RGB",
                square: bool = False) -> Image.Image:
    """The ``box`` region (upright pixels of a photo of ``size`` = (width, height), as ingest measured it)
    of the photo at ``path``, scaled by :func:`scaled_region`; a JPEG is decoded at the smallest scale that
    still gives ``long_side`` pixels across the box (``square``: across its short side too), so a
    5000-pixel photo never sits in memory whole."""
    x1, y1, x2, y2 = box
    w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    needed = long_side * max(w, h) / min(w, h) if square else long_side  # square: the short side too
    img = load_rgb(path, reduce=reduce_factor(w, h, needed))
    sx, sy = img.width / size[0], img.height / size[1]
    return scaled_region(img, (x1 * sx, y1 * sy, x2 * sx, y2 * sy), long_side, mode, square)


def on_square(region: Image.Image, size: int) -> Image.Image:
    """``region`` centred on a black ``size`` × ``size`` canvas."""
    canvas = Image.new("RGB", (size, size))
    canvas.paste(region, ((size - region.width) // 2, (size - region.height) // 2))
    return canvas


def check_fit(fit: str) -> str:
    """``fit`` if it is one of :data:`FITS`, else a DataError naming crop.fit."""
    if fit not in FITS:
        raise DataError(f"crop.fit takes {' or '.join(FITS)}, got {fit!r}")
    return fit


def on_square_as(region: Image.Image, size: int, fit: str) -> Image.Image:
    """The square crop of ``region``, scaled as ``fit`` asked (:func:`scaled_region`'s ``square``): as it
    is when stretched, centred on a black canvas when padded."""
    return region if fit == "stretch" else on_square(region, size)


def crop_to_square(img: Image.Image, box: tuple[float, ...], size: int, fit: str = "pad") -> Image.Image:
    """Cut ``box`` (in ``img``'s pixels) out and fit it to a ``size`` square as ``fit`` says (see the module)."""
    return on_square_as(scaled_region(img, box, size, square=check_fit(fit) == "stretch"), size, fit)


def _crop_one(job: tuple) -> None:
    path, width, height, box, size, fit, out_path = job
    region = read_region(path, (width, height), box, size, square=fit == "stretch")
    on_square_as(region, size, fit).save(out_path, quality=95)


def crop_all(images: pd.DataFrame, boxes: pd.DataFrame, out_dir: Path, size: int, margin: float,
             workers: int = 1, final_dir: Path | None = None, fit: str = "pad") -> pd.DataFrame:
    """Write ``out_dir/images/<n>.jpg`` for every image, its box fitted to the square as ``fit`` says;
    return the crop table.

    ``final_dir`` is where ``out_dir`` will be once it is moved into place (the table records
    paths there).
    """
    table = images.merge(boxes, on="image_id", how="left", validate="one_to_one")
    missing = table["x1"].isna()
    if missing.any():
        raise ValueError(f"{int(missing.sum())} images have no box, e.g. {table.image_id[missing].iloc[0]}: "
                         "re-run the detect stage (`dvc repro detect`).")
    check_fit(fit)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    final_dir = final_dir or out_dir
    jobs, rows = [], []
    for k, r in enumerate(table.itertuples()):
        crop = expand_box((r.x1, r.y1, r.x2, r.y2), margin, r.width, r.height)
        name = f"images/{k:07d}.jpg"
        jobs.append((r.path, r.width, r.height, crop, size, fit, str(out_dir / name)))
        rows.append(dict(image_id=r.image_id, part=r.part, individual=r.individual, species=r.species,
                         group=r.group, crop_path=str(final_dir / name), crop_x1=crop[0],
                         crop_y1=crop[1], crop_x2=crop[2], crop_y2=crop[3], box_source=r.box_source,
                         box_confidence=r.confidence))
    bar = dict(total=len(jobs), desc="crop", unit="img")
    if workers > 1 and len(jobs) >= 64:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for _ in tqdm(pool.map(_crop_one, jobs, chunksize=16), **bar):
                pass
    else:
        for job in tqdm(jobs, **bar):
            _crop_one(job)
    return pd.DataFrame(rows, columns=CROP_COLUMNS)


def crop_side(params) -> int:
    """The side of the stored crops: crop.side, or train.img_size where crop.side is 0 (loaded params
    that read both, :func:`photoid.params.load_params`)."""
    side, training = params.int("crop.side"), params.int("train.img_size")  # both read: a stage checks it read all
    return side or training
