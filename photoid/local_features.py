"""Local features of crops and their geometric verification: the evidence that two photos show the
same nick, scar or patch in the same place.

- **Keypoints at the photo's own resolution**: the crop's box region is read from the original
  photo (upright, as the crop stage reads it) and scaled so that its longer side is ``size`` pixels
  (small photos enlarged, large ones shrunk), independent of the training crops' size: the nicks,
  spots and scars a matcher needs are gone at 160 px. OpenCV SIFT on it in grey
  (contrast-limited histogram equalisation first, so that faint patches on a dark fin give
  keypoints), at most ``max_keypoints``; descriptors as RootSIFT (L1-normalised, square root: the
  Hellinger kernel as a dot product), stored as uint8. Each region is described twice: as it is and
  mirrored, because a photo may show the other side of a fin.
- **Store** (a folder, a DVC output of the local-features stage): ``frames.npy`` (M×4 float32: x, y,
  size, angle of every keypoint, in the described region's pixels), ``descriptors.npy`` (M×128
  uint8), ``index.parquet`` (image_id, flipped, start, count, side: the rows of each photo in the
  arrays). Read by memory map, so matching workers share it without copies.
- **Verification** (:func:`match_points`, :func:`count_inliers`): mutual nearest neighbours that pass Lowe's ratio test,
  then RANSAC with a similarity model (``cv2.estimateAffinePartial2D``: rotation, scale, shift). A
  transform whose scale is beyond ``max_scale`` is no match (crops are scaled to the animal, so a
  true match is near scale 1), and an inlier must also agree with the transform in its own scale and
  orientation (the keypoints' frames, as HotSpotter checks them). The count of such inliers is the
  score; random matches between unrelated crops rarely give more than a handful.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from photoid.errors import DataError
from photoid.io import atomic_path, read_parquet, write_json

DESCRIPTOR_DIM = 128


@dataclass(frozen=True)
class KeypointConfig:
    """params.yaml's local section, but its workers (the values live there)."""

    long_side: int  # the box region's longer side, in pixels, when it is described
    max_keypoints: int  # strongest keypoints kept per crop
    contrast_threshold: float  # SIFT's: lower finds fainter keypoints
    clahe: bool  # equalise contrast locally before detection

    def __post_init__(self):
        if self.long_side < 32:
            raise DataError(f"local.long_side must be at least 32 pixels, got {self.long_side}")
        if self.max_keypoints < 1:
            raise DataError(f"local.max_keypoints must be at least 1, got {self.max_keypoints}")


@dataclass(frozen=True)
class MatchConfig:
    """params.yaml's rerank.ratio, ransac_threshold, max_scale and max_angle (the values live there)."""

    ratio: float  # Lowe's ratio test: best match distance below ratio x second best
    ransac_threshold: float  # RANSAC reprojection threshold, as a share of the crop's side
    max_scale: float  # transforms that scale by more than this (or less than its inverse) are no match
    max_angle: float  # degrees an inlier's own orientation may differ from the transform's rotation
    scale_tolerance: float = 1.5  # factor an inlier's own scale change may differ from the transform's


@dataclass
class Keypoints:
    frames: np.ndarray  # N×4 float32: x, y, size, angle (degrees, OpenCV's convention)
    descriptors: np.ndarray  # N×128 uint8 RootSIFT
    side: float = 1.0  # the crop's longer side in pixels (sets the RANSAC threshold)


def _sift(cfg: KeypointConfig):
    import cv2

    return cv2.SIFT_create(nfeatures=cfg.max_keypoints, contrastThreshold=cfg.contrast_threshold)


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT as uint8: square root of the L1-normalised descriptor (unit L2 norm), times 255."""
    d = np.asarray(descriptors, np.float32)
    d = np.sqrt(d / np.maximum(d.sum(axis=1, keepdims=True), 1e-7))
    return np.clip(np.round(d * 255.0), 0, 255).astype(np.uint8)


def detect(grey: np.ndarray, cfg: KeypointConfig, sift=None) -> Keypoints:
    """SIFT keypoints of a grey uint8 image (H×W); black letterbox bars masked. A crop without texture
    (a flat colour) gives no keypoints: an empty :class:`Keypoints`, never an error."""
    import cv2

    grey = np.ascontiguousarray(grey, dtype=np.uint8)
    mask = (grey > 0).astype(np.uint8) * 255
    if cfg.clahe:
        grey = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4)).apply(grey)
    kps, desc = (sift or _sift(cfg)).detectAndCompute(grey, mask)
    side = float(max(grey.shape))
    if desc is None or len(kps) == 0:
        return Keypoints(np.zeros((0, 4), np.float32), np.zeros((0, DESCRIPTOR_DIM), np.uint8), side)
    frames = np.array([(k.pt[0], k.pt[1], k.size, k.angle) for k in kps], np.float32)
    return Keypoints(frames, root_sift(desc), side)


BOX_COLUMNS = ["crop_x1", "crop_y1", "crop_x2", "crop_y2"]  # the crop table's box (upright photo pixels, margin added)


def read_region(path: str | Path, size: tuple[int, int], box: tuple[float, float, float, float], long_side: int) -> np.ndarray:
    """The ``box`` region of a photo in grey, its longer side scaled to ``long_side``, as the crop stage
    reads regions (:func:`photoid.crop.read_region`); a photo that cannot be read stops with its path."""
    from photoid.crop import read_region as read_photo_region

    try:
        return np.asarray(read_photo_region(path, size, box, long_side, mode="L"), dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: the photo cannot be read for its local features ({e}); re-run ingest "
                        "(`dvc repro ingest`).") from None


def _tentative_matches(a: Keypoints, b: Keypoints, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices (in a, in b) of mutual nearest neighbours that pass the ratio test."""
    da = a.descriptors.astype(np.float32) / 255.0
    db = b.descriptors.astype(np.float32) / 255.0
    sq = np.maximum(2.0 - 2.0 * (da @ db.T), 0.0)  # squared L2 distance of unit vectors
    best = np.argmin(sq, axis=1)
    two = np.partition(sq, 1, axis=1)[:, :2]
    passes = np.sqrt(two[:, 0]) < ratio * np.sqrt(two[:, 1])
    mutual = np.argmin(sq, axis=0)[best] == np.arange(len(da))
    keep = np.flatnonzero(passes & mutual)
    return keep, best[keep]


