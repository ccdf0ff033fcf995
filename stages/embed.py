"""embed: embeddings of every training and test crop with one fold's DOLG model.

embed.features picks what embeds: ``dolg`` (the default: train-dolg's model), ``backbone``
(train-backbone's classifier, its pooled features) or ``untrained`` (the pretrained backbone as
train.pretrained gives it, no training at all: the baseline fine-tuning must beat).

Horizontal-flip TTA (the flipped crop is embedded too; queries use the mean of the two,
L2-normalised, and the gallery keeps both); batched, bf16 on CUDA; written batch by batch to
memory-mapped .npy files, so memory does not grow with the data set. Output: an embedding set
(rows.parquet, embeddings.npy, flipped.npy, meta.json; see photoid.embed).
"""

from __future__ import annotations

from pathlib import Path

import typer

from photoid import paths
from photoid.cli import FOLD_OPTION, OUTPUTS_OPTION, PARAMS_OPTION, SET_OPTION, fold_path_option, stage_app
from photoid.data.split import parse_fold
from photoid.embed import embed_checkpoint, embed_untrained
from photoid.errors import DataError
from photoid.io import read_parquet, write_json
from photoid.models.weights import is_random, normalise_spec
from photoid.params import load_params

READS = ("embed", "train.backbone", "train.pretrained", "train.img_size")
app = stage_app(__doc__, READS)


@app.command()
def main(
    fold: str = FOLD_OPTION,
    crops: Path = typer.Option(paths.CROPS_TABLE, help="The crop table from crop."),
    model_dir: Path = fold_path_option("model_dir", "dolg", "The DOLG model's folder"),
    backbone_dir: Path = fold_path_option("model_dir", "backbone", "train-backbone's folder"),
    outputs: Path = OUTPUTS_OPTION,
    params_file: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
):
    P = load_params(READS, params_file, overrides)
    features, flip = P.str("embed.features"), P.bool("embed.flip_tta")
    batch_size, workers = P.int("embed.batch_size"), P.int("embed.workers")
    # the untrained baseline embeds the pretrained backbone itself; trained models carry their own
    backbone, pretrained, img_size = P.str("train.backbone"), P.str("train.pretrained"), P.int("train.img_size")
    P.check_all_read()
    fold = parse_fold(fold)
    model_dir = model_dir or paths.FoldOutputs("dolg", fold).model_dir
    backbone_dir = backbone_dir or paths.FoldOutputs("backbone", fold).model_dir
    # the embeddings of the DOLG model (embeddings/dolg/fold<k>, whatever embed.features) and embed's metrics
    out_dir, metrics = paths.FoldOutputs("dolg", fold, outputs).embeddings, paths.FoldOutputs("embed", fold, outputs).metrics
    if features == "dolg":
        info = embed_checkpoint(Path(model_dir) / "model.pt", read_parquet(crops), out_dir, flip, batch_size, workers)
    elif features == "backbone":
        info = embed_checkpoint(Path(backbone_dir) / "model.pt", read_parquet(crops), out_dir, flip, batch_size, workers)
    elif features == "untrained":
        if is_random(pretrained):
            raise DataError("embed.features untrained needs pretrained weights (train.pretrained): random ones are no baseline.")
        info = embed_untrained(backbone, normalise_spec(pretrained), img_size, read_parquet(crops), out_dir, flip,
                               batch_size, workers)
    else:
        raise DataError(f"embed.features takes dolg, backbone or untrained, got {features!r}")
    info["features"] = features
    info.pop("model_sha256", None)  # in the set's meta.json (what retrain checks before it copies), not a metric
    write_json(info, metrics)
    print(f"embed fold {fold} ({features}): {info['images']} crops -> {info['dim']}-d, flip TTA {info['flip']}, "
          f"{info['img_per_s']} img/s")


if __name__ == "__main__":
    app()
