"""knn-rank's results from a fitted ranker: the test photos' predictions and submission, the verified
matches behind their answers, the metrics, the plots' tables and the reliability diagram of P(new
individual).

A test photo with the same bytes as a training photo is answered with that photo's individual
(flagged ``copy_of``), whatever the ranking found. The embedding ranking's own figures are reported
beside the re-ranked ones (``embedding_*``), and, given train-dolg's embeddings, their CV MAP@5
beside the retrained ones' (``retrain_gain``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from photoid.io import atomic_path, write_json, write_parquet
from photoid.metrics import NEW_INDIVIDUAL, expected_calibration_error, reliability_bins
from photoid.retrieval.evaluation import load_fold_sets, rank_sets, scores
from photoid.retrieval.outputs import answer_copies_certain, plot_tables, predictions_table, submission
from photoid.retrieval.ranker import Fitted, RankerConfig
from photoid.retrieval.verification import MATCH_COLUMNS, answer_matches

RELIABILITY_COLUMNS = ["bin", "predicted", "observed", "count"]


@dataclass(frozen=True)
class ResultFiles:
    """Where knn-rank writes its results."""

    predictions: Path
    matches: Path  # the verified matches behind each answer (drawn on the review page)
    submission: Path
    metrics: Path
    plots: Path  # folder of the plots' tables
    reliability: Path  # folder: cv.csv, test.csv


def before_retrain_figures(embeddings: Path, folds: list, split: pd.DataFrame, config: RankerConfig) -> dict:
    """The CV figures of other embeddings (train-dolg's, before retraining), ranked by similarity and
    thresholded as ``config`` says."""
    result = rank_sets(load_fold_sets(embeddings, folds), folds, split, config.search, threshold=config.rule,
                       per_species=config.per_species, min_species_queries=config.min_species_queries, flips=config.flips)
    return scores(result.cv, result.thresholds)


def write_results(fitted: Fitted, copies: pd.DataFrame, folds: list, files: ResultFiles, local_features: Path,
                  before: dict | None = None) -> dict:
    """Write the results of ``fitted`` (``copies``: :func:`photoid.data.duplicates.exact_copies`;
    ``local_features``: the keypoint store the matches are read from; ``before``:
    :func:`before_retrain_figures`) and return the metrics written."""
    result, ranker = fitted.result, fitted.ranker
    test, test_p_new = answer_copies_certain(result.test, fitted.test_p_new, copies)
    result = replace(result, test=test)
    predictions = predictions_table(result.test, result.thresholds, test_p_new, copies)
    write_parquet(predictions, files.predictions)
    start = time.perf_counter()
    matches = pd.DataFrame(columns=MATCH_COLUMNS)
    if ranker.reranker is not None and result.test.photos is not None:  # re-ranking kept each answer's photos
        matches = answer_matches(result.test, result.rows["image_id"].to_numpy(), [local_features],
                                 ranker.config.rerank.match, [p.split(" ") for p in predictions["predictions"]])
    write_parquet(matches, files.matches)
    matches_seconds = time.perf_counter() - start
    with atomic_path(files.submission) as tmp:
        submission(predictions).to_csv(tmp, index=False)
    config = ranker.config
    figures = {**result.metrics(), "folds": folds, "test_folds": ranker.folds, "test_copies_answered": len(copies),
               "neighbours": config.search.neighbours, "index": config.search.index, "rerank": config.reranking,
               "matches_drawn": len(matches), "matches_seconds": matches_seconds}
    figures.update({f"embedding_{k}": fitted.embedding[k]
                    for k in ("cv_map5", "cv_map5_known", "test_map5", "test_map5_known") if k in fitted.embedding})
    if fitted.rerank_figures is not None:
        figures["rerank_figures"] = fitted.rerank_figures
    # how well P(new individual) is calibrated: on CV (cross-fitted) and, with test truth, on test
    cv_new = [t == NEW_INDIVIDUAL for t in result.cv.truth]
    curves = {"cv": pd.DataFrame(reliability_bins(fitted.cv_p_new, cv_new), columns=RELIABILITY_COLUMNS),
              "test": pd.DataFrame(columns=RELIABILITY_COLUMNS)}  # empty without test truth
    figures["cv_new_ece"] = expected_calibration_error(fitted.cv_p_new, cv_new)
    if result.test.truth is not None:
        test_new = [t == NEW_INDIVIDUAL for t in result.test.truth]
        figures["test_new_ece"] = expected_calibration_error(test_p_new, test_new)
        curves["test"] = pd.DataFrame(reliability_bins(test_p_new, test_new), columns=RELIABILITY_COLUMNS)
    _write_tables(files.plots, plot_tables(result, figures))
    _write_tables(files.reliability, curves)
    if before is not None:
        after = fitted.embedding["cv_map5"]  # retraining changes the embeddings: compare them as embeddings
        figures.update({"cv_map5_before_retrain": before["map5"], "cv_map5_known_before_retrain": before["map5_known"],
                        "cv_map5_after_retrain": after, "retrain_gain": after - before["map5"]})
    write_json(figures, files.metrics)
    return figures


def _write_tables(folder: Path, tables: dict[str, pd.DataFrame]) -> None:
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for name, table in tables.items():
            table.to_csv(tmp / f"{name}.csv", index=False)


def summary(figures: dict, submission_path: Path) -> str:
    """knn-rank's one line for the terminal."""
    test = f", test MAP@5 {figures['test_map5']:.3f}" if "test_map5" in figures else ""
    rerank = figures.get("rerank_figures")
    ranked = ("fused with local features" if rerank and rerank["score"] == "fused"
              else "by inliers" if rerank else "by similarity")
    return (f"knn-rank ({ranked}): CV MAP@5 {figures['cv_map5']:.3f} (threshold {figures['threshold']:.3f}, "
            f"{figures['threshold_rule']}){test}; new individual first for {figures['cv_new_first_share']:.0%} of CV "
            f"and {figures['test_new_first_share']:.0%} of test photos; {figures['test_images']} test images "
            f"-> {submission_path}")
