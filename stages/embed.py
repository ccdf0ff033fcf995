"""embed: embeddings of every training and test crop with one fold's DOLG model.

Horizontal-flip TTA (the flipped crop is embedded too; queries use the mean of the two,
L2-normalised, and the gallery keeps both); batched, bf16 on CUDA; written batch by batch to
memory-mapped .npy files, so memory does not grow with the data set. Output: an embedding set
(rows.parquet, embeddings.npy, flipped.npy, meta.json; see photoid.embed).
"""

from __future__ import annotations

from pathlib import Path

import typer

from photoid import paths
from photoid.cli import as_bool, reports_data_errors, stage_app
from photoid.embed import embed_checkpoint
from photoid.io import read_parquet, write_json

app = stage_app(__doc__)


@app.command()
@reports_data_errors
def main(
    fold: int = typer.Option(..., help="Which fold's model."),
    flip_tta: str = typer.Option("true", help="true: embed the horizontally flipped crops too."),
    batch_size: int = typer.Option(64, help="Crops per batch."),
    workers: int = typer.Option(0, help="Data-loading processes."),
    crops: Path = typer.Option(paths.CROPS_TABLE, help="The crop table from crop."),
    model_dir: Path = typer.Option(None, help="The model's folder [default: models/dolg/fold<k>]."),
    out_dir: Path = typer.Option(None, help="Output folder [default: data/processed/embeddings/dolg/fold<k>]."),
    metrics: Path = typer.Option(None, help="Metrics file [default: metrics/embed/fold<k>.json]."),
):
    model_dir = model_dir or paths.MODELS / "dolg" / f"fold{fold}"
    out_dir = out_dir or paths.EMBEDDINGS / "dolg" / f"fold{fold}"
    metrics = metrics or paths.METRICS / "embed" / f"fold{fold}.json"
    info = embed_checkpoint(Path(model_dir) / "model.pt", read_parquet(crops), out_dir, as_bool(flip_tta, "flip-tta"),
                            batch_size, workers)
    write_json(info, metrics)
    print(f"embed fold {fold}: {info['images']} crops -> {info['dim']}-d, flip TTA {info['flip']}, "
          f"{info['img_per_s']} img/s")


if __name__ == "__main__":
    app()
