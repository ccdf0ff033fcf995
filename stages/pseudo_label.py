"""pseudo-label: confident test predictions of the train-dolg models become extra training labels.

Each fold labels for itself: the test photos are ranked by fold k's model against every training
photo but fold k's validation photos (so no fold trains on a test photo that one of its own CV
queries labelled), with knn-rank's params (knn.*, and rerank.* when re-ranking is on: the confidences
are then on the fused P(same individual)'s scale). A prediction is kept when its best individual is
its first answer, its confidence (pseudo.confidence: its lead over the second individual, or its
score) reaches the cut, and it leads the second by pseudo.min_margin (see photoid.pseudo). The cut
(pseudo.threshold: auto) is the lowest confidence at which the CV queries' first answers reach
pseudo.precision. pseudo.enabled false writes an empty table: retrain then passes the models through.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import typer

from photoid import paths
from photoid.cli import PARAMS_OPTION, SET_OPTION, stage_app
from photoid.data.split import cv_folds, ensemble_folds
from photoid.io import read_parquet, write_json, write_parquet
from photoid.params import load_params
from photoid.pseudo import PSEUDO_COLUMNS, PseudoConfig, pseudo_labels
from photoid.retrieval.evaluation import load_fold_sets
from photoid.retrieval.evidence_memo import EvidenceMemo, evidence_key
from photoid.retrieval.ranker import RankerConfig

READS = ("pseudo", "ensemble", *RankerConfig.READS)
app = stage_app(__doc__, READS)


@app.command()
def main(
    embeddings: Path = typer.Option(paths.EMBEDDINGS / "dolg", help="Folder of the folds' embedding sets."),
    split: Path = typer.Option(paths.SPLIT_TABLE, help="The split table (for the threshold of new_individual)."),
    local_features: Path = typer.Option(paths.LOCAL_FEATURES, help="The local-features stage's keypoint store "
                                        "(re-ranking)."),
    test_truth: Path = typer.Option(paths.TEST_TRUTH_TABLE, help="Test truth, where the data set has it (for accuracy only)."),
    out: Path = typer.Option(paths.PSEUDO_TABLE, help="Output table."),
    evidence_out: Path = typer.Option(paths.LOCAL_EVIDENCE, help="Output folder: the local evidence computed, for "
                                      "knn-rank to read instead of computing it again."),
    metrics: Path = typer.Option(paths.METRICS / "pseudo.json", help="Metrics file."),
    params_file: Path = PARAMS_OPTION,
    overrides: list[str] = SET_OPTION,
):
    P = load_params(READS, params_file, overrides)
    cfg, ranker_config = P.build(PseudoConfig, "pseudo"), RankerConfig.from_params(P)
    folds = cv_folds(ensemble_folds(P.get("ensemble.folds", list)))  # fold all is not retrained: no labels
    P.check_all_read()
    rerank = ranker_config.rerank  # re-ranking off: no local evidence, an empty memo
    memo = EvidenceMemo(evidence_key([local_features], rerank.match, rerank.catalogue) if ranker_config.reranking else "")
    if not cfg.enabled:
        memo.save(evidence_out)
        write_parquet(pd.DataFrame(columns=PSEUDO_COLUMNS), out)
        write_json({"enabled": False, "pseudo_labels": 0}, metrics)
        print("pseudo-label: off")
        return
    truth = read_parquet(test_truth) if Path(test_truth).exists() else None
    pseudo, figures = pseudo_labels(cfg, ranker_config, load_fold_sets(embeddings, folds), folds, read_parquet(split),
                                    local_features, truth, memo)
    memo.save(evidence_out)
    write_parquet(pseudo, out)
    write_json(figures, metrics)
    acc = f", accuracy {figures['accuracy']:.2f}" if "accuracy" in figures else ""
    print(f"pseudo-label: {len(pseudo)} of {figures['test_images']} test images labelled{acc}")


if __name__ == "__main__":
    app()
