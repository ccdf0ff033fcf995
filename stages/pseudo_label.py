"""pseudo-label: confident test predictions of the train-dolg models become extra training labels.

The test images are ranked as knn-rank ranks them (fold ensemble, new_individual threshold tuned
on the held-out individuals), from the embed stage's embeddings. A prediction is kept when its
best individual is its first answer, its similarity reaches --threshold and leads the second
individual by --min-margin (see photoid.pseudo). --enabled false writes an empty table: retrain
then passes the models through.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import typer

from photoid import paths
from photoid.cli import as_bool, reports_data_errors, stage_app
from photoid.io import read_parquet, write_json, write_parquet
from photoid.knn import predictions_table, rank_all
from photoid.pseudo import PSEUDO_COLUMNS, pseudo_label_figures, select_pseudo_labels

app = stage_app(__doc__)
NEIGHBOURS = 100  # gallery entries searched per query (as knn.neighbours by default)


@app.command()
@reports_data_errors
def main(
    enabled: str = typer.Option("true", help="false: no pseudo-labels (an empty table)."),
    threshold: float = typer.Option(0.6, help="Least similarity of the best individual (fold-ensemble cosine)."),
    min_margin: float = typer.Option(0.0, help="Least lead of the best individual over the second."),
    folds: list[int] = typer.Option([0], help="A fold to ensemble; repeat for more (--folds 0 --folds 1)."),
    embeddings: Path = typer.Option(paths.EMBEDDINGS / "dolg", help="Folder of the folds' embedding sets."),
    split: Path = typer.Option(paths.SPLIT_TABLE, help="The split table (for the threshold of new_individual)."),
    test_truth: Path = typer.Option(paths.TEST_TRUTH_TABLE, help="Test truth, where the data set has it (for accuracy only)."),
    out: Path = typer.Option(paths.PSEUDO_TABLE, help="Output table."),
    metrics: Path = typer.Option(paths.METRICS / "pseudo.json", help="Metrics file."),
):
    fold_list = list(folds)
    truth = read_parquet(test_truth) if Path(test_truth).exists() else None
    if not as_bool(enabled, "enabled"):
        write_parquet(pd.DataFrame(columns=PSEUDO_COLUMNS), out)
        write_json({"enabled": False, "pseudo_labels": 0}, metrics)
        print("pseudo-label: off")
        return
    result = rank_all(embeddings, fold_list, read_parquet(split), NEIGHBOURS)
    pseudo = select_pseudo_labels(predictions_table(result.test, result.thresholds), result.rows, threshold, min_margin)
    write_parquet(pseudo, out)
    figures = pseudo_label_figures(pseudo, len(result.test.image_ids), truth)
    figures.update({"enabled": True, "threshold": threshold, "min_margin": min_margin,
                    "new_individual_threshold": result.thresholds.overall,
                    "cv_map5_before_retrain": result.metrics()["cv_map5"]})
    write_json(figures, metrics)
    acc = f", accuracy {figures['accuracy']:.2f}" if "accuracy" in figures else ""
    print(f"pseudo-label: {len(pseudo)} of {figures['test_images']} test images labelled{acc}")


if __name__ == "__main__":
    app()
