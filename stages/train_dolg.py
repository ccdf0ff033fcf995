"""train-dolg: DOLG on the fold's trained backbone, ArcFace with adaptive margins, discriminative
learning rates. Validation: the fold's embedding CV MAP@5 as knn-rank computes it (its validation photos, known,
held-out and rare, against every other training photo); the plain backbone's pooled features and the
untrained pretrained ones are scored the same way for comparison.
Resumable like train-backbone.
"""

from __future__ import annotations

from pathlib import Path

import typer

from photoid import paths
from photoid.cli import FOLD_OPTION, OUTPUTS_OPTION, PARAMS_OPTION, SET_OPTION, fold_path_option, stage_app
from photoid.data.split import parse_fold
from photoid.io import read_parquet
from photoid.params import load_params
from photoid.train.fold import FoldRun, dolg_configs, train_dolg

READS = ("train", "dolg")
app = stage_app(__doc__, READS)


@app.command()
def main(
    fold: str = FOLD_OPTION,
    backbone_dir: Path = fold_path_option("model_dir", "backbone", "train-backbone's output"),
    split: Path = typer.Option(paths.SPLIT_TABLE, help="The split table."),
    crops: Path = typer.Option(paths.CROPS_TABLE, help="The crop table (its training photos validate each epoch as "
                               "knn-rank's cross-validation does)."),
    outputs: Path = OUTPUTS_OPTION,
    params_file: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
):
    P = load_params(READS, params_file, overrides)
    bp, p, cfg = dolg_configs(P)
    P.check_all_read()
    run = FoldRun("dolg", parse_fold(fold), outputs)
    backbone_dir = backbone_dir or paths.FoldOutputs("backbone", run.out.fold).model_dir
    result = train_dolg(read_parquet(split), read_parquet(crops), run.out.fold, Path(backbone_dir) / "model.pt", bp, p, cfg,
                        run.out.model_dir / "model.pt", run.out.state_dir, log=run.log,
                        cache_dir=run.out.crop_cache)
    if run.writes:
        run.finish(result)
        done = (f"val MAP@5 {result['val_map5']:.3f} (plain backbone {result['backbone_val_map5']:.3f})" if "val_map5" in result
                else f"no validation, {result['train_images']} photos of {result['classes']} individuals")
        print(f"train-dolg fold {fold}: {done}")


if __name__ == "__main__":
    app()
