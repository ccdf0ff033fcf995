"""pseudo-label: confident test predictions of the train-dolg models become extra training labels.

Each fold labels for itself: the test images are ranked by fold k's model against every training
image except fold k's validation images (so no fold trains on a test photo that one of its own CV
queries labelled), with knn-rank's params (neighbours, flips, the new_individual threshold rule,
per-species thresholds), from the embed stage's embeddings. A prediction is kept when its best
individual is its first answer, its confidence (--confidence: its lead over the second individual,
or its similarity) reaches the cut, and it leads the second by --min-margin (see photoid.pseudo).
The cut (--threshold auto) is the lowest confidence at which the CV queries' first answers reach
--precision. With re-ranking on (rerank.enabled, as knn-rank answers), CV and test shortlists are
verified by local features and ranked by the fused P(same individual) (its CV probabilities cross-
fitted, as knn-rank's), and the confidences are on that scale. --enabled false writes an empty
table: retrain then passes the models through.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import typer

from photoid import paths
from photoid.cli import PARAMS_OPTION, SET_OPTION, stage_app
from photoid.data.split import cv_folds, ensemble_folds
from photoid.errors import DataError
from photoid.io import read_parquet, write_json, write_parquet
from photoid.params import load_params
from photoid.pseudo import PSEUDO_COLUMNS, cv_answers, precision_cut, pseudo_label_figures, select_pseudo_labels
from photoid.ranking import (
    Flips,
    Shortlist,
    ThresholdRule,
    choose_thresholds,
    load_fold_sets,
    predictions_table,
    rank_sets,
    rank_test_per_fold,
)
from photoid.rerank import rerank_config, rerank_queries, rerank_result, shortlisted_search
from photoid.retrieval import Search

READS = ("pseudo", "ensemble", "knn.neighbours", "knn.index", "knn.ivf_lists", "knn.ivf_probe", "knn.query_expansion",
         "knn.threshold", "knn.per_species", "knn.min_species_queries", "knn.query_flip", "knn.gallery_flip", "rerank")
app = stage_app(__doc__, READS)


@app.command()
def main(
    embeddings: Path = typer.Option(paths.EMBEDDINGS / "dolg", help="Folder of the folds' embedding sets."),
    split: Path = typer.Option(paths.SPLIT_TABLE, help="The split table (for the threshold of new_individual)."),
    local_features: Path = typer.Option(paths.LOCAL_FEATURES, help="The local-features stage's keypoint store "
                                        "(re-ranking)."),
    test_truth: Path = typer.Option(paths.TEST_TRUTH_TABLE, help="Test truth, where the data set has it (for accuracy only)."),
    out: Path = typer.Option(paths.PSEUDO_TABLE, help="Output table."),
    metrics: Path = typer.Option(paths.METRICS / "pseudo.json", help="Metrics file."),
    params_file: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
):
    P = load_params(READS, params_file, overrides)
    enabled, confidence, threshold = P.bool("pseudo.enabled"), P.str("pseudo.confidence"), P.str("pseudo.threshold")
    precision, min_margin = P.float("pseudo.precision"), P.float("pseudo.min_margin")
    fold_list = cv_folds(ensemble_folds(P.get("ensemble.folds", list)))  # fold all is not retrained: no labels
    search = P.build(Search, "knn")
    rule, by_species = ThresholdRule.parse(P.str("knn.threshold")), P.bool("knn.per_species")
    min_species_queries = P.int("knn.min_species_queries")
    flips = Flips.parse(P.bool("knn.query_flip"), P.str("knn.gallery_flip"))
    cfg = rerank_config(P)
    reranking = P.bool("rerank.enabled")
    P.check_all_read()
    truth = read_parquet(test_truth) if Path(test_truth).exists() else None
    if not enabled:
        write_parquet(pd.DataFrame(columns=PSEUDO_COLUMNS), out)
        write_json({"enabled": False, "pseudo_labels": 0}, metrics)
        print("pseudo-label: off")
        return
    split_table = read_parquet(split)
    sets = load_fold_sets(embeddings, fold_list)
    shortlist, searched = shortlisted_search(cfg, search, split_table) if reranking else (Shortlist(), search)
    result = rank_sets(sets, fold_list, split_table, searched, rule, by_species, min_species_queries, flips=flips,
                       shortlist=shortlist)
    embedding_cv_map5 = result.metrics()["cv_map5"]
    if reranking:  # CV answered as knn-rank answers: the cut is on the scale of the fused probability
        outcome = rerank_result(result, local_features, cfg, rule, by_species, min_species_queries)
        result = outcome.result
    cv_scores, cv_correct = cv_answers(predictions_table(result.cv, result.thresholds), result.cv.truth, confidence)
    if threshold.strip().lower() == "auto":
        cut, cv_precision, cv_count = precision_cut(cv_scores, cv_correct, precision)
    else:
        try:
            cut = float(threshold)
        except ValueError:
            raise DataError(f"pseudo.threshold takes auto or a number, got {threshold!r}") from None
        above = cv_scores >= cut
        cv_precision, cv_count = (float(cv_correct[above].mean()) if above.any() else 0.0), int(above.sum())
    per_fold = rank_test_per_fold(sets, fold_list, split_table, searched, flips, shortlist)
    if reranking:
        ids = result.rows["image_id"].to_numpy()
        per_fold = [rerank_queries(r, ids, [local_features], outcome.reranker, verified=outcome.verified)[0]
                    for r in per_fold]  # the pairs rerank_result verified are not verified again
    chosen = []
    for k, ranking in zip(fold_list, per_fold):
        # a share of new-first answers is a share of what this fold ranks; a tuned or fixed score is the same for all
        t = (choose_thresholds(result.cv, rule, by_species, min_species_queries, ranking)
             if rule.new_share is not None else result.thresholds)
        chosen.append(select_pseudo_labels(predictions_table(ranking, t), result.rows, cut, min_margin, confidence, fold=k))
    pseudo = pd.concat(chosen, ignore_index=True)
    write_parquet(pseudo, out)
    figures = pseudo_label_figures(pseudo, len(result.test.image_ids), truth)
    figures.update({"enabled": True, "confidence": confidence, "threshold": cut if np.isfinite(cut) else None,
                    "threshold_auto": threshold == "auto",
                    "precision_target": precision, "cv_precision_above_threshold": cv_precision,
                    "cv_answers_above_threshold": cv_count, "min_margin": min_margin,
                    "new_individual_threshold": result.thresholds.overall,
                    "rerank": reranking, "cv_map5_as_ranked": result.metrics()["cv_map5"],  # the cut's ranking
                    "cv_map5_before_retrain": embedding_cv_map5})  # the embeddings' (knn-rank: retrain_gain)
    write_json(figures, metrics)
    acc = f", accuracy {figures['accuracy']:.2f}" if "accuracy" in figures else ""
    print(f"pseudo-label: {len(pseudo)} of {figures['test_images']} test images labelled{acc}")


if __name__ == "__main__":
    app()
