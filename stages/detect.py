"""detect: train a YOLO fin/body detector on the data set's boxes (or load given weights) and
predict one box for every image.

Every image keeps its most confident detection, down to detect.conf; none that high: the image keeps its
full frame (counted). A data set with no boxes and no detect.weights: full frame for every image, and the
metrics say so.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import typer

from photoid import detect, paths
from photoid.cli import PARAMS_OPTION, SET_OPTION, stage_app
from photoid.data.schema import has_box
from photoid.io import atomic_path, read_parquet, write_json, write_parquet
from photoid.params import load_params
from photoid.runtime import pick_device, seed_everything

READS = ("detect",)
app = stage_app(__doc__, READS)


@app.command()
def main(
    images: Path = typer.Option(paths.IMAGES_TABLE, help="The image table from ingest."),
    out_dir: Path = typer.Option(paths.DETECT_MODEL_DIR, help="Output folder: detector.pt and config.json."),
    boxes_out: Path = typer.Option(paths.BOXES_TABLE, help="Output table: one box per image."),
    metrics: Path = typer.Option(paths.METRICS / "detect.json", help="Metrics file."),
    params_file: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
):
    P = load_params(READS, params_file, overrides)
    cfg = P.build(detect.DetectConfig, "detect")
    P.check_all_read()
    table = read_parquet(images)
    device = pick_device()
    seed_everything(cfg.seed)
    n_boxed = int(has_box(table).sum())
    stats: dict = {"images": int(len(table)), "images_with_known_box": n_boxed, "device": device}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        if cfg.weights:
            detector, stats["detector"] = Path(cfg.weights), f"given weights {cfg.weights}"
        elif n_boxed >= 2:
            detector, train_stats = detect.train_detector(table, tmp, cfg, device)
            stats["detector"] = f"trained from {cfg.model}"
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
    detected = boxes.box_source == detect.DETECTED
    stats["mean_confidence"] = float(boxes.loc[detected, "confidence"].mean()) if stats["detected"] else 0.0
    stats.update(detect.agreement_with_known_boxes(table, boxes))
    write_parquet(boxes, boxes_out)
    write_json(stats, metrics)
    msg = f"detect: {stats['detected']} images with a detected box, {stats['full_frame']} full frame"
    if "map50" in stats:
        msg += f"; held-back mAP50 {stats['map50']:.3f} on {stats['val_images']} images"
    print(msg)


if __name__ == "__main__":
    app()
