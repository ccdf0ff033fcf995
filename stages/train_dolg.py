"""train-dolg: DOLG on the fold's trained backbone, ArcFace with adaptive margins, discriminative
learning rates. Validation MAP@5 of the fold's validation images (known + held-out new) against
its training images; the plain backbone's pooled features are scored the same way for comparison.
Resumable like train-backbone.
"""

from __future__ import annotations

from pathlib import Path

import typer

from photoid import paths
from photoid.cli import FOLD_OPTION, PARAMS_OPTION, SET_OPTION, fold_path_option, reports_data_errors, stage_app
from photoid.data.split import parse_fold
from photoid.io import read_parquet, write_json
from photoid.params import load_params
from photoid.train.fold import dolg_configs, train_dolg
from photoid.train.live import EpochLog
from photoid.train.loop import distributed, finished

READS = ("train", "dolg")
app = stage_app(__doc__, READS)


@app.command()
@reports_data_errors
def main(
    fold: str = FOLD_OPTION,
    split: Path = typer.Option(paths.SPLIT_TABLE, help="The split table."),
    backbone_dir: Path = fold_path_option("model_dir", "backbone", "train-backbone's output"),
    out_dir: Path = fold_path_option("model_dir", "dolg"),
    metrics: Path = fold_path_option("metrics", "dolg"),
    curves: Path = fold_path_option("curves", "dolg"),
    state_dir: Path = fold_path_option("state_dir", "dolg"),
    params_file: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
):
    P = load_params(READS, params_file, overrides)
    bp, p, cfg = dolg_configs(P)
    P.check_all_read()
    fold = parse_fold(fold)
    here = paths.FoldOutputs("dolg", fold)
    backbone_dir = backbone_dir or paths.FoldOutputs("backbone", fold).model_dir
    out_dir, metrics, curves, state_dir = (out_dir or here.model_dir, metrics or here.metrics, curves or here.curves,
                                           state_dir or here.state_dir)
    rank, _ = distributed()
    log = EpochLog(curves) if rank == 0 else None
    result = train_dolg(read_parquet(split), fold, Path(backbone_dir) / "model.pt", bp, p, cfg,
                        Path(out_dir) / "model.pt", state_dir, log=log)
    if rank == 0:
        log.close()
        write_json(result, metrics)
        finished(state_dir)
        done = (f"val MAP@5 {result['val_map5']:.3f} (plain backbone {result['backbone_val_map5']:.3f})" if "val_map5" in result
                else f"no validation, {result['train_images']} photos of {result['classes']} individuals")
        print(f"train-dolg fold {fold}: {done}")


if __name__ == "__main__":
    app()
