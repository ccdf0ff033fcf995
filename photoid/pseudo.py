"""Pseudo-labels: confident test predictions become extra training labels.

A test image's prediction has two confidences: the score of its best known individual
(``top_score``) and that score's lead over the second individual (``margin``). The scores are those
the ranking answers with: with re-ranking on (knn-rank's default), the fused P(same individual) of
the shortlist verified by local features; otherwise the fold-ensemble similarity. An image becomes
a pseudo-label for its best individual when

- its first prediction is that individual (not ``new_individual``: the tuned threshold is passed),
- its confidence (``margin`` by default, or ``top_score``) reaches the cut, and
- ``margin >= min_margin`` (two individuals almost tied is not a confident answer).

The cut comes from the model's own scale, not a fixed number: by default it is the lowest
confidence at which the CV queries (the split's validation images, ranked exactly as test images
are) that are answered with a known individual first are right at least ``precision`` of the time
(:func:`precision_cut`). The margin is the default confidence because a look-alike of a new
individual can score high too, but rarely far above the runner-up. A fixed number can still be
given (Happywhale's 1st place kept similarity > 0.6, the 2nd > 0.8, on their models' scales).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from photoid.errors import DataError
from photoid.metrics import NEW_INDIVIDUAL
from photoid.retrieval.evaluation import choose_thresholds
from photoid.retrieval.evidence_memo import EvidenceMemo
from photoid.retrieval.outputs import predictions_table
from photoid.retrieval.ranker import Ranker, RankerConfig


def precision_cut(scores, correct, precision: float) -> tuple[float, float, int]:
    """The lowest score ``s`` such that the answers scoring ``>= s`` are right at least ``precision`` of
    the time: (s, their precision, how many). (inf, 0, 0) when even the most confident answer misses it.

    ``scores``: each answer's confidence; ``correct``: whether it was right."""
    scores, correct = np.asarray(scores, np.float64), np.asarray(correct, bool)
    if len(scores) == 0:
        return float("inf"), 0.0, 0
    order = np.argsort(-scores, kind="stable")
    s, c = scores[order], correct[order]
    prec = np.cumsum(c) / np.arange(1, len(s) + 1)
    # a cut can only fall between distinct scores: judge each prefix that ends at the last of its ties
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    ok = ends[prec[ends] >= precision]
    if len(ok) == 0:
        return float("inf"), 0.0, 0
    i = int(ok.max())
    return float(s[i]), float(prec[i]), i + 1


CONFIDENCES = {"margin": "margin", "score": "top_score"}


def confidence_of(predictions: pd.DataFrame, confidence: str) -> np.ndarray:
    if confidence not in CONFIDENCES:
        raise ValueError(f"confidence {confidence!r}: use margin or score")
    return predictions[CONFIDENCES[confidence]].to_numpy(dtype=np.float64)


def cv_answers(predictions: pd.DataFrame, truth, confidence: str = "margin") -> tuple[np.ndarray, np.ndarray]:
    """Of the CV queries whose first answer is a known individual: (confidence, whether it is right)."""
    first = np.array([str(p).split(" ")[0] for p in predictions["predictions"]], dtype=object)
    known = first != NEW_INDIVIDUAL
    return confidence_of(predictions, confidence)[known], (first == np.asarray(truth, dtype=object))[known]


PSEUDO_COLUMNS = ["image_id", "part", "individual", "species", "crop_path", "confidence", "margin", "fold"]


def select_pseudo_labels(predictions: pd.DataFrame, crops: pd.DataFrame, threshold: float,
                         min_margin: float, confidence: str, fold: int) -> pd.DataFrame:
    """Pseudo-labelled rows (crop rows of the chosen test images, labelled with their prediction) for
    fold ``fold``, the fold whose model and gallery made ``predictions``."""
    first = np.array([str(p).split(" ")[0] for p in predictions["predictions"]], dtype=object)
    keep = ((first != NEW_INDIVIDUAL) & (first == predictions["top_individual"].to_numpy(dtype=object))
            & (confidence_of(predictions, confidence) >= threshold) & (predictions["margin"].to_numpy() >= min_margin))
    chosen = predictions[keep]
    species_of = (crops[crops["part"] == "train"].drop_duplicates("individual").set_index("individual")["species"])
    rows = crops.set_index("image_id").loc[chosen["image_id"], ["part", "crop_path"]].reset_index()
    rows["individual"] = chosen["top_individual"].to_numpy()
    rows["species"] = species_of.reindex(rows["individual"]).to_numpy()
    rows["confidence"] = chosen["top_score"].to_numpy()
    rows["margin"] = chosen["margin"].to_numpy()
    rows["fold"] = np.int64(fold)
    return rows[PSEUDO_COLUMNS].reset_index(drop=True)


