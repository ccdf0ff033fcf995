"""retrain: DOLG trained again on one fold's training images plus the pseudo-labelled test images,
with the same loop, params and resume as train-dolg (epochs from retrain.epochs), then the embeddings of
every crop with the new model (as the embed stage makes them). When its starting weights (train-dolg's
model) beat every epoch and are kept, the embed stage's embeddings of that model are its own: they
are copied, not computed again.

With pseudo-labelling off, or no pseudo-label for an individual this fold trains, nothing is
trained: the train-dolg model, its embeddings and its curves pass through unchanged, and the
metrics say so.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from photoid import paths
from photoid.cli import FOLD_OPTION, OUTPUTS_OPTION, PARAMS_OPTION, SET_OPTION, stage_app
from photoid.data.split import ALL, parse_fold
from photoid.embed import embed_checkpoint, embedded_by
from photoid.errors import DataError
from photoid.io import copy_artifact, read_parquet, write_json
from photoid.params import load_params
from photoid.train.fold import FoldRun, dolg_configs, pseudo_rows_for_fold, train_dolg

READS = ("train", "dolg", "retrain", "pseudo.enabled", "embed.flip_tta", "embed.batch_size", "embed.workers")
app = stage_app(__doc__, READS)


@app.command()
def main(
    fold: str = FOLD_OPTION,
    split: Path = typer.Option(paths.SPLIT_TABLE, help="The split table."),
    pseudo: Path = typer.Option(paths.PSEUDO_TABLE, help="The pseudo-label table."),
    crops: Path = typer.Option(paths.CROPS_TABLE, help="The crop table (what to embed; its training photos "
                                                            "validate each epoch as knn-rank's cross-validation does)."),
    inputs: Path = typer.Option(Path("."), help="The folder whose models/, metrics/curves/ and data/processed/embeddings/ "
                                "hold train-backbone's, train-dolg's and embed's outputs for this fold (the project's "
                                "layout) [default: the project itself]."),
    outputs: Path = OUTPUTS_OPTION,
    params_file: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
):
    P = load_params(READS, params_file, overrides)
    enabled, init = P.bool("pseudo.enabled"), P.str("retrain.init")
    bp, p, cfg = dolg_configs(P)
    cfg = replace(cfg, epochs=P.int("retrain.epochs"))  # the dolg section's settings, retrain's epochs
    flip_tta, embed_batch_size, embed_workers = P.bool("embed.flip_tta"), P.int("embed.batch_size"), P.int("embed.workers")
    P.check_all_read()
    if init not in ("dolg", "backbone"):
        raise DataError(f"retrain.init takes dolg or backbone, got {init!r}")
    run = FoldRun("retrain", parse_fold(fold), outputs)
    fold, out = run.out.fold, run.out
    dolg, backbone = paths.FoldOutputs("dolg", fold, inputs), paths.FoldOutputs("backbone", fold, inputs)

    split_table, crop_table = read_parquet(split), read_parquet(crops)
    pseudo_table = read_parquet(pseudo)
    rows = pseudo_rows_for_fold(pseudo_table, split_table, fold) if fold != ALL else pseudo_table.iloc[:0]
    if not enabled or rows.empty:
        if not enabled:
            why = "pseudo-labelling is off"
        elif fold == ALL:
            why = "the model on every labelled photo is not retrained: no validation to keep or refuse what pseudo-labels change"
        elif pseudo_table.empty:
            why = "pseudo-label found no confident test prediction"
        else:
            why = f"none of the {len(pseudo_table)} pseudo-labels names an individual fold {fold} trains"
        copy_artifact(dolg.model_dir, out.model_dir)
        copy_artifact(dolg.embeddings, out.embeddings)
        copy_artifact(dolg.curves, out.curves)  # the curves of the model that passes through
        write_json({"fold": fold, "retrained": False, "reason": why, "pseudo_rows": 0}, out.metrics)
        print(f"retrain fold {fold}: passed through ({why})")
        return

    if init == "dolg":
        cfg = replace(cfg, freeze_epochs=0, select_initial=cfg.select != "")  # already adapted: no linear probe
    result = train_dolg(split_table, crop_table, fold, backbone.model_dir / "model.pt", bp, p, cfg, out.model_dir / "model.pt",
                        out.state_dir, log=run.log, extra_rows=rows,
                        init_ckpt=dolg.model_dir / "model.pt" if init == "dolg" else None,
                        baselines=False,  # train-dolg's metrics have them for this fold
                        cache_dir=out.crop_cache)
    if not run.writes:
        return
    run.close()
    if result["epoch_kept"] == 0 and embedded_by(dolg.embeddings, dolg.model_dir / "model.pt", crop_table, flip_tta):
        copy_artifact(dolg.embeddings, out.embeddings)  # the starting weights: train-dolg's model, embedded by embed
        embedded = {"embeddings": "copied from embed (the starting weights were kept)"}
    else:
        info = embed_checkpoint(out.model_dir / "model.pt", crop_table, out.embeddings, flip_tta,
                                embed_batch_size, embed_workers)
        embedded = {"embed_img_per_s": info["img_per_s"]}
    write_json({**result, "retrained": True, "pseudo_rows": len(rows), **embedded}, out.metrics)
    print(f"retrain fold {fold}: {len(rows)} pseudo-labelled images added; val MAP@5 {result['val_map5']:.3f} "
          f"(epoch kept: {result['epoch_kept']}, 0 = the starting weights)")


if __name__ == "__main__":
    app()
