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

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import typer

from photoid import paths
from photoid.cli import PARAMS_OPTION, SET_OPTION, stage_app
from photoid.data.duplicates import exact_copies
from photoid.data.split import ensemble_folds, test_folds
from photoid.io import atomic_path, read_parquet, write_json, write_parquet
from photoid.metrics import NEW_INDIVIDUAL, expected_calibration_error, reliability_bins
from photoid.params import load_params
from photoid.ranking import (
    Flips,
    Shortlist,
    ThresholdRule,
    answer_copies,
    cv_figures,
    plot_tables,
    predictions_table,
    rank_all,
    save_ranker,
    submission,
)
from photoid.rerank import rerank_config, rerank_result, shortlisted_search, similarity_new_probability
from photoid.retrieval import Search

READS = ("knn", "rerank", "ensemble")
app = stage_app(__doc__, READS)


@app.command()
def main(
    local_features: Path = typer.Option(paths.LOCAL_FEATURES, help="The local-features stage's keypoint store."),
    reliability: Path = typer.Option(paths.RELIABILITY, help="Folder of the reliability diagram of P(new individual): "
                                     "cv.csv, test.csv."),
    embeddings: Path = typer.Option(paths.EMBEDDINGS / "retrain", help="Folder of the folds' embedding sets."),
    before_embeddings: Path = typer.Option(paths.EMBEDDINGS / "dolg", help="The embeddings before retraining (train-dolg's): "
                                           "their CV MAP@5 is reported beside, to show whether retraining helped (when the "
                                           "folder exists)."),
    split: Path = typer.Option(paths.SPLIT_TABLE, help="The split table."),
    duplicates: Path = typer.Option(paths.INGEST_DIR / "duplicates.parquet", help="ingest's copies: a test photo that "
                                    "is an exact copy of a training photo is answered with that photo's individual."),
    test_truth: Path = typer.Option(paths.TEST_TRUTH_TABLE, help="Test truth, where the data set has it (metrics only)."),
    submission_out: Path = typer.Option(paths.SUBMISSION, help="Submission CSV."),
    predictions_out: Path = typer.Option(paths.PREDICTIONS_TABLE, help="Predictions table."),
    metrics: Path = typer.Option(paths.METRICS / "knn.json", help="Metrics file."),
    plots: Path = typer.Option(paths.PLOTS, help="Folder of the plots' tables: CV MAP@5 by threshold, top scores of known "
                               "and new queries, MAP@5 per species."),
    ranker_out: Path = typer.Option(paths.RANKER_DIR, help="Output folder: the thresholds and fitted re-ranking, for "
                                    "`photoid identify`."),
    params_file: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
):
    P = load_params(READS, params_file, overrides)
    search, rule = P.build(Search, "knn"), ThresholdRule.parse(P.str("knn.threshold"))
    neighbours = search.neighbours
    flips = Flips.parse(P.bool("knn.query_flip"), P.str("knn.gallery_flip"))
    by_species, min_species_queries = P.bool("knn.per_species"), P.int("knn.min_species_queries")
    folds = ensemble_folds(P.get("ensemble.folds", list))
    cfg = rerank_config(P)
    reranking = P.bool("rerank.enabled")
    P.check_all_read()
    truth = read_parquet(test_truth) if Path(test_truth).exists() else None
    split_table = read_parquet(split)
    shortlist, searched = shortlisted_search(cfg, search, split_table) if reranking else (Shortlist(), search)
    result = rank_all(embeddings, list(folds), split_table, searched, rule,
                      by_species, min_species_queries, truth, flips, shortlist)
    embedding = result.metrics()
    if reranking:
        outcome = rerank_result(result, local_features, cfg, rule, by_species, min_species_queries)
        result, cv_p_new, test_p_new = outcome.result, outcome.cv_p_new, outcome.test_p_new
    else:
        cv_p_new, test_p_new, p_new_model = similarity_new_probability(result.cv.candidates, result.cv.truth,
                                                                       result.test.candidates, cfg.calibration_folds, cfg.seed)
    # a test photo with the same bytes as a training photo shows the same animal: answered so, flagged
    copies = exact_copies(read_parquet(duplicates) if Path(duplicates).exists() else None)
    result = replace(result, test=answer_copies(result.test, copies))
    test_p_new = np.where(np.isin(result.test.image_ids, copies["image_id"]), 0.0, test_p_new)
    predictions = predictions_table(result.test, result.thresholds, test_p_new, copies)
    # what photoid identify needs to answer any other photo exactly as the test photos are answered
    save_ranker(ranker_out, folds=test_folds(folds), embeddings=str(embeddings), flips=flips, searched=searched,
                shortlist=shortlist, thresholds=result.thresholds, reranker=outcome.reranker if reranking else None,
                p_new=None if reranking else p_new_model)
    write_parquet(predictions, predictions_out)
    with atomic_path(submission_out) as tmp:
        submission(predictions).to_csv(tmp, index=False)
    figures = {**result.metrics(), "folds": folds, "test_folds": test_folds(folds), "test_copies_answered": len(copies),
               "neighbours": neighbours, "index": search.index, "rerank": reranking}
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
    with atomic_path(plots) as tmp:
        tmp.mkdir()
        for name, table in plot_tables(result, figures).items():
            table.to_csv(tmp / f"{name}.csv", index=False)
    with atomic_path(reliability) as tmp:
        tmp.mkdir()
        for name, table in curves.items():
            table.to_csv(tmp / f"{name}.csv", index=False)
    if Path(before_embeddings).is_dir():
        before = cv_figures(before_embeddings, list(folds), split_table, search, flips, rule,
                            by_species, min_species_queries)
        after = embedding["cv_map5"]  # retraining changes the embeddings: compare them as embeddings
        figures.update({"cv_map5_before_retrain": before["map5"],
                        "cv_map5_known_before_retrain": before["map5_known"],
                        "cv_map5_after_retrain": after,
                        "retrain_gain": after - before["map5"]})
    write_json(figures, metrics)
    test = f", test MAP@5 {figures['test_map5']:.3f}" if "test_map5" in figures else ""
    ranked = ("fused with local features" if reranking and cfg.score == "fused"
              else "by inliers" if reranking else "by similarity")
    print(f"knn-rank ({ranked}): CV MAP@5 {figures['cv_map5']:.3f} (threshold {figures['threshold']:.3f}, "
          f"{figures['threshold_rule']}){test}; new individual first for {figures['cv_new_first_share']:.0%} of CV "
          f"and {figures['test_new_first_share']:.0%} of test photos; {len(predictions)} test images -> {submission_out}")


if __name__ == "__main__":
    app()
