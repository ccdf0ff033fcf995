"""Retrieval metrics, each a small pure function (fast-reid style).

- MAP@5 (Happywhale): per query ``1 / rank`` of the first correct of its five predictions, 0 if absent.
- mAP@20 (Where's Whale-do): average precision over the top 20 database matches.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

NEW_INDIVIDUAL = "new_individual"


def average_precision_at_k(predicted: Sequence[str], actual: str, k: int = 5) -> float:
    """``1/rank`` of the first prediction equal to ``actual`` within the first ``k``; 0 if none."""
    for rank, p in enumerate(list(predicted)[:k], start=1):
        if p == actual:
            return 1.0 / rank
    return 0.0


def map_at_k(predictions: Sequence[Sequence[str]], truth: Sequence[str], k: int = 5) -> float:
    """Mean over queries of :func:`average_precision_at_k` (the Happywhale MAP@5 for k=5)."""
    if len(predictions) != len(truth):
        raise ValueError(f"{len(predictions)} prediction lists for {len(truth)} truths")
    if len(truth) == 0:
        return 0.0
    return float(np.mean([average_precision_at_k(p, t, k) for p, t in zip(predictions, truth)]))


def average_precision_at_n(relevant: Sequence[bool], n_relevant: int, n: int = 20) -> float:
    """AP over the first ``n`` ranked database matches: mean of precision@i at each relevant i,
    divided by min(n, number of relevant items in the database)."""
    rel = np.asarray(relevant[:n], dtype=bool)
    denom = min(n, n_relevant)
    if denom == 0:
        return 0.0
    hits = np.cumsum(rel)
    precision = hits / np.arange(1, len(rel) + 1)
    return float((precision * rel).sum() / denom)


def reliability_bins(probability: Sequence[float], outcome: Sequence[bool], bins: int = 10) -> list[dict]:
    """Equal-width bins of predicted probability: per non-empty bin its mean prediction, the observed
    share of positive outcomes and the count (the points of a reliability diagram)."""
    p, y = np.asarray(probability, np.float64), np.asarray(outcome, np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    return [{"bin": int(b), "predicted": float(p[which == b].mean()), "observed": float(y[which == b].mean()),
             "count": int((which == b).sum())} for b in range(bins) if (which == b).any()]


def expected_calibration_error(probability: Sequence[float], outcome: Sequence[bool], bins: int = 10) -> float:
    """ECE: the count-weighted mean gap between mean prediction and observed share over equal-width bins."""
    table = reliability_bins(probability, outcome, bins)
    n = sum(t["count"] for t in table)
    return float(sum(t["count"] * abs(t["predicted"] - t["observed"]) for t in table) / n) if n else 0.0