def pseudo_label_figures(pseudo: pd.DataFrame, n_test: int, truth: pd.DataFrame | None) -> dict:
    """How many test images were labelled and, where the test truth is known, how many correctly."""
    out = {"test_images": int(n_test), "pseudo_labels": int(len(pseudo)),
           "images": int(pseudo["image_id"].nunique()),
           "share": float(pseudo["image_id"].nunique() / n_test) if n_test else 0.0,
           "individuals": int(pseudo["individual"].nunique())}
    if "fold" in pseudo:
        out["pseudo_labels_per_fold"] = {str(k): int(n) for k, n in pseudo["fold"].value_counts().sort_index().items()}
    if truth is not None and not truth.empty and len(pseudo):
        by_id = dict(zip(truth["image_id"], truth["individual"]))
        known = [i in by_id for i in pseudo["image_id"]]
        if all(known):
            out["accuracy"] = float(np.mean([by_id[i] == lab for i, lab in zip(pseudo["image_id"], pseudo["individual"])]))
    return out


@dataclass(frozen=True)
class PseudoConfig:
    """params.yaml's pseudo section (the values live there)."""

    enabled: bool
    confidence: str  # margin | score
    threshold: str  # auto: the cut where the CV answers reach ``precision`` | a number: that cut
    precision: float
    min_margin: float

    def __post_init__(self):
        if self.confidence not in CONFIDENCES:
            raise DataError(f"pseudo.confidence takes {' or '.join(CONFIDENCES)}, got {self.confidence!r}")
        try:
            self.fixed_cut
        except ValueError:
            raise DataError(f"pseudo.threshold takes auto or a number, got {self.threshold!r}") from None

    @property
    def fixed_cut(self) -> float | None:
        """The cut given as a number (None: auto)."""
        return None if self.threshold.strip().lower() == "auto" else float(self.threshold)


def pseudo_labels(cfg: PseudoConfig, ranker_config: RankerConfig, sets: list, folds: list, split: pd.DataFrame,
                  local_features: Path, truth: pd.DataFrame | None = None,
                  memo: EvidenceMemo | None = None) -> tuple[pd.DataFrame, dict]:
    """The pseudo-labels of every fold of ``folds`` (numbered folds, each with its embedding set) and their figures.

    A ranker is fitted on the folds' CV queries as knn-rank fits its own (re-ranked as it re-ranks), so
    the cut is on the scale the answers come on; each fold's test ranking is its model's alone, against
    every training photo but its validation photos (:meth:`Ranker.answer_per_fold`). ``memo``: the local
    evidence computed is kept there (knn-rank reads it: :mod:`photoid.retrieval.evidence_memo`)."""
    fitted = Ranker.fit(ranker_config, sets, folds, split, local_features, progress=True, memo=memo)
    result, ranker = fitted.result, fitted.ranker
    cv_scores, cv_correct = cv_answers(predictions_table(result.cv, result.thresholds), result.cv.truth, cfg.confidence)
    if cfg.fixed_cut is None:
        cut, cv_precision, cv_count = precision_cut(cv_scores, cv_correct, cfg.precision)
    else:
        cut, above = cfg.fixed_cut, cv_scores >= cfg.fixed_cut
        cv_precision, cv_count = (float(cv_correct[above].mean()) if above.any() else 0.0), int(above.sum())
    rule = ranker_config.rule
    chosen = []
    for k, ranking in zip(folds, ranker.answer_per_fold(sets, folds, split, [local_features], fitted.verified, memo)):
        # a share of new-first answers is a share of what this fold ranks; a tuned or fixed score is the same for all
        t = (choose_thresholds(result.cv, rule, ranker_config.per_species, ranker_config.min_species_queries, ranking)
             if rule.new_share is not None else result.thresholds)
        chosen.append(select_pseudo_labels(predictions_table(ranking, t), result.rows, cut, cfg.min_margin,
                                           cfg.confidence, fold=k))
    pseudo = pd.concat(chosen, ignore_index=True)
    figures = pseudo_label_figures(pseudo, len(result.test.image_ids), truth)
    figures.update({"enabled": True, "confidence": cfg.confidence, "threshold": cut if np.isfinite(cut) else None,
                    "threshold_auto": cfg.fixed_cut is None, "precision_target": cfg.precision,
                    "cv_precision_above_threshold": cv_precision, "cv_answers_above_threshold": cv_count,
                    "min_margin": cfg.min_margin, "new_individual_threshold": result.thresholds.overall,
                    "rerank": ranker_config.reranking, "cv_map5_as_ranked": result.metrics()["cv_map5"],  # the cut's ranking
                    "cv_map5_before_retrain": fitted.embedding["cv_map5"]})  # the embeddings' (knn-rank: retrain_gain)
    return pseudo, figures
