"""train-dolg: DOLG on the fold's trained backbone, ArcFace with adaptive margins, discriminative
learning rates. Validation MAP@5 of the fold's validation images (known + held-out new) against
its training images; the plain backbone's pooled features are scored the same way for comparison.
Resumable like train-backbone.
"""

from __future__ import annotations

from pathlib import Path

import typer

from photoid import paths
from photoid.cli import as_bool, as_ints, reports_data_errors, stage_app
from photoid.models.weights import normalise_spec
from photoid.io import read_parquet, write_json
from photoid.train.fold import BackboneParams, DolgParams, train_dolg
from photoid.train.live import EpochLog
from photoid.train.loop import TrainConfig, distributed, finished

app = stage_app(__doc__)


@app.command()
@reports_data_errors
def main(
    fold: int = typer.Option(..., help="Which fold to train."),
    backbone: str = typer.Option("efficientnet_lite0", help="timm model name (as train-backbone used)."),
    pretrained: str = typer.Option("false", help="The backbone's pretrained weights (as train-backbone); only to score the untrained features beside DOLG's."),
    img_size: int = typer.Option(96, help="Training image size (pixels)."),
    hflip: str = typer.Option("false", help="true: random horizontal flips."),
    preload: str = typer.Option("true", help="true: decode every crop once into memory."),
    batch_size: int = typer.Option(32, help="Batch size per process."),
    grad_accum: int = typer.Option(1, help="Batches per optimiser step."),
    clip_norm: float = typer.Option(1.0, help="Gradient-norm clipping (0: off)."),
    workers: int = typer.Option(0, help="Data-loading processes."),
    compile: str = typer.Option("false", help="true: torch.compile the model."),
    frozen_stages: int = typer.Option(0, help="The backbone's first feature stages that never train (their BatchNorm too)."),
    seed: int = typer.Option(0, help="Random seed."),
    epochs: int = typer.Option(10, help="Epochs."),
    embedding_dim: int = typer.Option(256, help="Embedding size."),
    local_dim: int = typer.Option(256, help="Channels of the local and global branches."),
    dilations: str = typer.Option("3,6,9", help="Dilations of the multi-atrous convolutions, comma-separated."),
    margin_rule: str = typer.Option("minmax", help="minmax (n^-1/4 scaled into [margin-min, margin-max]), power (a*n^p+b) or fixed (margin-max)."),
    margin_min: float = typer.Option(0.05, help="minmax: margin of the most frequent class."),
    margin_max: float = typer.Option(0.35, help="minmax: margin of the rarest class; fixed: the margin."),
    margin_a: float = typer.Option(0.271, help="power: a."),
    margin_p: float = typer.Option(-0.364, help="power: p."),
    margin_b: float = typer.Option(0.05, help="power: b."),
    scale: float = typer.Option(30.0, help="ArcFace scale s."),
    subcenters: int = typer.Option(2, help="Sub-centres per class (k)."),
    lr_backbone: float = typer.Option(3e-4, help="Peak LR of the backbone."),
    lr_dolg: float = typer.Option(1e-3, help="Peak LR of the DOLG branches."),
    lr_neck: float = typer.Option(1e-3, help="Peak LR of the neck."),
    lr_head: float = typer.Option(1e-2, help="Peak LR of the ArcFace head."),
    weight_decay: float = typer.Option(1e-4, help="AdamW weight decay."),
    freeze_epochs: int = typer.Option(0, help="Epochs with the backbone frozen (the new layers learn first)."),
    select_best: str = typer.Option("true", help="true: keep the epoch with the best val MAP@5; false: the last."),
    split: Path = typer.Option(paths.SPLIT_TABLE, help="The split table."),
    backbone_dir: Path = typer.Option(None, help="train-backbone's output [default: models/backbone/fold<k>]."),
    out_dir: Path = typer.Option(None, help="Output folder [default: models/dolg/fold<k>]."),
    metrics: Path = typer.Option(None, help="Metrics file [default: metrics/dolg/fold<k>.json]."),
    curves: Path = typer.Option(None, help="dvclive folder [default: metrics/curves/dolg/fold<k>]."),
    state_dir: Path = typer.Option(None, help="Resume state [default: checkpoints/dolg/fold<k>]."),
):
    backbone_dir = backbone_dir or paths.MODELS / "backbone" / f"fold{fold}"
    out_dir = out_dir or paths.MODELS / "dolg" / f"fold{fold}"
    metrics = metrics or paths.METRICS / "dolg" / f"fold{fold}.json"
    curves = curves or paths.METRICS / "curves" / "dolg" / f"fold{fold}"
    state_dir = state_dir or paths.CHECKPOINTS / "dolg" / f"fold{fold}"
    bp = BackboneParams(backbone=backbone, pretrained=normalise_spec(pretrained), img_size=img_size, hflip=as_bool(hflip, "hflip"),
                        preload=as_bool(preload, "preload"))
    p = DolgParams(embedding_dim=embedding_dim, local_dim=local_dim, dilations=as_ints(dilations, "dilations"),
                   margin_rule=margin_rule, margin_min=margin_min, margin_max=margin_max, margin_a=margin_a,
                   margin_p=margin_p, margin_b=margin_b, scale=scale, subcenters=subcenters,
                   lr_backbone=lr_backbone, lr_dolg=lr_dolg, lr_neck=lr_neck, lr_head=lr_head)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, weight_decay=weight_decay, grad_accum=grad_accum,
                      clip_norm=clip_norm, seed=seed, workers=workers, compile=as_bool(compile, "compile"),
                      freeze_epochs=freeze_epochs, frozen_stages=frozen_stages, select="val_map5" if as_bool(select_best, "select-best") else "")
    rank, _ = distributed()
    log = EpochLog(curves) if rank == 0 else None
    result = train_dolg(read_parquet(split), fold, Path(backbone_dir) / "model.pt", bp, p, cfg,
                        Path(out_dir) / "model.pt", state_dir, log=log)
    if rank == 0:
        log.close()
        write_json(result, metrics)
        finished(state_dir)
        print(f"train-dolg fold {fold}: val MAP@5 {result['val_map5']:.3f} (plain backbone {result['backbone_val_map5']:.3f})")


if __name__ == "__main__":
    app()
