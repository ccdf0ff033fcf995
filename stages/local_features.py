"""local-features: SIFT keypoints of every photo's box region, as it is and mirrored, cached.

The region the crop stage cut is read again from the original photo and described at local.long_side
pixels on its longer side (not at the training crops' size: the marks a matcher needs are lost at
160 px). knn-rank matches them (rerank.* in params.yaml); this stage only re-runs when the photos,
the crops' boxes or local.* change, never when rerank.* does. RootSIFT descriptors as uint8,
keypoint frames (x, y, size, angle), an index per photo (see photoid.local_features). A region
without texture gets no keypoints and is counted in the metrics, not dropped.
"""

from __future__ import annotations

from pathlib import Path

import typer

from photoid import paths
from photoid.cli import PARAMS_OPTION, SET_OPTION, stage_app
from photoid.io import read_parquet, write_json
from photoid.local_features import KeypointConfig, write_store
from photoid.params import load_params

READS = ("local",)
app = stage_app(__doc__, READS)


@app.command()
def main(
    crops: Path = typer.Option(paths.CROPS_TABLE, help="The crop table from crop (each photo's box)."),
    images: Path = typer.Option(paths.IMAGES_TABLE, help="The image table from ingest (each photo's path and size)."),
    out_dir: Path = typer.Option(paths.LOCAL_FEATURES, help="The keypoint store."),
    metrics: Path = typer.Option(paths.METRICS / "local_features.json", help="Metrics file."),
    params_file: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
):
    P = load_params(READS, params_file, overrides)
    cfg, workers = P.build(KeypointConfig, "local"), P.int("local.workers")
    P.check_all_read()
    photos = read_parquet(images)[["image_id", "path", "width", "height"]]
    rows = read_parquet(crops).merge(photos, on="image_id", how="left", validate="one_to_one")
    figures = write_store(rows, out_dir, cfg, workers)
    write_json(figures, metrics)
    print(f"local-features: {figures['crops']} photos at {cfg.long_side} px, {figures['keypoints_per_crop']:.0f} keypoints "
          f"per photo, {figures['crops_without_keypoints']} without any, "
          f"{figures['store_mb_per_1000_photos']:.0f} MB per 1,000 photos, {figures['seconds']:.1f} s -> {out_dir}")


if __name__ == "__main__":
    app()
