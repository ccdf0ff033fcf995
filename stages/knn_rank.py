"""knn-rank: five ranked answers per test image, new_individual among them, and the metrics.

faiss IndexFlatIP over L2-normalised embeddings (on the GPU with faiss-gpu); the gallery is every
training image and its mirror image; an individual scores its best gallery entry; the folds'
similarities are averaged. The new_individual threshold is tuned on the split's held-out
individuals for cross-validated MAP@5 (never on test), one overall or one per species; or it is
the score that answers new_individual first for a given share of the test photos
(--threshold new_share:r). The shares of new-first answers on CV and test are reported side by
side: where they differ much, the tuned threshold does not transfer.

Re-ranking (--rerank, rerank.* in params.yaml; see photoid.rerank): each query's shortlist of
individuals is verified by SIFT matching with RANSAC against their best gallery photos (keypoints
from the local-features stage), and a monotone logistic model fitted on the CV queries fuses the
embedding similarity with the inlier counts into P(same individual), which then ranks and is
thresholded. The embedding-only figures are reported beside (``embedding_*``).

Outputs: submission.csv (image,predictions: the Happywhale format), predictions.parquet (the same
with the best individual's score and margin, and P(new individual) calibrated on CV),
metrics/knn.json (CV MAP@5, MAP@5 on known individuals, top-1, mAP@20, new_individual precision
and recall, MAP@5 per species and fold, the thresholds, the calibration error of P(new); test
figures when the data set has test truth), metrics/reliability/{cv,test}.csv (reliability diagram of P(new): per bin of predicted
probability, the observed share of new individuals).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import typer

from photoid import paths
from photoid.cli import as_bool, reports_data_errors, stage_app
from photoid.io import atomic_path, read_parquet, write_json, write_parquet
from photoid.knn import Flips, Shortlist, ThresholdRule, cv_figures, predictions_table, rank_all, submission
from photoid.local_features import MatchConfig
from photoid.metrics import NEW_INDIVIDUAL, expected_calibration_error, reliability_bins
from photoid.rerank import RerankConfig, rerank_result, similarity_new_probability

app = stage_app(__doc__)


@app.command()
@reports_data_errors
def main(
    neighbours: int = typer.Option(100, help="Gallery entries searched per query (an image and its flip are two)."),
    threshold: str = typer.Option("auto", help="new_individual threshold: auto (tuned on CV MAP@5), a number, or new_share:<r> (the score that answers new_individual first for a share r of the test photos)."),
    per_species: str = typer.Option("false", help="true: one tuned threshold per species with enough CV queries."),
    min_species_queries: int = typer.Option(10, help="Least CV queries of a species for its own threshold."),
    query_flip: str = typer.Option("true", help="true: a query is the mean of its crop's and mirror image's embeddings."),
    gallery_flip: str = typer.Option("true", help="true: every gallery image is also entered as its mirror image."),
    folds: list[int] = typer.Option([0], help="A fold to ensemble; repeat for more (--folds 0 --folds 1)."),
    rerank: str = typer.Option("false", help="true: re-rank the shortlists by verified SIFT matches, fused with the similarity."),
    rerank_score: str = typer.Option("fused", help="fused (similarity + inliers) | inliers (local features alone: the SIFT-only baseline)."),
    rerank_candidates: int = typer.Option(20, help="Individuals of each shortlist verified (0: every gallery individual)."),
    rerank_photos: int = typer.Option(3, help="Gallery photos verified per candidate, best first (0: all found)."),
    ratio: float = typer.Option(0.8, help="Lowe's ratio test of tentative matches."),
    ransac_threshold: float = typer.Option(0.025, help="RANSAC reprojection threshold, as a share of the crop's side."),
    max_scale: float = typer.Option(2.0, help="A transform scaling crops by more than this (or its inverse) is no match."),
    max_angle: float = typer.Option(30.0, help="Degrees an inlier's own orientation may differ from the transform's."),
    calibration_folds: int = typer.Option(5, help="Cross-fitting folds of the CV probabilities."),
    rerank_workers: int = typer.Option(2, help="Processes verifying pairs."),
    seed: int = typer.Option(0, help="Cross-fitting split and the inlier-only ranking's tie breaks."),
    local_features: Path = typer.Option(paths.LOCAL_FEATURES, help="The local-features stage's keypoint store."),
    reliability: Path = typer.Option(paths.RELIABILITY, help="Folder of the reliability diagram of P(new individual): cv.csv, test.csv."),
    embeddings: Path = typer.Option(paths.EMBEDDINGS / "retrain", help="Folder of the folds' embedding sets."),
    before_embeddings: Path = typer.Option(None, help="The embeddings before retraining (train-dolg's): their CV MAP@5 is reported beside, to show whether retraining helped."),
    split: Path = typer.Option(paths.SPLIT_TABLE, help="The split table."),
    test_truth: Path = typer.Option(paths.TEST_TRUTH_TABLE, help="Test truth, where the data set has it (metrics only)."),
    submission_out: Path = typer.Option(paths.SUBMISSION, help="Submission CSV."),
    predictions_out: Path = typer.Option(paths.PREDICTIONS_TABLE, help="Predictions table."),
    metrics: Path = typer.Option(paths.METRICS / "knn.json", help="Metrics file."),
):
    rule = ThresholdRule.parse(threshold)
    truth = read_parquet(test_truth) if Path(test_truth).exists() else None
    flips = Flips(as_bool(query_flip, "query-flip"), as_bool(gallery_flip, "gallery-flip"))
    split_table = read_parquet(split)
    by_species = as_bool(per_species, "per-species")
    cfg = RerankConfig(rerank_candidates, rerank_photos, rerank_score, calibration_folds, seed, rerank_workers,
                       MatchConfig(ratio, ransac_threshold, max_scale, max_angle))
    reranking = as_bool(rerank, "rerank")
    shortlist, searched = Shortlist(), neighbours
    if reranking:
        individuals = cfg.candidates or int(split_table["individual"].nunique())
        shortlist = Shortlist(individuals, cfg.photos)
        # enough neighbours for the shortlist's photos (an image and its mirror are two entries)
        searched = len(split_table) * 2 if not (cfg.candidates and cfg.photos) else max(neighbours, 4 * individuals * cfg.photos)
    result = rank_all(embeddings, list(folds), split_table, searched, rule,
                      by_species, min_species_queries, truth, flips, shortlist)
    embedding = result.metrics()
    if reranking:
        outcome = rerank_result(result, local_features, cfg, rule, by_species, min_species_queries)
        result, cv_p_new, test_p_new = outcome.result, outcome.cv_p_new, outcome.test_p_new
    else:
        cv_p_new, test_p_new = similarity_new_probability(result.cv.candidates, result.cv.truth, result.test.candidates,
                                                          calibration_folds, seed)
    predictions = predictions_table(result.test, result.thresholds, test_p_new)
    write_parquet(predictions, predictions_out)
    with atomic_path(submission_out) as tmp:
        submission(predictions).to_csv(tmp, index=False)
    figures = {**result.metrics(), "folds": list(folds), "neighbours": neighbours, "rerank": reranking}
    figures.update({f"embedding_{k}": embedding[k] for k in ("cv_map5", "cv_map5_known", "test_map5", "test_map5_known")
                    if k in embedding})
    if reranking:
        figures["rerank_figures"] = outcome.figures
    # how well P(new individual) is calibrated: on CV (cross-fitted) and, with test truth, on test
    columns = ["bin", "predicted", "observed", "count"]
    cv_new = [t == NEW_INDIVIDUAL for t in result.cv.truth]
    curves = {"cv": pd.DataFrame(reliability_bins(cv_p_new, cv_new), columns=columns),
              "test": pd.DataFrame(columns=columns)}  # empty without test truth
    figures["cv_new_ece"] = expected_calibration_error(cv_p_new, cv_new)
    if result.test.truth is not None:
        test_new = [t == NEW_INDIVIDUAL for t in result.test.truth]
        figures["test_new_ece"] = expected_calibration_error(test_p_new, test_new)
        curves["test"] = pd.DataFrame(reliability_bins(test_p_new, test_new), columns=columns)
    with atomic_path(reliability) as tmp:
        tmp.mkdir()
        for name, table in curves.items():
            table.to_csv(tmp / f"{name}.csv", index=False)
    if before_embeddings is not None:
        before = cv_figures(before_embeddings, list(folds), split_table, neighbours, flips, rule,
                            by_species, min_species_queries)
        after = embedding["cv_map5"]  # retraining changes the embeddings: compare them as embeddings
        figures.update({"cv_map5_before_retrain": before["map5"],
                        "cv_map5_known_before_retrain": before["map5_known"],
                        "cv_map5_after_retrain": after,
                        "retrain_gain": after - before["map5"]})
    write_json(figures, metrics)
    test = f", test MAP@5 {figures['test_map5']:.3f}" if "test_map5" in figures else ""
    ranked = "fused with local features" if reranking and cfg.score == "fused" else ("by inliers" if reranking else "by similarity")
    print(f"knn-rank ({ranked}): CV MAP@5 {figures['cv_map5']:.3f} (threshold {figures['threshold']:.3f}, "
          f"{figures['threshold_rule']}){test}; new individual first for {figures['cv_new_first_share']:.0%} of CV "
          f"and {figures['test_new_first_share']:.0%} of test photos; {len(predictions)} test images -> {submission_out}")


if __name__ == "__main__":
    app()
