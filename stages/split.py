"""split: hold a share of individuals out whole (they play new animals) and deal the rest into
k folds stratified by individual. One table: the training rows with `fold` (-1 = held out) and `is_new`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from photoid import paths
from photoid.cli import PARAMS_OPTION, SET_OPTION, stage_app
from photoid.data.split import split_folds
from photoid.io import read_parquet, write_json, write_parquet
from photoid.params import load_params

READS = ("split",)
app = stage_app(__doc__, READS)


@app.command()
def main(
    filtered: Path = typer.Option(paths.FILTERED_TABLE, help="The table from filter."),
    out: Path = typer.Option(paths.SPLIT_TABLE, help="Output table."),
    metrics: Path = typer.Option(paths.METRICS / "split.json", help="Metrics file."),
    params_file: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
):
    P = load_params(READS, params_file, overrides)
    n_folds, new_fraction, seed = P.int("split.n_folds"), P.float("split.new_fraction"), P.int("split.seed")
    P.check_all_read()
    split, stats = split_folds(read_parquet(filtered), n_folds=n_folds, new_fraction=new_fraction, seed=seed)
    write_parquet(split, out)
    write_json(stats, metrics)
    print(f"split: {stats['individuals_known']} known individuals in {n_folds} folds, {stats['individuals_new']} held out as new")


if __name__ == "__main__":
    app()
