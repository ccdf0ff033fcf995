"""Opening photos the one way the whole pipeline does: EXIF orientation applied, RGB out.

Field photos come as JPEGs with an EXIF rotation flag, grayscale scans, CMYK exports, PNGs with
alpha or a palette, and 16-bit TIFFs/PNGs. Every stage reads images through :func:`load_rgb`, so
the width, height and boxes that ingest records are those of the image every later stage sees.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import warnings
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
        arr = np.clip(arr / sample_range(arr) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def sample_range(arr: np.ndarray) -> float:
    """The full scale of the samples of a 16-bit (or 32-bit) image: the smallest 2**bits - 1 that
    holds its largest value, 8 bits at least. A camera's 12-bit data stored in a 16-bit file then
    spans 0-4095 and is scaled by that, not by 65535 (an almost black picture)."""
    top = float(np.max(arr, initial=0))
    bits = max(8, int(np.ceil(np.log2(top + 1)))) if top > 0 else 8
    return float(2**bits - 1)


def load_rgb(path: str | os.PathLike, reduce: int = 1) -> Image.Image:
    """Open ``path`` as an upright 8-bit RGB image.

    ``reduce`` (1, 2, 4 or 8) lets a JPEG decode at a fraction of its size (libjpeg's DCT scaling):
    cropping a small fin out of a 5000-pixel photo then never holds the full-size image. The
    returned size may therefore be smaller than the table's width and height; callers scale by
    ``returned.width / table width``. Other formats ignore ``reduce``.
    """
    with warnings.catch_warnings(), Image.open(path) as img:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked by ingest; no stray lines in progress bars
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
    sha1: str = ""  # of the file's bytes: exact duplicates
    dhash: str = ""  # difference hash of the picture, hex: near duplicates (:func:`difference_hash`)

    @property
    def ok(self) -> bool:
        return not self.reason


HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}


def broken_link(path: Path) -> str:
    """Why a symbolic link leads to no file ('' if ``path`` is no broken link)."""
    if not path.is_symlink():
        return ""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "broken link (a loop of symbolic links)"
        return f"broken link (points to {os.readlink(path)}, which does not exist)"
    return ""


def difference_hash(img: Image.Image, side: int = 16) -> str:
    """A difference hash of ``side``² bits (256), as hex: ``side`` x ``side`` + 1 grey levels, one bit per
    pair of neighbours (left brighter than right). Re-encoded or resized copies of a photo differ in a
    few bits (:mod:`photoid.data.duplicates`)."""
    grey = np.asarray(_to_rgb(img).convert("L").resize((side + 1, side), Image.Resampling.BILINEAR), dtype=np.int16)
    return np.packbits((grey[:, :-1] > grey[:, 1:]).ravel()).tobytes().hex()


def check_image(path: str | os.PathLike, min_side: int = 0) -> ImageCheck:
    """Open and fully decode ``path``; return its upright size (and its hashes) or the reason it is unusable.

    Catches what field data throws at a pipeline: broken links, zero-byte files, non-images with an
    image extension, HEIC photos, truncated downloads, corrupt data, and (with ``min_side``) photos
    too small to identify. JPEGs are decoded at 1/8 scale, which still reads every byte, so a
    truncated file fails here and not three stages later.
    """
    path = Path(path)
    broken = broken_link(path)
    if broken:
        return ImageCheck(reason=broken)
    try:
        data = path.read_bytes()
    except OSError as e:
        return ImageCheck(reason=f"cannot read file: {e.strerror or e}")
    if not data:
        return ImageCheck(reason="empty file (0 bytes)")
    if data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS:
        return ImageCheck(reason="HEIC/HEIF photo: not supported; convert it to JPEG (the camera's or phone's export, "
                                 "or `heif-convert`)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # a large photo is fine; a bomb is an error below
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.verify()
        except UnidentifiedImageError:
            return ImageCheck(reason="not an image (format not recognised)")
        except Image.DecompressionBombError as e:
            return ImageCheck(reason=f"image too large to decode safely: {e}")
        except Exception as e:  # PIL raises many types for corrupt headers
            return ImageCheck(reason=f"corrupt image header: {e}")
        try:
            with Image.open(io.BytesIO(data)) as img:
                mode = img.mode
                width, height = img.size  # before draft() shrinks it
                if img.format == "JPEG":  # 1/8 scale, but not below the 72 px the hash wants
                    img.draft(img.mode, (max(1, width // 8, min(width, 72)), max(1, height // 8, min(height, 72))))
                img.load()
                orientation = img.getexif().get(_EXIF_ORIENTATION_TAG, 1)
                dhash = difference_hash(img)
        except Exception as e:
            if data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
                # a JPEG cut short and one that lacks only its end marker decode alike: neither PIL nor
                # libjpeg tells them apart, so say what is known instead of guessing
                return ImageCheck(reason="truncated JPEG: the file ends before the JPEG end marker (FF D9), so part "
                                         "of the picture may be missing; download or export it again")
            return ImageCheck(reason=f"truncated or corrupt image data: {e}")
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    if width < 1 or height < 1:
        return ImageCheck(reason=f"image has no pixels ({width}x{height})")
    if min(width, height) < min_side:
        return ImageCheck(width=int(width), height=int(height), mode=mode,
                          reason=f"too small to identify ({width}x{height} pixels; data.min_side is {min_side})")
    return ImageCheck(width=int(width), height=int(height), mode=mode, sha1=hashlib.sha1(data).hexdigest(), dhash=dhash)


def reduce_factor(width: int, height: int, needed_long_side: float) -> int:
    """The largest JPEG draft reduction (1, 2, 4, 8) that keeps the long side >= ``needed_long_side``."""
    factor = 1
    while factor < 8 and max(width, height) / (factor * 2) >= needed_long_side:
        factor *= 2
    return factor
