"""From embeddings to five ranked individuals, ``new_individual`` among them.

- similarity: inner product of L2-normalised float32 vectors (cosine);
- the score of an individual for a query: its best similarity over that individual's gallery images;
- ``new_individual`` is inserted where its threshold beats the next score;
- the threshold is tuned on held-out individuals by maximising MAP@5.

This module works on neighbour lists (the top-K gallery matches of each query), so that the same
code ranks a dense similarity matrix (K = gallery size) and a faiss search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from photoid.metrics import NEW_INDIVIDUAL, map_at_k


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def neighbours(queries: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` cosine neighbours by brute force: (similarities Q×k, gallery indices Q×k), best first."""
    sims = l2_normalise(queries) @ l2_normalise(gallery).T
    k = min(k, sims.shape[1])
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    part = np.take_along_axis(sims, idx, axis=1)
    order = np.argsort(-part, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(idx, order, axis=1)


@dataclass
class Candidates:
    """Per query, the best-scoring known individuals, best first (``labels`` Q×n, ``scores`` Q×n; '' / -inf pad)."""

    labels: np.ndarray
    scores: np.ndarray


def individual_candidates(sims: np.ndarray, idx: np.ndarray, gallery_labels: np.ndarray, n: int = 5) -> Candidates:
    """Collapse neighbour lists to individuals: each individual scores its best similarity."""
    gallery_labels = np.asarray(gallery_labels)
    q = sims.shape[0]
    labels = np.full((q, n), "", dtype=object)
    scores = np.full((q, n), -np.inf, dtype=np.float32)
    for i in range(q):
        seen: list[str] = []
        for s, j in zip(sims[i], idx[i]):  # best first, so the first hit of an individual is its max
            lab = gallery_labels[j]
            if lab in seen:
                continue
            labels[i, len(seen)], scores[i, len(seen)] = lab, s
            seen.append(lab)
            if len(seen) == n:
                break
    return Candidates(labels, scores)


def predict(candidates: Candidates, threshold: float, k: int = 5) -> list[list[str]]:
    """Top-``k`` predictions with ``new_individual`` placed before the first score below ``threshold``."""
    out = []
    for labels, scores in zip(candidates.labels, candidates.scores):
        known = [lab for lab, s in zip(labels, scores) if lab != ""]
        pos = int(np.sum(scores[: len(known)] >= threshold))
        out.append((known[:pos] + [NEW_INDIVIDUAL] + known[pos:])[:k])
    return out


def tune_threshold(candidates: Candidates, truth: list[str], grid: np.ndarray | None = None, k: int = 5) -> tuple[float, float]:
    """The threshold (from ``grid``) that maximises MAP@k; ties go to the lowest. Returns (threshold, MAP@k)."""
    if grid is None:
        grid = np.round(np.arange(-0.2, 1.0001, 0.01), 4)
    best_t, best = float(grid[0]), -1.0
    for t in grid:
        score = map_at_k(predict(candidates, float(t), k), truth, k)
        if score > best + 1e-12:
            best_t, best = float(t), score
    return best_t, best


def query_truth(query_labels, gallery_labels) -> list[str]:
    """A query's answer: its individual if the gallery knows it, else ``new_individual``."""
    known = set(np.asarray(gallery_labels).tolist())
    return [lab if lab in known else NEW_INDIVIDUAL for lab in query_labels]


def evaluate(query_emb: np.ndarray, query_labels, gallery_emb: np.ndarray, gallery_labels, k: int = 5,
             n_neighbours: int = 100) -> dict:
    """MAP@k of a query set against a gallery, with the new-individual threshold tuned on it (CV style)."""
    sims, idx = neighbours(query_emb, gallery_emb, n_neighbours)
    cands = individual_candidates(sims, idx, np.asarray(gallery_labels), n=k)
    truth = query_truth(query_labels, gallery_labels)
    threshold, score = tune_threshold(cands, truth, k=k)
    top1 = np.mean([p[0] == t for p, t in zip(predict(cands, threshold, k), truth)]) if truth else 0.0
    return {"map5": score, "threshold": threshold, "top1": float(top1),
            "map5_no_new": map_at_k(predict(cands, -np.inf, k), truth, k)}
