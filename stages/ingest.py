"""ingest: read a data set into the canonical image table; check every image.

Outputs (one folder, written atomically): images.parquet, rejected.parquet, test_truth.parquet
and, for the demo, the generated photos under demo/. Counts go to the metrics file.
See photoid/data/schema.py for the tables.
"""

from __future__ import annotations

from pathlib import Path

import typer

from photoid import paths
from photoid.cli import reports_data_errors, stage_app
from photoid.data import demo, sources
from photoid.data.ingest import attach_boxes, check_truth, ingest, read_source
from photoid.data.schema import TRUTH_COLUMNS, empty_table
from photoid.io import atomic_path, write_json

app = stage_app(__doc__)


@app.command()
@reports_data_errors
def main(
    source: str = typer.Option("demo", help="demo (generated), happywhale (Kaggle layout), folders (one per individual) or csv (label files)."),
    root: str = typer.Option("", help="The data set's folder (happywhale, folders, csv); unused for demo."),
    labels: str = typer.Option("", help="csv: label files under root, comma-separated."),
    image_col: str = typer.Option("image", help="csv: image column; comma-separated candidates, first found in each file wins."),
    individual_col: str = typer.Option("individual_id", help="csv: individual column; candidates as for --image-col."),
    species_col: str = typer.Option("species", help="csv: species column; a file without it takes --species, else its own name."),
    species: str = typer.Option("", help="folders/csv: species of images whose labels do not say."),
    test_dir: str = typer.Option("", help="folders/csv: folder (under root) of unlabelled test images; '' for none."),
    boxes: str = typer.Option("", help="Optional CSV of boxes (image,x1,y1,x2,y2) in upright pixels."),
    test_truth: str = typer.Option("", help="Optional CSV (image,individual_id) with the truth of test images; evaluation alone reads it."),
    workers: int = typer.Option(2, help="Processes that open and check images."),
    demo_seed: int = typer.Option(0, help="demo: random seed; the same seed gives the same photos."),
    demo_individuals: int = typer.Option(40, help="demo: known individuals (with training photos)."),
    demo_new_individuals: int = typer.Option(10, help="demo: individuals seen only in test photos."),
    demo_mean_images: float = typer.Option(7.0, help="demo: mean training photos per individual (uneven; many have 1-3)."),
    demo_test_known_fraction: float = typer.Option(0.5, help="demo: share of known individuals with a test photo."),
    demo_test_per_new: int = typer.Option(2, help="demo: test photos per new individual."),
    demo_width: int = typer.Option(320, help="demo: photo width in pixels."),
    demo_height: int = typer.Option(240, help="demo: photo height in pixels."),
    out_dir: Path = typer.Option(paths.INGEST_DIR, help="Output folder."),
    metrics: Path = typer.Option(paths.METRICS / "ingest.json", help="Metrics file (counts)."),
):
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        demo_counts = None
        if source == "demo":
            cfg = demo.DemoConfig(seed=demo_seed, individuals=demo_individuals, new_individuals=demo_new_individuals,
                                  mean_images=demo_mean_images, test_known_fraction=demo_test_known_fraction,
                                  test_per_new=demo_test_per_new, width=demo_width, height=demo_height)
            demo_counts = demo.generate(tmp / "demo", cfg)
            listing = sources.read_happywhale(tmp / "demo")
            boxes_table = sources.read_boxes(tmp / "demo" / "boxes.csv")
            truth = sources.read_truth(tmp / "demo" / "test_truth.csv")
        else:
            listing = read_source(source, root, labels=labels, image_col=image_col, individual_col=individual_col,
                                  species_col=species_col, species=species, test_dir=test_dir)
            boxes_table = sources.read_boxes(boxes) if boxes else None
            truth = sources.read_truth(test_truth) if test_truth else empty_table(TRUTH_COLUMNS)
        if boxes_table is not None:
            listing = attach_boxes(listing, boxes_table, boxes or "demo boxes.csv")
        images, rejected, stats = ingest(listing, workers=workers)
        if source == "demo":  # the tables name the photos where they are once this folder is in place
            for table in (images, rejected):
                table["path"] = [str(out_dir / Path(p).relative_to(tmp)) for p in table["path"]]
        truth = check_truth(truth, images, rejected, test_truth or "demo test_truth.csv")
        images.to_parquet(tmp / "images.parquet", index=False)
        rejected.to_parquet(tmp / "rejected.parquet", index=False)
        truth.to_parquet(tmp / "test_truth.parquet", index=False)
    stats["source"] = source
    stats["test_with_truth"] = int(len(truth))
    if demo_counts:
        stats["demo"] = demo_counts
    write_json(stats, metrics)
    print(f"ingest: {stats['images']} images ({stats['train_images']} train, {stats['test_images']} test), "
          f"{stats['individuals']} individuals, {stats['rejected']} rejected")
    if stats["rejected"]:
        print(f"ingest: rejected images and their reasons: {out_dir / 'rejected.parquet'}")


if __name__ == "__main__":
    app()
