"""knn-rank: five ranked answers per test image, new_individual among them, and the metrics.

faiss IndexFlatIP over L2-normalised embeddings (on the GPU with faiss-gpu); the gallery is every
training image and its mirror image; an individual scores its best gallery entry; the folds'
similarities are averaged. The new_individual threshold is tuned on the split's held-out
individuals for cross-validated MAP@5 (never on test), one overall or one per species.

Outputs: submission.csv (image,predictions: the Happywhale format), predictions.parquet (the same
with the best individual's score and margin), metrics/knn.json (CV MAP@5, top-1, mAP@20,
new_individual precision and recall, MAP@5 per species and fold, the thresholds; test figures
when the data set has test truth).
"""

from __future__ import annotations

from pathlib import Path

import typer

from photoid import paths
from photoid.cli import as_bool, reports_data_errors, stage_app
from photoid.data.sources import DataError
from photoid.io import atomic_path, read_parquet, write_json, write_parquet
from photoid.knn import Flips, cv_figures, predictions_table, rank_all, submission

app = stage_app(__doc__)


@app.command()
@reports_data_errors
def main(
    neighbours: int = typer.Option(100, help="Gallery entries searched per query (an image and its flip are two)."),
    threshold: str = typer.Option("auto", help="new_individual threshold: auto (tuned on CV MAP@5) or a number."),
    per_species: str = typer.Option("false", help="true: one tuned threshold per species with enough CV queries."),
    min_species_queries: int = typer.Option(10, help="Least CV queries of a species for its own threshold."),
    query_flip: str = typer.Option("true", help="true: a query is the mean of its crop's and mirror image's embeddings."),
    gallery_flip: str = typer.Option("true", help="true: every gallery image is also entered as its mirror image."),
    folds: list[int] = typer.Option([0], help="A fold to ensemble; repeat for more (--folds 0 --folds 1)."),
    embeddings: Path = typer.Option(paths.EMBEDDINGS / "retrain", help="Folder of the folds' embedding sets."),
    before_embeddings: Path = typer.Option(None, help="The embeddings before retraining (train-dolg's): their CV MAP@5 is reported beside, to show whether retraining helped."),
    split: Path = typer.Option(paths.SPLIT_TABLE, help="The split table."),
    test_truth: Path = typer.Option(paths.TEST_TRUTH_TABLE, help="Test truth, where the data set has it (metrics only)."),
    submission_out: Path = typer.Option(paths.SUBMISSION, help="Submission CSV."),
    predictions_out: Path = typer.Option(paths.PREDICTIONS_TABLE, help="Predictions table."),
    metrics: Path = typer.Option(paths.METRICS / "knn.json", help="Metrics file."),
):
    if threshold.strip().lower() == "auto":
        fixed = None
    else:
        try:
            fixed = float(threshold)
        except ValueError:
            raise DataError(f"--threshold takes auto or a number, got {threshold!r} (knn.threshold in params.yaml)") from None
    truth = read_parquet(test_truth) if Path(test_truth).exists() else None
    flips = Flips(as_bool(query_flip, "query-flip"), as_bool(gallery_flip, "gallery-flip"))
    split_table = read_parquet(split)
    result = rank_all(embeddings, list(folds), split_table, neighbours, fixed,
                      as_bool(per_species, "per-species"), min_species_queries, truth, flips)
    predictions = predictions_table(result.test, result.thresholds)
    write_parquet(predictions, predictions_out)
    with atomic_path(submission_out) as tmp:
        submission(predictions).to_csv(tmp, index=False)
    figures = {**result.metrics(), "folds": list(folds), "neighbours": neighbours}
    if before_embeddings is not None:
        before = cv_figures(before_embeddings, list(folds), split_table, neighbours, flips, fixed,
                            as_bool(per_species, "per-species"), min_species_queries)
        figures.update({"cv_map5_before_retrain": before["map5"],
                        "cv_map5_without_new_before_retrain": before["map5_without_new"],
                        "retrain_gain": figures["cv_map5"] - before["map5"]})
    write_json(figures, metrics)
    test = f", test MAP@5 {figures['test_map5']:.3f}" if "test_map5" in figures else ""
    print(f"knn-rank: CV MAP@5 {figures['cv_map5']:.3f} (threshold {figures['threshold']:.3f}){test}; "
          f"{len(predictions)} test images -> {submission_out}")


if __name__ == "__main__":
    app()
