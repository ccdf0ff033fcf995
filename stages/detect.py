"""detect: train a YOLO fin/body detector on the data set's boxes (or load given weights) and
predict one box for every image.

No detection above --conf: the image keeps its full frame (counted). A data set with no boxes
and no --weights: full frame for every image, and the metrics say so.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import typer

from photoid import detect, paths
from photoid.cli import reports_data_errors, stage_app
from photoid.data.schema import has_box
from photoid.io import atomic_path, read_parquet, write_json, write_parquet
from photoid.runtime import pick_device, seed_everything

app = stage_app(__doc__)


@app.command()
@reports_data_errors
def main(
    model: str = typer.Option("yolov8n.yaml", help="Model to train: an ultralytics model yaml (from scratch) or a .pt to fine-tune."),
    weights: str = typer.Option("", help="Trained detector weights (.pt) to use as they are, without training; '' to train."),
    epochs: int = typer.Option(30, help="Training epochs."),
    img_size: int = typer.Option(320, help="Detector input size (pixels)."),
    batch: int = typer.Option(16, help="Batch size, for training and prediction."),
    conf: float = typer.Option(0.25, help="Confidence below which a detection is ignored (full frame instead)."),
    val_fraction: float = typer.Option(0.2, help="Share of the boxed images held back to measure mAP50."),
    max_train_images: int = typer.Option(0, help="Train on at most this many boxed images (0: all)."),
    workers: int = typer.Option(2, help="Data-loading processes during training."),
    seed: int = typer.Option(0, help="Random seed."),
    images: Path = typer.Option(paths.IMAGES_TABLE, help="The image table from ingest."),
    out_dir: Path = typer.Option(paths.DETECT_MODEL_DIR, help="Output folder: detector.pt and config.json."),
    boxes_out: Path = typer.Option(paths.BOXES_TABLE, help="Output table: one box per image."),
    metrics: Path = typer.Option(paths.METRICS / "detect.json", help="Metrics file."),
):
    cfg = detect.DetectConfig(model=model, weights=weights, epochs=epochs, img_size=img_size, batch=batch, conf=conf,
                              val_fraction=val_fraction, max_train_images=max_train_images, workers=workers, seed=seed)
    table = read_parquet(images)
    device = pick_device()
    seed_everything(seed)
    n_boxed = int(has_box(table).sum())
    stats: dict = {"images": int(len(table)), "images_with_known_box": n_boxed, "device": device}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        if weights:
            detector, stats["detector"] = Path(weights), f"given weights {weights}"
        elif n_boxed >= 2:
            detector, train_stats = detect.train_detector(table, tmp, cfg, device)
            stats["detector"] = f"trained from {model}"
            stats.update(train_stats)
        else:
            detector = None
            stats["detector"] = "none: no boxes in the data set and no detect.weights; full frame for every image"
        if detector is not None:
            boxes = detect.predict_boxes(table, detector, cfg, device)
        else:
            boxes = pd.DataFrame([detect.full_frame_box(r) for r in table.to_dict("records")], columns=detect.BOXES_COLUMNS)
        write_json({"config": dataclasses.asdict(cfg), "detector": stats["detector"]}, tmp / "config.json")
    stats["detected"] = int((boxes.box_source == detect.DETECTED).sum())
    stats["full_frame"] = int((boxes.box_source == detect.FULL_FRAME).sum())
    stats["mean_confidence"] = float(boxes.loc[boxes.box_source == detect.DETECTED, "confidence"].mean()) if stats["detected"] else 0.0
    stats.update(detect.agreement_with_known_boxes(table, boxes))
    write_parquet(boxes, boxes_out)
    write_json(stats, metrics)
    msg = f"detect: {stats['detected']} images with a detected box, {stats['full_frame']} full frame"
    if "map50" in stats:
        msg += f"; held-back mAP50 {stats['map50']:.3f} on {stats['val_images']} images"
    print(msg)


if __name__ == "__main__":
    app()
