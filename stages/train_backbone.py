"""train-backbone: one fold's timm backbone trained as a plain classifier (label-smoothing CE,
one-cycle AdamW). Resumable: killed and started again with the same params, it continues from
its last completed epoch.

Outputs: <out-dir>/model.pt (state_dict + config + classes), the metrics file, dvclive curves.
"""

from __future__ import annotations

from pathlib import Path

import typer

from photoid import paths
from photoid.cli import FOLD_OPTION, PARAMS_OPTION, SET_OPTION, fold_path_option, reports_data_errors, stage_app
from photoid.data.split import parse_fold
from photoid.io import read_parquet, write_json
from photoid.params import load_params
from photoid.train.fold import backbone_configs, train_backbone
from photoid.train.live import EpochLog
from photoid.train.loop import distributed, finished

READS = ("train", "backbone")
app = stage_app(__doc__, READS)


@app.command()
@reports_data_errors
def main(
    fold: str = FOLD_OPTION,
    split: Path = typer.Option(paths.SPLIT_TABLE, help="The split table."),
    out_dir: Path = fold_path_option("model_dir", "backbone"),
    metrics: Path = fold_path_option("metrics", "backbone"),
    curves: Path = fold_path_option("curves", "backbone"),
    state_dir: Path = fold_path_option("state_dir", "backbone"),
    params_file: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
):
    P = load_params(READS, params_file, overrides)
    bp, p, cfg = backbone_configs(P)
    P.check_all_read()
    fold = parse_fold(fold)
    here = paths.FoldOutputs("backbone", fold)
    out_dir, metrics, curves, state_dir = (out_dir or here.model_dir, metrics or here.metrics, curves or here.curves,
                                           state_dir or here.state_dir)
    rank, _ = distributed()
    log = EpochLog(curves) if rank == 0 else None
    result = train_backbone(read_parquet(split), fold, bp, p, cfg, Path(out_dir) / "model.pt", state_dir, log=log)
    if rank == 0:
        log.close()
        write_json(result, metrics)
        finished(state_dir)
        val = f"val accuracy {result['val_accuracy']:.3f}" if "val_accuracy" in result else "no validation"
        print(f"train-backbone fold {fold}: {val} (epoch {result['epoch_kept']}), {result['img_per_s']:.0f} img/s")


if __name__ == "__main__":
    app()
