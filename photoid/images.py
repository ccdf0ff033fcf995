"""Opening photos the one way the whole pipeline does: EXIF orientation applied, RGB out.

Field photos come as JPEGs with an EXIF rotation flag, grayscale scans, CMYK exports, PNGs with
alpha or a palette, and 16-bit TIFFs/PNGs. Every stage reads images through :func:`load_rgb`, so
the width, height and boxes that ingest records are those of the image every later stage sees.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# EXIF orientations 5-8 swap width and height.
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION_TAG = 0x0112


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: 16-bit scaled down (not clipped), alpha composited on black."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if (img.mode.startswith("I;16") or arr.max(initial=0) > 255) else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def load_rgb(path: str | os.PathLike, reduce: int = 1) -> Image.Image:
    """Open ``path`` as an upright 8-bit RGB image.

    ``reduce`` (1, 2, 4 or 8) lets a JPEG decode at a fraction of its size (libjpeg's DCT scaling):
    cropping a small fin out of a 5000-pixel photo then never holds the full-size image. The
    returned size may therefore be smaller than the table's width and height; callers scale by
    ``returned.width / table width``. Other formats ignore ``reduce``.
    """
    with Image.open(path) as img:
        if reduce > 1 and img.format == "JPEG":
            img.draft("RGB", (max(1, img.width // reduce), max(1, img.height // reduce)))
        img.load()
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)


@dataclass(frozen=True)
class ImageCheck:
    """What opening one file found: its upright size, or why it cannot be used."""

    width: int = 0
    height: int = 0
    mode: str = ""
    reason: str = ""  # empty when the image is usable

    @property
    def ok(self) -> bool:
        return not self.reason


def check_image(path: str | os.PathLike) -> ImageCheck:
    """Open and fully decode ``path``; return its upright size or the reason it is unusable.

    Catches what field data throws at a pipeline: zero-byte files, non-images with an image
    extension, truncated downloads, corrupt data. JPEGs are decoded at 1/8 scale, which still reads
    every byte, so a truncated file fails here and not three stages later.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        return ImageCheck(reason=f"cannot read file: {e.strerror or e}")
    if size == 0:
        return ImageCheck(reason="empty file (0 bytes)")
    try:
        with Image.open(path) as img:
            img.verify()
    except UnidentifiedImageError:
        return ImageCheck(reason="not an image (format not recognised)")
    except Image.DecompressionBombError as e:
        return ImageCheck(reason=f"image too large to decode safely: {e}")
    except Exception as e:  # PIL raises many types for corrupt headers
        return ImageCheck(reason=f"corrupt image header: {e}")
    try:
        with Image.open(path) as img:
            mode = img.mode
            width, height = img.size  # before draft() shrinks it
            if img.format == "JPEG":
                img.draft(img.mode, (max(1, width // 8), max(1, height // 8)))
            img.load()
            orientation = img.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception as e:
        return ImageCheck(reason=f"truncated or corrupt image data: {e}")
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    if width < 1 or height < 1:
        return ImageCheck(reason=f"image has no pixels ({width}x{height})")
    return ImageCheck(width=int(width), height=int(height), mode=mode)



def reduce_factor(width: int, height: int, needed_long_side: float) -> int:
    """The largest JPEG draft reduction (1, 2, 4, 8) that keeps the long side >= ``needed_long_side``."""
    factor = 1
    while factor < 8 and max(width, height) / (factor * 2) >= needed_long_side:
        factor *= 2
    return factor
