"""knn-rank: five ranked answers per test photo, new_individual among them, and the metrics.

The gallery is every training photo (faiss over the folds' L2-normalised embeddings, their
similarities averaged; an individual scores its best gallery photo). With rerank.enabled, local
evidence (LNBNN votes over every gallery keypoint, RANSAC inliers of the best candidates) is fused
with the similarity into P(same individual) by a monotone model fitted on the CV queries, which then
ranks. The new_individual threshold is tuned on the split's held-out individuals for CV MAP@5
(knn.threshold), never on test. The fitted ranker is saved for `photoid identify`
(photoid.retrieval.ranker).

Outputs: submission.csv (image,predictions: the Happywhale format), predictions.parquet (with the
best individual's score and margin, P(new individual), copy_of), matches.parquet (each answer's
verified keypoint matches, drawn on the review page), metrics/knn.json (CV and, with test
truth, test MAP@5, known-individual MAP@5 and top-1, mAP@20, new_individual precision and recall,
the embedding's own figures, the fusion's coefficients), the plots' tables and the reliability
diagram of P(new individual).
"""

from __future__ import annotations

from pathlib import Path

import typer

from photoid import paths
from photoid.cli import PARAMS_OPTION, SET_OPTION, stage_app
from photoid.data.duplicates import exact_copies
from photoid.data.split import ensemble_folds
from photoid.io import read_parquet
from photoid.params import load_params
from photoid.retrieval.evaluation import load_fold_sets
from photoid.retrieval.evidence_memo import EvidenceMemo, evidence_key
from photoid.retrieval.ranker import Ranker, RankerConfig
from photoid.retrieval.results import ResultFiles, before_retrain_figures, summary, write_results

READS = (*RankerConfig.READS, "ensemble")
app = stage_app(__doc__, READS)


def _table(path: Path):
    return read_parquet(path) if Path(path).exists() else None


@app.command()
def main(
    local_features: Path = typer.Option(paths.LOCAL_FEATURES, help="The local-features stage's keypoint store."),
    embeddings: Path = typer.Option(paths.EMBEDDINGS / "retrain", help="Folder of the folds' embedding sets."),
    before_embeddings: Path = typer.Option(paths.EMBEDDINGS / "dolg", help="The embeddings before retraining: their "
                                           "CV MAP@5 is reported beside (when the folder exists)."),
    split: Path = typer.Option(paths.SPLIT_TABLE, help="The split table."),
    duplicates: Path = typer.Option(paths.INGEST_DIR / "duplicates.parquet", help="ingest's copies: a test photo that "
                                    "is an exact copy of a training photo is answered with that photo's individual."),
    test_truth: Path = typer.Option(paths.TEST_TRUTH_TABLE, help="Test truth, where the data set has it (metrics only)."),
    submission_out: Path = typer.Option(paths.SUBMISSION, help="Submission CSV."),
    predictions_out: Path = typer.Option(paths.PREDICTIONS_TABLE, help="Predictions table."),
    matches_out: Path = typer.Option(paths.MATCHES_TABLE, help="The verified matches behind each answer (review page)."),
    metrics: Path = typer.Option(paths.METRICS / "knn.json", help="Metrics file."),
    plots: Path = typer.Option(paths.PLOTS, help="Folder of the plots' tables."),
    reliability: Path = typer.Option(paths.RELIABILITY, help="Folder of the reliability diagram of P(new individual)."),
    ranker_out: Path = typer.Option(paths.RANKER_DIR, help="Output folder: the fitted ranker, for `photoid identify`."),
    evidence: Path = typer.Option(paths.LOCAL_EVIDENCE, help="pseudo-label's local evidence: what it holds of the "
                                  "same keypoints and settings is read, not computed again."),
    params_file: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
):
    P = load_params(READS, params_file, overrides)
    config, folds = RankerConfig.from_params(P), ensemble_folds(P.get("ensemble.folds", list))
    P.check_all_read()
    split_table = read_parquet(split)
    memo = None
    if config.reranking:
        memo = EvidenceMemo.load(evidence, evidence_key([local_features], config.rerank.match, config.rerank.catalogue))
    fitted = Ranker.fit(config, load_fold_sets(embeddings, folds), folds, split_table, local_features,
                        _table(test_truth), str(embeddings), memo=memo)
    fitted.ranker.save(ranker_out)
    before = before_retrain_figures(before_embeddings, folds, split_table, config) if before_embeddings.is_dir() else None
    files = ResultFiles(predictions_out, matches_out, submission_out, metrics, plots, reliability)
    figures = write_results(fitted, exact_copies(_table(duplicates)), folds, files, local_features, before)
    print(summary(figures, submission_out))


if __name__ == "__main__":
    app()
