"""retrain: DOLG trained again on one fold's training images plus the pseudo-labelled test images,
with the same loop, params and resume as train-dolg (epochs from --epochs), then the embeddings of
every crop with the new model (as the embed stage makes them).

With pseudo-labelling off, or no pseudo-label for an individual this fold trains, nothing is
trained: the train-dolg model, its embeddings and its curves pass through unchanged, and the
metrics say so.
"""

from __future__ import annotations

from pathlib import Path

import typer

from photoid import paths
from photoid.cli import as_bool, as_ints, reports_data_errors, stage_app
from photoid.data.sources import DataError
from photoid.embed import embed_checkpoint
from photoid.models.weights import normalise_spec
from photoid.io import copy_artifact, read_parquet, write_json
from photoid.train.fold import BackboneParams, DolgParams, pseudo_rows_for_fold, train_dolg
from photoid.train.live import EpochLog
from photoid.train.loop import TrainConfig, distributed, finished

app = stage_app(__doc__)


@app.command()
@reports_data_errors
def main(
    fold: int = typer.Option(..., help="Which fold to train."),
    enabled: str = typer.Option("true", help="false: pass the train-dolg model and embeddings through."),
    epochs: int = typer.Option(10, help="Epochs."),
    init: str = typer.Option("dolg", help="dolg: fine-tune train-dolg's model (the starting weights compete in the epoch choice, so CV cannot drop); backbone: train DOLG again from train-backbone's weights."),
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
    embedding_dim: int = typer.Option(256, help="Embedding size."),
    local_dim: int = typer.Option(256, help="Channels of the local and global branches."),
    dilations: str = typer.Option("3,6,9", help="Dilations of the multi-atrous convolutions, comma-separated."),
    margin_rule: str = typer.Option("minmax", help="minmax, power or fixed (see train-dolg)."),
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
    flip_tta: str = typer.Option("true", help="Embeddings: true to embed the flipped crops too (as embed)."),
    embed_batch_size: int = typer.Option(64, help="Embeddings: crops per batch."),
    embed_workers: int = typer.Option(0, help="Embeddings: data-loading processes."),
    split: Path = typer.Option(paths.SPLIT_TABLE, help="The split table."),
    pseudo: Path = typer.Option(paths.PSEUDO_TABLE, help="The pseudo-label table."),
    crops: Path = typer.Option(paths.CROPS_TABLE, help="The crop table (what to embed)."),
    backbone_dir: Path = typer.Option(None, help="train-backbone's output [default: models/backbone/fold<k>]."),
    dolg_dir: Path = typer.Option(None, help="train-dolg's output, passed through when nothing is retrained [default: models/dolg/fold<k>]."),
    dolg_embeddings: Path = typer.Option(None, help="embed's output for that model [default: data/processed/embeddings/dolg/fold<k>]."),
    dolg_curves: Path = typer.Option(None, help="train-dolg's curves, passed through with its model [default: metrics/curves/dolg/fold<k>]."),
    out_dir: Path = typer.Option(None, help="Output folder [default: models/retrain/fold<k>]."),
    embeddings_out: Path = typer.Option(None, help="Embeddings output [default: data/processed/embeddings/retrain/fold<k>]."),
    metrics: Path = typer.Option(None, help="Metrics file [default: metrics/retrain/fold<k>.json]."),
    curves: Path = typer.Option(None, help="dvclive folder [default: metrics/curves/retrain/fold<k>]."),
    state_dir: Path = typer.Option(None, help="Resume state [default: checkpoints/retrain/fold<k>]."),
):
    backbone_dir = backbone_dir or paths.MODELS / "backbone" / f"fold{fold}"
    dolg_dir = dolg_dir or paths.MODELS / "dolg" / f"fold{fold}"
    dolg_embeddings = dolg_embeddings or paths.EMBEDDINGS / "dolg" / f"fold{fold}"
    dolg_curves = dolg_curves or paths.METRICS / "curves" / "dolg" / f"fold{fold}"
    out_dir = Path(out_dir or paths.MODELS / "retrain" / f"fold{fold}")
    embeddings_out = embeddings_out or paths.EMBEDDINGS / "retrain" / f"fold{fold}"
    metrics = metrics or paths.METRICS / "retrain" / f"fold{fold}.json"
    curves = Path(curves or paths.METRICS / "curves" / "retrain" / f"fold{fold}")
    state_dir = state_dir or paths.CHECKPOINTS / "retrain" / f"fold{fold}"

    split_table = read_parquet(split)
    pseudo_table = read_parquet(pseudo)
    rows = pseudo_rows_for_fold(pseudo_table, split_table, fold)
    if not as_bool(enabled, "enabled") or rows.empty:
        if not as_bool(enabled, "enabled"):
            why = "pseudo-labelling is off"
        elif pseudo_table.empty:
            why = "pseudo-label found no confident test prediction"
        else:
            why = f"none of the {len(pseudo_table)} pseudo-labels names an individual fold {fold} trains"
        copy_artifact(Path(dolg_dir), out_dir)
        copy_artifact(Path(dolg_embeddings), embeddings_out)
        copy_artifact(Path(dolg_curves), curves)  # the curves of the model that passes through
        write_json({"fold": fold, "retrained": False, "reason": why, "pseudo_rows": 0}, metrics)
        print(f"retrain fold {fold}: passed through ({why})")
        return

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
    if init == "dolg":
        cfg.freeze_epochs, cfg.select_initial = 0, cfg.select != ""  # already adapted: no linear probe
    elif init != "backbone":
        raise DataError(f"--init takes dolg or backbone, got {init!r} (retrain.init in params.yaml)")
    result = train_dolg(split_table, fold, Path(backbone_dir) / "model.pt", bp, p, cfg, out_dir / "model.pt",
                        state_dir, log=log, extra_rows=rows,
                        init_ckpt=Path(dolg_dir) / "model.pt" if init == "dolg" else None)
    if rank != 0:
        return
    log.close()
    finished(state_dir)
    info = embed_checkpoint(out_dir / "model.pt", read_parquet(crops), embeddings_out, as_bool(flip_tta, "flip-tta"),
                            embed_batch_size, embed_workers)
    write_json({**result, "retrained": True, "pseudo_rows": len(rows), "embed_img_per_s": info["img_per_s"]}, metrics)
    print(f"retrain fold {fold}: {len(rows)} pseudo-labelled images added; val MAP@5 {result['val_map5']:.3f} "
          f"(epoch kept: {result['epoch_kept']}, 0 = the starting weights)")


if __name__ == "__main__":
    app()
