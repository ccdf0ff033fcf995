"""Detection of the fin or body with ultralytics YOLO, kept offline and inside the stage's outputs.

Both winning solutions crop the animal first. :func:`train_detector` trains a one-class YOLO
from a model yaml (or fine-tunes weights the user names) on the boxes a data set has, and reports
box mAP50 on the images held back. :func:`predict_boxes` gives every image one box: the most
confident detection, however weak down to ``detect.conf`` (a photo-ID photo shows its animal, so a
low-confidence box around it still beats the whole frame; its confidence goes with the crop as
``box_confidence``), or the full frame when nothing reaches it.

Ultralytics is told to stay offline (``YOLO_OFFLINE``), gets a throw-away settings folder with
every logging integration off (its DVC callback would otherwise write dvclive files and edit
dvc.yaml from inside a stage), and finds a local font so that it never fetches one.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from photoid.data.schema import BOX_COLUMNS, DETECTED, FULL_FRAME, has_box
from photoid.images import load_rgb, reduce_factor

BOXES_COLUMNS = ["image_id", "x1", "y1", "x2", "y2", "confidence", "box_source"]
_INTEGRATIONS = ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb", "sync")


_CONFIG_DIR: Path | None = None


def offline_ultralytics():
    """Import ultralytics offline, with a settings folder of this process's own; return the module.

    The folder lives in the system temp dir and is removed when the process exits, so nothing is
    written outside the stage's outputs. Call before anything else imports ultralytics.
    """
    global _CONFIG_DIR
    if _CONFIG_DIR is None:
        _CONFIG_DIR = Path(tempfile.mkdtemp(prefix="photoid-yolo-"))
        atexit.register(shutil.rmtree, _CONFIG_DIR, True)
        os.environ["YOLO_OFFLINE"] = "1"
        os.environ["YOLO_CONFIG_DIR"] = str(_CONFIG_DIR)
        os.environ.setdefault("YOLO_VERBOSE", "False")
    import matplotlib
    import ultralytics
    import ultralytics.utils.patches
    import ultralytics.utils.torch_utils
    from PIL import Image
    from ultralytics import settings

    # ultralytics replaces PIL.Image.open process-wide with a version that, on any file Pillow
    # cannot identify, tries to pip-install a HEIF plugin. photoid decodes every photo itself
    # (photoid.images) and hands ultralytics only JPEGs it wrote, so Pillow's own open comes back.
    Image.open = ultralytics.utils.patches._image_open

    # its plots label with Arial: give it a local font file instead of a download
    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    settings_dir = Path(settings.file).parent
    settings_dir.mkdir(parents=True, exist_ok=True)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if font.exists() and not (settings_dir / name).exists():
            shutil.copy(font, settings_dir / name)
    settings.update({k: False for k in _INTEGRATIONS} | {
        "runs_dir": str(settings_dir / "runs"), "weights_dir": str(settings_dir / "weights"),
        "datasets_dir": str(settings_dir / "datasets")})
    # ultralytics trains on cpu_count - 1 threads (1 on a 2-core box) to leave a core to its loader
    # workers; photoid decides that itself through detect.workers.
    ultralytics.utils.torch_utils.NUM_THREADS = os.cpu_count() or 1
    return ultralytics


@dataclass(frozen=True)
class DetectConfig:
    """params.yaml's detect section (the values live there)."""

    model: str  # a model yaml (trained from scratch) or a .pt the user supplies
    weights: str  # given weights: used as they are, no training
    epochs: int
    img_size: int
    batch: int
    conf: float
    val_fraction: float
    max_train_images: int  # 0: all images with boxes
    workers: int
    seed: int


