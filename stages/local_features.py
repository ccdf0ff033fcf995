"""local-features: SIFT keypoints of every crop, as it is and mirrored, computed once and cached.

knn-rank's re-ranking (rerank.* in params.yaml) verifies its shortlists with them; this stage only
re-runs when the crops or local.* change, never when rerank.* does. RootSIFT descriptors as uint8,
keypoint frames (x, y, size, angle), an index per crop (see photoid.local_features). A crop without
texture gets no keypoints and is counted in the metrics, not dropped.
"""

from __future__ import annotations

from pathlib import Path

import typer

from photoid import paths
from photoid.cli import as_bool, reports_data_errors, stage_app
from photoid.io import read_parquet, write_json
from photoid.local_features import KeypointConfig, write_store

app = stage_app(__doc__)


@app.command()
@reports_data_errors
def main(
    max_keypoints: int = typer.Option(500, help="Strongest SIFT keypoints kept per crop."),
    contrast_threshold: float = typer.Option(0.04, help="SIFT's contrast threshold: lower finds fainter keypoints."),
    clahe: str = typer.Option("true", help="true: equalise contrast locally (CLAHE) before detection."),
    workers: int = typer.Option(2, help="Processes describing crops."),
    crops: Path = typer.Option(paths.CROPS_TABLE, help="The crop table from crop."),
    out_dir: Path = typer.Option(paths.LOCAL_FEATURES, help="The keypoint store."),
    metrics: Path = typer.Option(paths.METRICS / "local_features.json", help="Metrics file."),
):
    cfg = KeypointConfig(max_keypoints, contrast_threshold, as_bool(clahe, "clahe"))
    figures = write_store(read_parquet(crops), out_dir, cfg, workers)
    write_json(figures, metrics)
    print(f"local-features: {figures['crops']} crops, {figures['keypoints_per_crop']:.0f} keypoints per crop, "
          f"{figures['crops_without_keypoints']} without any, {figures['seconds']:.1f} s -> {out_dir}")


if __name__ == "__main__":
    app()
