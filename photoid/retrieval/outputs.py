"""What a ranking is written as: the predictions table, the Happywhale submission, the plots'
tables, and the answers of test photos that are exact copies of training photos."""

from __future__ import annotations

import numpy as np
import pandas as pd

from photoid.metrics import NEW_INDIVIDUAL
from photoid.retrieval.evaluation import Ranking, RankResult
from photoid.retrieval.search import Candidates
from photoid.retrieval.thresholds import K, Thresholds, map_for_thresholds, predict, threshold_grid

COPY_SCORE = 1.0  # a copy's answer: certain, at or above every threshold of a similarity or a probability


def answer_copies(r: Ranking, copies: pd.DataFrame) -> Ranking:
    """``r`` with each query that is an exact copy of a training photo (``copies``: image_id, individual,
    :func:`photoid.data.duplicates.exact_copies`) answered first with that photo's individual at
    :data:`COPY_SCORE` (the rest of its candidates after it, in their order): the same bytes are the
    same animal, whatever the ranking found."""
    by_id = dict(zip(copies["image_id"], copies["individual"]))
    if not by_id or not len(r.image_ids):
        return r
    labels, scores = r.candidates.labels.copy(), r.candidates.scores.copy()
    for i, image_id in enumerate(r.image_ids):
        ind = by_id.get(image_id)
        if ind is None:
            continue
        rest = [(lab, sc) for lab, sc in zip(labels[i], scores[i]) if lab != ind and lab != ""]
        row = [(ind, COPY_SCORE)] + rest
        row = (row + [("", -np.inf)] * labels.shape[1])[: labels.shape[1]]
        labels[i] = [lab for lab, _ in row]
        scores[i] = [sc for _, sc in row]
    return r.reranked(Candidates(labels, scores, r.candidates.floor))


def answer_copies_certain(r: Ranking, p_new: np.ndarray | None, copies: pd.DataFrame) -> tuple[Ranking, np.ndarray | None]:
    """:func:`answer_copies`, and the copies' probability of a new individual 0 (the same bytes as a
    training photo: a known animal)."""
    if p_new is not None:
        p_new = np.where(np.isin(r.image_ids, copies["image_id"]), 0.0, p_new)
    return answer_copies(r, copies), p_new


def answer_scores(candidates: Candidates, row: int, answers: list[str], threshold: float) -> list[float]:
    """The score of each of a query's answers: its candidate's score, the threshold for new_individual."""
    score = dict(zip(candidates.labels[row], candidates.scores[row].astype(np.float64)))
    return [threshold if a == NEW_INDIVIDUAL else score[a] for a in answers]


def predictions_table(r: Ranking, t: Thresholds, p_new: np.ndarray | None = None,
                      copies: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per query: the five predictions and their scores, the best known individual, its score and its margin
    over the second (the confidence pseudo-labelling uses), the threshold applied, when given the
    calibrated probability that the photo shows a new individual and, with ``copies``
    (:func:`photoid.data.duplicates.exact_copies`), ``copy_of``: the training photo it is an exact copy of ("" for none)."""
    thresholds = r.thresholds(t.overall, t.per_species)
    preds = predict(r.candidates, thresholds, K)
    s = r.candidates.scores
    copy_of = {} if copies is None else dict(zip(copies["image_id"], copies["duplicate_of"]))
    return pd.DataFrame({
        "image_id": r.image_ids,
        "predictions": [" ".join(p) for p in preds],
        "scores": [" ".join(f"{v:.6g}" for v in answer_scores(r.candidates, i, p, th))
                   for i, (p, th) in enumerate(zip(preds, thresholds))],
        "top_individual": r.candidates.labels[:, 0].astype(str),
        "top_score": s[:, 0].astype(np.float64),
        "margin": r.candidates.margin(),
        "species": r.species.astype(str),
        "threshold": thresholds,
        **({} if p_new is None else {"p_new": np.asarray(p_new, np.float64)}),
        **({} if copies is None else {"copy_of": np.array([copy_of.get(i, "") for i in r.image_ids], dtype=object)}),
    })


def plot_tables(result: RankResult, metrics: dict, bins: int = 20) -> dict[str, pd.DataFrame]:
    """The tables behind knn-rank's plots (``dvc plots show``): CV MAP@5 at every new_individual
    threshold that makes a difference (``threshold``) and at the chosen one (``threshold_chosen``: its
    last row; the first is the foot of the vertical mark);
    the best candidate's score of known and of new queries, as shares per bin (``top_score``: CV, and
    test where its truth is known); MAP@5 per species (``map5_per_species``, from ``metrics``:
    ``result.metrics()``)."""
    cv = result.cv
    grid = threshold_grid(cv.candidates)
    curve = map_for_thresholds(cv.candidates, cv.truth, grid)
    chosen = float(map_for_thresholds(cv.candidates, cv.truth, np.array([result.thresholds.overall]))[0])
    tables = {
        "threshold": pd.DataFrame({"threshold": grid, "cv_map5": curve}),
        # a vertical mark from the curve's lowest value up to the chosen threshold's (a line plot draws no lone point)
        "threshold_chosen": pd.DataFrame({"threshold": [result.thresholds.overall] * 2,
                                          "cv_map5": [float(min(curve.min(), chosen)), chosen]}),
    }
    parts = [("cv", cv)] + ([("test", result.test)] if result.test.truth is not None else [])
    tops = {name: (r.candidates.scores[:, 0].astype(np.float64) if r.candidates.scores.shape[1]
                   else np.full(len(r.image_ids), -np.inf), np.array([t == NEW_INDIVIDUAL for t in r.truth], bool))
            for name, r in parts}
    finite = np.concatenate([top[np.isfinite(top)] for top, _ in tops.values()] + [np.zeros(0)])
    edges = np.linspace(finite.min(), finite.max() + 1e-9, bins + 1) if len(finite) else np.linspace(0, 1, bins + 1)
    hist = {"score": (edges[:-1] + edges[1:]) / 2}
    for name, (top, is_new) in tops.items():
        for kind, mask in (("known", ~is_new), ("new", is_new)):
            values = top[mask & np.isfinite(top)]
            counts = np.histogram(values, edges)[0]
            hist[f"{name}_{kind}"] = counts / max(mask.sum(), 1)
    if result.test.truth is None:  # the same columns for every data set (dvc.yaml names them): empty here
        hist.update({"test_known": np.full(bins, np.nan), "test_new": np.full(bins, np.nan)})
    tables["top_score"] = pd.DataFrame(hist)
    per_species = {part: metrics[f"{part}_map5_per_species"] for part in ("cv", "test")
                   if f"{part}_map5_per_species" in metrics}
    species = sorted(set().union(*per_species.values()))
    tables["map5_per_species"] = pd.DataFrame({"species": species, **{f"{name}_map5": [m.get(sp, np.nan) for sp in species]
                                                                      for name, m in per_species.items()}})
    return tables


def submission(predictions: pd.DataFrame) -> pd.DataFrame:
    """The Happywhale submission: ``image,predictions`` with five space-separated ids."""
    return pd.DataFrame({"image": predictions["image_id"], "predictions": predictions["predictions"]})
