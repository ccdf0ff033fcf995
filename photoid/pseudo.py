"""Pseudo-labels: confident test predictions become extra training labels.

Confidence of a test image's prediction: the fold-ensemble similarity of its best known individual
(``top_score``) and that score's margin over the second individual (``margin``). An image becomes a
pseudo-label for its best individual when

- its first prediction is that individual (not ``new_individual``: the tuned threshold is passed),
- ``top_score >= threshold`` (Happywhale's 1st place kept confidence > 0.6, the 2nd > 0.8), and
- ``margin >= min_margin`` (two individuals almost tied is not a confident answer).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from photoid.metrics import NEW_INDIVIDUAL

PSEUDO_COLUMNS = ["image_id", "part", "individual", "species", "crop_path", "confidence", "margin"]


def select_pseudo_labels(predictions: pd.DataFrame, crops: pd.DataFrame, threshold: float,
                         min_margin: float) -> pd.DataFrame:
    """Pseudo-labelled rows (crop rows of the chosen test images, labelled with their prediction)."""
    first = np.array([str(p).split(" ")[0] for p in predictions["predictions"]], dtype=object)
    keep = ((first != NEW_INDIVIDUAL) & (first == predictions["top_individual"].to_numpy(dtype=object))
            & (predictions["top_score"].to_numpy() >= threshold) & (predictions["margin"].to_numpy() >= min_margin))
    chosen = predictions[keep]
    species_of = (crops[crops["part"] == "train"].drop_duplicates("individual").set_index("individual")["species"])
    rows = crops.set_index("image_id").loc[chosen["image_id"], ["part", "crop_path"]].reset_index()
    rows["individual"] = chosen["top_individual"].to_numpy()
    rows["species"] = species_of.reindex(rows["individual"]).to_numpy()
    rows["confidence"] = chosen["top_score"].to_numpy()
    rows["margin"] = chosen["margin"].to_numpy()
    return rows[PSEUDO_COLUMNS].reset_index(drop=True)


def pseudo_label_figures(pseudo: pd.DataFrame, n_test: int, truth: pd.DataFrame | None) -> dict:
    """How many test images were labelled and, where the test truth is known, how many correctly."""
    out = {"test_images": int(n_test), "pseudo_labels": int(len(pseudo)),
           "share": float(len(pseudo) / n_test) if n_test else 0.0,
           "individuals": int(pseudo["individual"].nunique())}
    if truth is not None and not truth.empty and len(pseudo):
        by_id = dict(zip(truth["image_id"], truth["individual"]))
        known = [i in by_id for i in pseudo["image_id"]]
        if all(known):
            out["accuracy"] = float(np.mean([by_id[i] == lab for i, lab in zip(pseudo["image_id"], pseudo["individual"])]))
    return out