def match_points(a: Keypoints, b: Keypoints, cfg: MatchConfig) -> tuple[np.ndarray, np.ndarray]:
    """The geometrically verified matches between two crops' keypoints (see the module's docstring):
    (K×2 positions in ``a``, K×2 positions in ``b``), in each described region's pixels."""
    import cv2

    none = (np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32))
    if len(a.descriptors) < 2 or len(b.descriptors) < 2:
        return none
    ia, ib = _tentative_matches(a, b, cfg.ratio)
    if len(ia) < 3:
        return none
    pa, pb = a.frames[ia], b.frames[ib]
    threshold = cfg.ransac_threshold * max(a.side, b.side)
    model, inliers = cv2.estimateAffinePartial2D(np.ascontiguousarray(pa[:, :2]), np.ascontiguousarray(pb[:, :2]),
                                                 method=cv2.RANSAC,
                                                 ransacReprojThreshold=threshold)
    if model is None or inliers is None:
        return none
    scale = float(np.hypot(model[0, 0], model[1, 0]))
    if not (1.0 / cfg.max_scale <= scale <= cfg.max_scale):
        return none
    rotation = float(np.degrees(np.arctan2(model[1, 0], model[0, 0])))  # as OpenCV's keypoint angles turn
    keep = inliers.ravel().astype(bool)
    own_scale = pb[keep, 2] / np.maximum(pa[keep, 2], 1e-6) / scale
    own_turn = (pb[keep, 3] - pa[keep, 3] - rotation + 180.0) % 360.0 - 180.0
    agree = (own_scale <= cfg.scale_tolerance) & (own_scale >= 1.0 / cfg.scale_tolerance) & (np.abs(own_turn) <= cfg.max_angle)
    return np.asarray(pa[keep][agree, :2], np.float32), np.asarray(pb[keep][agree, :2], np.float32)


def count_inliers(a: Keypoints, b: Keypoints, cfg: MatchConfig) -> int:
    """How many geometrically verified matches two crops' keypoints have (:func:`match_points`)."""
    return len(match_points(a, b, cfg)[0])


# --------------------------------------------------------------------------------------------- store

def _describe(args) -> tuple[Keypoints, Keypoints]:
    path, size, box, cfg = args
    grey = read_region(path, size, box, cfg.long_side)
    sift = _sift(cfg)
    return detect(grey, cfg, sift), detect(np.ascontiguousarray(grey[:, ::-1]), cfg, sift)


