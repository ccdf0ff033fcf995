"""report: the review page of knn-rank's answers (photoid.review): each test photo beside the best
photo of each of its five candidates, with the scores and the threshold; a click on a candidate
shows the two photos at report.view pixels with the keypoints re-ranking matched between them; the
test photos that could not be answered listed with their reason; sorting (least confident, nearly
known, by species), species filter, paging, keyboard shortcuts; decisions exported as the CSV that
data.confirmed reads back. Writes reports/review.html and, beside it, reports/review_views/.
"""

from __future__ import annotations

from pathlib import Path

import typer

from photoid import paths
from photoid.cli import PARAMS_OPTION, SET_OPTION, stage_app
from photoid.data.schema import TRAIN
from photoid.data.split import ensemble_folds, test_folds
from photoid.io import read_parquet, write_json
from photoid.params import load_params
from photoid.retrieval.evaluation import Flips, load_fold_sets
from photoid.review import best_photos, review_rows, view_sources, write_review_page

READS = ("report", "ensemble", "knn.query_flip", "knn.gallery_flip")
app = stage_app(__doc__, READS)


@app.command()
def main(
    predictions: Path = typer.Option(paths.PREDICTIONS_TABLE, help="knn-rank's predictions table."),
    embeddings: Path = typer.Option(paths.EMBEDDINGS / "retrain", help="Folder of the folds' embedding sets "
                                    "(what knn-rank ranked)."),
    crops: Path = typer.Option(paths.CROPS_TABLE, help="The crop table (the photos shown)."),
    images: Path = typer.Option(paths.IMAGES_TABLE, help="ingest's image table (the photos the views are read from)."),
    rejected: Path = typer.Option(paths.REJECTED_TABLE, help="ingest's rejected photos (the test photos not answered)."),
    matches: Path = typer.Option(paths.MATCHES_TABLE, help="knn-rank's verified matches behind each answer."),
    test_truth: Path = typer.Option(paths.TEST_TRUTH_TABLE, help="Test truth, where the data set has it "
                                    "(marks right and wrong)."),
    out: Path = typer.Option(paths.REVIEW_PAGE, help="The review page (one self-contained HTML file)."),
    metrics: Path = typer.Option(paths.METRICS / "report.json", help="Metrics file (queries, thumbnails, size)."),
    params_file: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
):
    P = load_params(READS, params_file, overrides)
    size, page_size, view = P.int("report.thumbnail"), P.int("report.page_size"), P.int("report.view")
    folds = test_folds(ensemble_folds(P.get("ensemble.folds", list)))  # the models that ranked the test photos
    flips = Flips.parse(P.bool("knn.query_flip"), P.str("knn.gallery_flip"))
    P.check_all_read()
    table = read_parquet(predictions)
    sets = load_fold_sets(embeddings, folds)
    photos = best_photos(sets, flips, table["image_id"].tolist(), [p.split(" ") for p in table["predictions"]])
    truth = read_parquet(test_truth) if Path(test_truth).exists() else None
    rows_all = sets[0].rows
    gallery = set(rows_all.loc[rows_all["part"] == TRAIN, "individual"])
    crop_table = read_parquet(crops)
    crop_paths = dict(zip(crop_table["image_id"], crop_table["crop_path"]))
    gone = read_parquet(rejected).query("part == 'test'")
    unanswered = [{"photo": str(i), "reason": str(r)} for i, r in zip(gone["image_id"], gone["reason"])]
    rows = review_rows(table, photos, truth, gallery, read_parquet(matches) if Path(matches).exists() else None)
    figures = write_review_page(out, rows, crop_paths, size, page_size, unanswered=unanswered,
                                views=view_sources(read_parquet(images), crop_table), view_side=view)
    write_json(figures, metrics)
    print(f"report: {figures['queries']} photos, {figures['thumbnails']} thumbnails, {figures['bytes'] / 1e6:.1f} MB "
          f"-> {out}; "
          f"{figures['views']} views, {figures['view_bytes'] / 1e6:.1f} MB; {figures['unanswered']} not answered")


if __name__ == "__main__":
    app()
