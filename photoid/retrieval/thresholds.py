"""Where ``new_individual`` goes among a query's five answers: before the first candidate whose score
is below its threshold. The threshold is tuned on held-out individuals for MAP@5 (one overall or one
per species), fixed, or set for a share of new-first answers (:class:`ThresholdRule`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from photoid.errors import DataError
from photoid.metrics import NEW_INDIVIDUAL
from photoid.retrieval.search import Candidates

K = 5  # five predictions per image (Happywhale)


def predict(candidates: Candidates, threshold, k: int = 5) -> list[list[str]]:
    """Top-``k`` predictions with ``new_individual`` placed before the first score below ``threshold``
    (one threshold, or one per query)."""
    thresholds = np.broadcast_to(np.asarray(threshold, dtype=np.float32), (len(candidates.labels),))  # as the scores
    out = []
    for labels, scores, t in zip(candidates.labels, candidates.scores, thresholds):
        known = [lab for lab, s in zip(labels, scores) if lab != ""]
        pos = int(np.sum(scores[: len(known)] >= t))
        out.append((known[:pos] + [NEW_INDIVIDUAL] + known[pos:])[:k])
    return out


def threshold_grid(candidates: Candidates, max_points: int = 2000) -> np.ndarray:
    """Thresholds worth trying: MAP@k only changes where a threshold crosses a candidate score, so the
    midpoints between consecutive distinct scores, one below the lowest and one above the highest
    (thinned to ``max_points`` quantiles on large sets)."""
    s = np.unique(candidates.scores[np.isfinite(candidates.scores)].astype(np.float64))
    if len(s) == 0:
        return np.array([0.0])
    if len(s) > max_points:
        s = np.unique(np.quantile(s, np.linspace(0, 1, max_points)))
    return np.concatenate([[s[0] - 1e-3], (s[:-1] + s[1:]) / 2, [s[-1] + 1e-3]])


def map_for_thresholds(candidates: Candidates, truth: list[str], grid: np.ndarray, k: int = 5) -> np.ndarray:
    """MAP@k of :func:`predict` at every threshold of ``grid`` at once (vectorised; equal to
    ``map_at_k(predict(candidates, t, k), truth, k)`` for each t)."""
    labels, scores = candidates.labels, candidates.scores
    if len(truth) == 0:
        return np.zeros(len(grid))
    n_known = (labels != "").sum(axis=1)  # (Q,)
    hit = labels == np.asarray(truth, dtype=object)[:, None]
    rank = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, 0)  # 1-based among known candidates, 0 if absent
    is_new = np.array([t == NEW_INDIVIDUAL for t in truth])
    grid = np.asarray(grid, np.float32)  # compared as predict compares: in the scores' precision
    out = np.empty(len(grid))
    step = max(1, int(2e7 // max(scores.size, 1)))  # bounds the (G, Q, n) comparison in memory
    for a in range(0, len(grid), step):
        g = grid[a:a + step]
        pos = (scores[None, :, :] >= g[:, None, None]).sum(axis=2)  # (G, Q)
        pos = np.minimum(pos, n_known[None, :])  # knowns above the threshold; new_individual goes at pos + 1
        final = np.where(is_new[None, :], pos + 1, np.where(rank[None, :] <= pos, rank[None, :], rank[None, :] + 1))
        ap = np.where((final <= k) & ((rank[None, :] > 0) | is_new[None, :]), 1.0 / np.maximum(final, 1), 0.0)
        out[a:a + step] = ap.mean(axis=1)
    return out


def tune_threshold(candidates: Candidates, truth: list[str], grid: np.ndarray | None = None, k: int = 5) -> tuple[float, float]:
    """The threshold (from ``grid``, by default every one that makes a difference) that maximises MAP@k;
    ties go to the lowest. Returns (threshold, MAP@k)."""
    grid = threshold_grid(candidates) if grid is None else np.asarray(grid)
    scores = map_for_thresholds(candidates, truth, grid, k)
    best = int(np.argmax(scores))  # the first (lowest) of equal maxima
    return float(grid[best]), float(scores[best])


def tune_species_thresholds(candidates: Candidates, truth: list[str], species, min_queries: int = 10,
                            grid: np.ndarray | None = None, k: int = 5) -> tuple[float, dict[str, float]]:
    """One threshold over all queries and one per species that has at least ``min_queries`` queries
    (each tuned on that species' queries alone); other species use the global one."""
    species = np.asarray(species)
    overall, _ = tune_threshold(candidates, truth, grid, k)
    per_species = {}
    for sp in sorted(set(species.tolist())):
        mask = species == sp
        if mask.sum() >= min_queries:
            sub = Candidates(candidates.labels[mask], candidates.scores[mask])
            per_species[sp], _ = tune_threshold(sub, [t for t, m in zip(truth, mask) if m], grid, k)
    return overall, per_species


def answered_new_first(predictions: list[list[str]]) -> np.ndarray:
    """Per query, whether ``new_individual`` is its first prediction."""
    return np.array([bool(p) and p[0] == NEW_INDIVIDUAL for p in predictions], dtype=bool)


def new_individual_precision_recall(predictions: list[list[str]], truth: list[str]) -> tuple[float, float]:
    """Precision and recall of ``new_individual`` as the first prediction."""
    said_new = answered_new_first(predictions)
    is_new = np.array([t == NEW_INDIVIDUAL for t in truth])
    precision = float((said_new & is_new).sum() / said_new.sum()) if said_new.any() else 0.0
    recall = float((said_new & is_new).sum() / is_new.sum()) if is_new.any() else 0.0
    return precision, recall


@dataclass(frozen=True)
class Thresholds:
    overall: float
    per_species: dict[str, float] = field(default_factory=dict)
    rule: str = "auto"  # the ThresholdRule that chose them

    @property
    def tuned(self) -> bool:
        return self.rule == "auto"


@dataclass(frozen=True)
class ThresholdRule:
    """How the ``new_individual`` threshold is chosen (``knn.threshold``):

    - ``auto``: tuned for MAP@5 on the CV queries;
    - a number: that score;
    - ``new_share:r``: the score below which a share ``r`` of the test photos is answered
      ``new_individual`` first (the Happywhale winners' way: the share of new animals in a survey is
      often known better than a score on the model's scale, and it does not move with the gallery's
      size as a tuned score does). The CV figures are then those of that same score."""

    fixed: float | None = None
    new_share: float | None = None

    @classmethod
    def parse(cls, text, name: str = "knn.threshold") -> "ThresholdRule":
        t = str(text).strip().lower()
        if t == "auto":
            return cls()
        try:
            if t.startswith("new_share:"):
                r = float(t.split(":", 1)[1])
                if not 0.0 <= r <= 1.0:
                    raise ValueError
                return cls(new_share=r)
            return cls(fixed=float(t))
        except ValueError:
            raise DataError(f"{name} takes auto, a number, or new_share:<r> with r between 0 and 1 "
                            f"(e.g. new_share:0.5), got {text!r}") from None

    def __str__(self) -> str:
        return "auto" if self.fixed is None and self.new_share is None else (
            str(self.fixed) if self.fixed is not None else f"new_share:{self.new_share:g}")


def share_threshold(candidates: Candidates, share: float) -> float:
    """The threshold at which a share ``share`` of these queries (as near as ties allow) has its best
    score below it, i.e. is answered ``new_individual`` first by :func:`predict`."""
    top = np.sort(candidates.scores[:, 0].astype(np.float64)) if candidates.scores.size else np.zeros(0)
    if len(top) == 0:
        return 0.0
    finite = top[np.isfinite(top)]
    lo, hi = (finite.min(), finite.max()) if len(finite) else (0.0, 0.0)
    n = int(round(share * len(top)))
    if n <= 0:
        return float(lo - 1e-3)
    if n >= len(top):
        return float(hi + 1e-3)
    a, b = top[n - 1], top[n]
    a = a if np.isfinite(a) else b - 1e-3
    return float((a + b) / 2)