def write_yolo_dataset(images: pd.DataFrame, root: Path, img_size: int, val_fraction: float, seed: int,
                       max_images: int = 0) -> tuple[Path, int, int]:
    """YOLO layout (``images/{train,val}``, ``labels/{train,val}``, data.yaml) from images with boxes.

    Images are written upright, RGB and no larger than needed (long side 2 × img_size), so that
    ultralytics sees exactly what the rest of photoid sees and does not decode 5000-px photos each epoch.
    """
    boxed = images[has_box(images)]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(boxed))
    if max_images:
        order = order[:max_images]
    boxed = boxed.iloc[order]
    n_val = max(1, int(round(len(boxed) * val_fraction)))
    if len(boxed) - n_val < 1:
        raise ValueError(f"{len(boxed)} images with boxes: too few to train a detector and hold some back.")
    parts = {"val": boxed.iloc[:n_val], "train": boxed.iloc[n_val:]}
    for part, rows in parts.items():
        (root / "images" / part).mkdir(parents=True, exist_ok=True)
        (root / "labels" / part).mkdir(parents=True, exist_ok=True)
        for k, r in enumerate(tqdm(rows.itertuples(), total=len(rows), desc=f"detect: writing YOLO {part} set", unit="img")):
            img = load_rgb(r.path, reduce=reduce_factor(r.width, r.height, 2 * img_size))
            scale = 2 * img_size / max(img.size)
            if scale < 1:
                img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
            stem = f"{k:07d}"
            img.save(root / "images" / part / f"{stem}.jpg", quality=95)
            (root / "labels" / part / f"{stem}.txt").write_text(yolo_labels(r))
    data_yaml = root / "data.yaml"
    data_yaml.write_text(f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n  0: animal\n")
    return data_yaml, len(parts["train"]), len(parts["val"])


def yolo_labels(r) -> str:
    """A YOLO label file's lines for an image row: its box and every other animal's (``other_boxes``)."""
    boxes = [(r.box_x1, r.box_y1, r.box_x2, r.box_y2)]
    other = getattr(r, "other_boxes", None)
    flat = [] if other is None else list(other)
    boxes += [tuple(flat[i:i + 4]) for i in range(0, len(flat), 4)]
    lines = []
    for x1, y1, x2, y2 in boxes:
        cx, cy, bw, bh = (x1 + x2) / 2 / r.width, (y1 + y2) / 2 / r.height, (x2 - x1) / r.width, (y2 - y1) / r.height
        lines.append(f"0 {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}\n")
    return "".join(lines)


def _ultralytics_device(device: str):
    """ultralytics names the first GPU 0."""
    return 0 if device == "cuda" else "cpu"


def train_detector(images: pd.DataFrame, out_dir: Path, cfg: DetectConfig, device: str) -> tuple[Path, dict]:
    """Train on the images that have boxes; return the weights and the held-back metrics."""
    YOLO = offline_ultralytics().YOLO
    work = out_dir / "dataset"
    data_yaml, n_train, n_val = write_yolo_dataset(images, work, cfg.img_size, cfg.val_fraction, cfg.seed,
                                                    cfg.max_train_images)
    model = YOLO(cfg.model)
    model.train(data=str(data_yaml), epochs=cfg.epochs, imgsz=cfg.img_size, batch=cfg.batch,
                device=_ultralytics_device(device), workers=cfg.workers, seed=cfg.seed, deterministic=True,
                project=str(out_dir.resolve()), name="train", exist_ok=True, plots=False, val=False, verbose=False,
                amp=device == "cuda", single_cls=True)
    weights = out_dir / "train" / "weights" / "last.pt"
    val = YOLO(str(weights)).val(data=str(data_yaml), split="val", imgsz=cfg.img_size, batch=cfg.batch,
                                 device=_ultralytics_device(device), plots=False, verbose=False,
                                 project=str(out_dir.resolve()), name="val", exist_ok=True)
    final = out_dir / "detector.pt"
    shutil.copy(weights, final)
    for leftover in ("dataset", "val", "train/weights"):
        shutil.rmtree(out_dir / leftover, ignore_errors=True)
    metrics = {"train_images": n_train, "val_images": n_val, "map50": float(val.box.map50),
               "map50_95": float(val.box.map), "precision": float(val.box.mp), "recall": float(val.box.mr)}
    return final, metrics


def predict_boxes(images: pd.DataFrame, weights: str | os.PathLike, cfg: DetectConfig, device: str) -> pd.DataFrame:
    """One box per image (upright pixel coordinates): the most confident detection, else the full frame."""
    YOLO = offline_ultralytics().YOLO
    model = YOLO(str(weights))
    rows = []
    records = images.to_dict("records")
    with tqdm(total=len(records), desc="detect: predicting boxes", unit="img") as bar:
        for start in range(0, len(records), cfg.batch):
            chunk = records[start:start + cfg.batch]
            pics = [load_rgb(r["path"], reduce=reduce_factor(r["width"], r["height"], cfg.img_size)) for r in chunk]
            results = model.predict(pics, imgsz=cfg.img_size, conf=cfg.conf, device=_ultralytics_device(device),
                                    verbose=False, max_det=5)
            for r, pic, res in zip(chunk, pics, results):
                rows.append(_best_box(r, pic.size, res))
            bar.update(len(chunk))
    return pd.DataFrame(rows, columns=BOXES_COLUMNS)


def _best_box(record: dict, pic_size: tuple[int, int], result) -> dict:
    boxes = result.boxes
    if boxes is None or len(boxes) == 0:
        return full_frame_box(record)
    best = int(boxes.conf.argmax())
    sx, sy = record["width"] / pic_size[0], record["height"] / pic_size[1]
    x1, y1, x2, y2 = boxes.xyxy[best].tolist()
    return dict(image_id=record["image_id"], x1=x1 * sx, y1=y1 * sy, x2=x2 * sx, y2=y2 * sy,
                confidence=float(boxes.conf[best]), box_source=DETECTED)


def full_frame_box(record: dict) -> dict:
    return dict(image_id=record["image_id"], x1=0.0, y1=0.0, x2=float(record["width"]), y2=float(record["height"]),
                confidence=0.0, box_source=FULL_FRAME)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of paired boxes (N×4, x1 y1 x2 y2)."""
    ix = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = ix * iy
    area_a, area_b = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]), (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


def agreement_with_known_boxes(images: pd.DataFrame, boxes: pd.DataFrame) -> dict:
    """How predicted boxes compare with the data set's own boxes, where it has them."""
    merged = images[has_box(images)].merge(boxes, on="image_id")
    if merged.empty:
        return {}
    iou = box_iou(merged[BOX_COLUMNS].to_numpy(), merged[["x1", "y1", "x2", "y2"]].to_numpy())
    return {"mean_iou_with_known_boxes": float(iou.mean()), "share_iou_over_0.5": float((iou > 0.5).mean())}
