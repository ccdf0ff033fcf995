"""ingest: read a data set into the canonical image table; check every image.

Outputs (one folder, written atomically): images.parquet, rejected.parquet, duplicates.parquet,
test_truth.parquet and, for the demo, the generated photos under demo/. Counts (and warnings) go to
the metrics file.
See photoid/data/schema.py for the tables.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from photoid import paths
from photoid.cli import PARAMS_OPTION, SET_OPTION, stage_app
from photoid.data import demo, sources
from photoid.data.ingest import (
    DataParams,
    apply_confirmed,
    attach_boxes,
    check_truth,
    groups_found,
    ingest,
    read_data_set,
    read_source,
)
from photoid.data.schema import TEST, TRAIN, TRUTH_COLUMNS, empty_table
from photoid.io import atomic_path, write_json
from photoid.params import load_params

READS = ("data",)
app = stage_app(__doc__, READS)


@app.command()
def main(
    out_dir: Path = typer.Option(paths.INGEST_DIR, help="Output folder."),
    metrics: Path = typer.Option(paths.METRICS / "ingest.json", help="Metrics file (counts)."),
    params_file: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
):
    P = load_params(READS, params_file, overrides)
    d = P.build(DataParams, "data")
    demo_cfg = P.build(demo.DemoConfig, "data.demo")
    P.check_all_read()
    source, confirmed = d.source, d.confirmed
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        demo_counts = None
        if source == "demo":
            demo_counts = demo.generate(tmp / "demo", demo_cfg, workers=d.workers)  # happywhale layout, read as such
            listing = attach_boxes(read_source("happywhale", tmp / "demo", group_col=d.group_col),
                                   sources.read_boxes(tmp / "demo" / "boxes.csv"), "demo boxes.csv")
            truth = sources.read_truth(tmp / "demo" / "test_truth.csv")
        else:
            listing = read_data_set(d)
            truth = sources.read_truth(d.file("test_truth")) if d.test_truth else empty_table(TRUTH_COLUMNS)
        grouping = groups_found(listing, d.group_col)
        images, rejected, stats, duplicates = ingest(listing, **d.checks)
        if source == "demo":  # the tables name the photos where they are once this folder is in place
            for table in (images, rejected):
                table["path"] = [str(out_dir / Path(p).relative_to(tmp)) for p in table["path"]]
        truth = check_truth(truth, images, rejected, d.test_truth or "demo test_truth.csv")
        confirmed_stats = {}
        if confirmed:  # decisions made on earlier answers: those test photos are now training photos
            images, truth, confirmed_stats = apply_confirmed(images, rejected, truth,
                                                             sources.read_confirmed(d.file("confirmed")), confirmed)
        images.to_parquet(tmp / "images.parquet", index=False)
        rejected.to_parquet(tmp / "rejected.parquet", index=False)
        duplicates.to_parquet(tmp / "duplicates.parquet", index=False)
        truth.to_parquet(tmp / "test_truth.parquet", index=False)
    stats["source"] = source
    stats["test_with_truth"] = int(len(truth))
    if confirmed_stats:  # the counts after the confirmed photos joined the training part
        train = images[images.part == TRAIN]
        stats.update(confirmed_stats, train_images=int(len(train)), test_images=int((images.part == TEST).sum()),
                     individuals=int(train["individual"].nunique()))
    if demo_counts:
        stats["demo"] = demo_counts
    write_json(stats, metrics)
    print(f"ingest: {stats['images']} images ({stats['train_images']} train, {stats['test_images']} test), "
          f"{stats['individuals']} individuals, {stats['rejected']} rejected")
    print(f"ingest: {grouping}")
    if stats["rejected"]:
        print(f"ingest: rejected images and their reasons: {out_dir / 'rejected.parquet'}")
    if len(duplicates):
        kinds = duplicates["kind"].value_counts()
        print(f"ingest: pairs of copies: {kinds.get('exact', 0)} exact, {kinds.get('near', 0)} near: "
              f"{out_dir / 'duplicates.parquet'}")
    for warning in stats["warnings"]:
        print(f"ingest: warning: {warning}", file=sys.stderr)


if __name__ == "__main__":
    app()
