"""filter: keep for training only individuals with at least filter.min_samples training images.

Test images always pass. Dropped training images go to filtered_out.parquet with the reason.
"""

from __future__ import annotations

from pathlib import Path

import typer

from photoid import paths
from photoid.cli import PARAMS_OPTION, SET_OPTION, stage_app
from photoid.data.filter import filter_individuals
from photoid.io import read_parquet, write_json, write_parquet
from photoid.params import load_params

READS = ("filter",)
app = stage_app(__doc__, READS)


@app.command()
def main(
    crops: Path = typer.Option(paths.CROPS_TABLE, help="The crop table from crop."),
    out: Path = typer.Option(paths.FILTERED_TABLE, help="Output: kept rows (all test rows included)."),
    dropped_out: Path = typer.Option(paths.FILTERED_OUT_TABLE, help="Output: dropped training rows with the reason."),
    metrics: Path = typer.Option(paths.METRICS / "filter.json", help="Metrics file (counts before and after)."),
    params_file: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
):
    P = load_params(READS, params_file, overrides)
    min_samples = P.int("filter.min_samples")
    P.check_all_read()
    kept, dropped, stats = filter_individuals(read_parquet(crops), min_samples)
    write_parquet(kept, out)
    write_parquet(dropped, dropped_out)
    write_json(stats, metrics)
    print(f"filter: {stats['individuals_before']} -> {stats['individuals_after']} individuals, "
          f"{stats['train_images_before']} -> {stats['train_images_after']} training images (min {min_samples})")


if __name__ == "__main__":
    app()
