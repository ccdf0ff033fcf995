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
from photoid.cli import PARAMS_OPTION, SET_OPTION, stage_app
from photoid.io import read_parquet, write_json
from photoid.local_features import KeypointConfig, write_store
from photoid.params import load_params

READS = ("local",)
app = stage_app(__doc__, READS)


@app.command()
def main(
    crops: Path = typer.Option(paths.CROPS_TABLE, help="The crop table from crop."),
    out_dir: Path = typer.Option(paths.LOCAL_FEATURES, help="The keypoint store."),
    metrics: Path = typer.Option(paths.METRICS / "local_features.json", help="Metrics file."),
    params_file: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
):
    P = load_params(READS, params_file, overrides)
    cfg, workers = P.build(KeypointConfig, "local"), P.int("local.workers")
    P.check_all_read()
    figures = write_store(read_parquet(crops), out_dir, cfg, workers)
    write_json(figures, metrics)
    print(f"local-features: {figures['crops']} crops, {figures['keypoints_per_crop']:.0f} keypoints per crop, "
          f"{figures['crops_without_keypoints']} without any, {figures['seconds']:.1f} s -> {out_dir}")


if __name__ == "__main__":
    app()
