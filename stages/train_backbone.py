"""train-backbone: one fold's timm backbone trained as a plain classifier (label-smoothing CE,
one-cycle AdamW). Resumable: killed and started again with the same params, it continues from
its last completed epoch.

Outputs: models/backbone/fold<k>/model.pt (state_dict + config + classes), the metrics file, dvclive
curves (see --outputs).
"""

from __future__ import annotations

from pathlib import Path

import typer

from photoid import paths
from photoid.cli import FOLD_OPTION, OUTPUTS_OPTION, PARAMS_OPTION, SET_OPTION, stage_app
from photoid.data.split import parse_fold
from photoid.io import read_parquet
from photoid.params import load_params
from photoid.train.fold import FoldRun, backbone_configs, train_backbone

READS = ("train", "backbone")
app = stage_app(__doc__, READS)


@app.command()
def main(
    fold: str = FOLD_OPTION,
    split: Path = typer.Option(paths.SPLIT_TABLE, help="The split table."),
    crops: Path = typer.Option(paths.CROPS_TABLE, help="The crop table (its training photos are cached at the training "
                               "size, for this stage and train-dolg)."),
    outputs: Path = OUTPUTS_OPTION,
    params_file: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
):
    P = load_params(READS, params_file, overrides)
    bp, p, cfg = backbone_configs(P)
    P.check_all_read()
    run = FoldRun("backbone", parse_fold(fold), outputs)
    result = train_backbone(read_parquet(split), read_parquet(crops), run.out.fold, bp, p, cfg, run.out.model_dir / "model.pt",
                            run.out.state_dir, log=run.log, cache_dir=run.out.crop_cache)
    if run.writes:
        run.finish(result)
        val = f"val accuracy {result['val_accuracy']:.3f}" if "val_accuracy" in result else "no validation"
        print(f"train-backbone fold {fold}: {val} (epoch {result['epoch_kept']}), {result['img_per_s']:.0f} img/s")


if __name__ == "__main__":
    app()