def write_store(rows: pd.DataFrame, out_dir: Path, cfg: KeypointConfig, workers: int = 1,
                progress: bool = True) -> dict:
    """Describe the box region of every photo of ``rows`` (image_id, path, width and height: the photo as
    ingest recorded it, and the crop table's box: crop_x1, crop_y1, crop_x2, crop_y2), as it is and
    mirrored, at ``cfg.long_side`` pixels, into a store at ``out_dir``; return figures (photos, keypoints
    per photo, photos without keypoints, the store's bytes per 1,000 photos, seconds per photo)."""
    from multiprocessing import get_context

    start = time.perf_counter()
    out_dir = Path(out_dir)
    missing = [c for c in ["image_id", "path", "width", "height", *BOX_COLUMNS] if c not in rows.columns]
    if missing:
        raise ValueError(f"the rows to describe lack the columns {missing}")
    jobs = [(p, (int(w), int(h)), tuple(map(float, box)), cfg)
            for p, w, h, box in zip(rows["path"], rows["width"], rows["height"], rows[BOX_COLUMNS].to_numpy())]
    if workers > 1 and len(jobs) > 1:
        with get_context("spawn").Pool(workers) as pool:
            described = list(tqdm(pool.imap(_describe, jobs, chunksize=8), total=len(jobs), desc="local features",
                                  unit="crop", disable=not progress))
    else:
        described = [_describe(j) for j in tqdm(jobs, desc="local features", unit="crop", disable=not progress)]
    index, frames, descriptors, start_row = [], [], [], 0
    for image_id, pair in zip(rows["image_id"], described):
        for flipped, kp in enumerate(pair):
            index.append((image_id, bool(flipped), start_row, len(kp.frames), kp.side))
            frames.append(kp.frames)
            descriptors.append(kp.descriptors)
            start_row += len(kp.frames)
    table = pd.DataFrame(index, columns=["image_id", "flipped", "start", "count", "side"])
    counts = table.loc[~table["flipped"], "count"].to_numpy()
    n_rows = int(table["count"].sum())
    store_bytes = n_rows * (DESCRIPTOR_DIM + 16)  # uint8 descriptors, four float32 frame values
    seconds = time.perf_counter() - start
    figures = {"crops": len(rows), "keypoints_per_crop": float(counts.mean()) if len(counts) else 0.0,
               "crops_without_keypoints": int((counts == 0).sum()), "seconds": seconds,
               "seconds_per_photo": seconds / max(len(rows), 1),
               "store_mb_per_1000_photos": store_bytes / 1e6 * 1000 / max(len(rows), 1),
               "config": asdict(cfg)}
    with atomic_path(out_dir) as tmp:  # the store appears whole or not at all
        tmp.mkdir()
        with open(tmp / "frames.npy", "wb") as f:
            np.save(f, np.concatenate(frames) if frames else np.zeros((0, 4), np.float32))
        with open(tmp / "descriptors.npy", "wb") as f:
            np.save(f, np.concatenate(descriptors) if descriptors else np.zeros((0, DESCRIPTOR_DIM), np.uint8))
        table.to_parquet(tmp / "index.parquet", index=False, engine="pyarrow")
        # what made the store, without the timing: the same crops and settings give the same bytes
        write_json({k: v for k, v in figures.items() if k not in ("seconds", "seconds_per_photo")}, tmp / "meta.json")
    return figures


def open_stores(roots) -> "KeypointStore | KeypointStores":
    """One store, or several read as one (a crop is looked up in each in turn)."""
    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    return KeypointStore(Path(roots[0])) if len(roots) == 1 else KeypointStores([KeypointStore(Path(r)) for r in roots])


class KeypointStores:
    """Several keypoint stores read as one."""

    def __init__(self, stores: list["KeypointStore"]):
        self.stores = stores

    def __contains__(self, image_id) -> bool:
        return any(image_id in s for s in self.stores)

    def _holding(self, image_id) -> "KeypointStore":
        return next((s for s in self.stores if image_id in s), self.stores[0])

    def get(self, image_id, flipped: bool = False) -> Keypoints:
        return self._holding(image_id).get(image_id, flipped)

    def descriptor_slice(self, image_id, flipped: bool = False) -> tuple[np.ndarray, int, int]:
        return self._holding(image_id).descriptor_slice(image_id, flipped)


class KeypointStore:
    """Read side of a store: :meth:`get` gives one crop's keypoints, as it is or mirrored."""

    def __init__(self, root: Path):
        root = Path(root)
        if not (root / "index.parquet").exists():
            raise DataError(f"{root} holds no local features: run the local-features stage (`dvc repro local-features`).")
        self.root = root
        index = read_parquet(root / "index.parquet")
        self._where = {(i, bool(f)): (int(s), int(n), float(side))
                       for i, f, s, n, side in index[["image_id", "flipped", "start", "count", "side"]].itertuples(index=False)}
        self.frames = np.load(root / "frames.npy", mmap_mode="r")
        self.descriptors = np.load(root / "descriptors.npy", mmap_mode="r")

    def __contains__(self, image_id) -> bool:
        return (image_id, False) in self._where

    def _find(self, image_id, flipped: bool) -> tuple[int, int, float]:
        try:
            return self._where[(image_id, bool(flipped))]
        except KeyError:
            raise DataError(f"{self.root} has no local features of {image_id!r}: re-run the local-features stage "
                            "(`dvc repro local-features`).") from None

    def get(self, image_id, flipped: bool = False) -> Keypoints:
        start, n, side = self._find(image_id, flipped)
        return Keypoints(np.asarray(self.frames[start:start + n]), np.asarray(self.descriptors[start:start + n]), side)

    def descriptor_slice(self, image_id, flipped: bool = False) -> tuple[np.ndarray, int, int]:
        """Where a crop's descriptors lie, without reading them: the store's (memory-mapped) descriptor
        array, the first row and the count."""
        start, n, _ = self._find(image_id, flipped)
        return self.descriptors, start, n
