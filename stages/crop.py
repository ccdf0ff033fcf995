"""crop: cut each image's box (plus a margin) out and store it as a square crop (crop.fit: padded or stretched).

Output: a folder with images/ and crops.parquet (image_id, part, individual, species, crop_path,
the crop's box in the original image, and where the box came from).
"""

from __future__ import annotations

from pathlib import Path

import typer

from photoid import paths
from photoid.cli import PARAMS_OPTION, SET_OPTION, stage_app
from photoid.crop import crop_all, crop_side
from photoid.data.schema import FULL_FRAME
from photoid.io import atomic_path, read_parquet, write_json
from photoid.params import load_params

READS = ("crop", "train.img_size")
app = stage_app(__doc__, READS)


@app.command()
def main(
    images: Path = typer.Option(paths.IMAGES_TABLE, help="The image table from ingest."),
    boxes: Path = typer.Option(paths.BOXES_TABLE, help="The box table from detect."),
    out_dir: Path = typer.Option(paths.CROPS_DIR, help="Output folder."),
    metrics: Path = typer.Option(paths.METRICS / "crop.json", help="Metrics file."),
    params_file: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
):
    P = load_params(READS, params_file, overrides)
    size, margin, workers, fit = crop_side(P), P.float("crop.margin"), P.int("crop.workers"), P.str("crop.fit")
    P.check_all_read()
    table, box_table = read_parquet(images), read_parquet(boxes)
    with atomic_path(out_dir) as tmp:
        crops = crop_all(table, box_table, tmp, size=size, margin=margin, workers=workers, final_dir=Path(out_dir),
                         fit=fit)
        crops.to_parquet(tmp / "crops.parquet", index=False)
    write_json({"crops": int(len(crops)), "size": size, "margin": margin, "fit": fit,
                "from_full_frame": int((crops.box_source == FULL_FRAME).sum())}, metrics)
    print(f"crop: {len(crops)} crops of {size}x{size} in {out_dir}")


if __name__ == "__main__":
    app()
