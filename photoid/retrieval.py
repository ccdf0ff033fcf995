"""From embeddings to five ranked individuals, ``new_individual`` among them.

- similarity: inner product of L2-normalised float32 vectors (cosine);
- the score of an individual for a query: its best similarity over that individual's gallery images;
- ``new_individual`` is inserted where its threshold beats the next score;
- the threshold is tuned on held-out individuals by maximising MAP@5;
- a fold ensemble averages the folds' similarities (:func:`fold_ensemble`).

This module works on neighbour lists (the top-K gallery matches of each query), so that the same
code ranks a dense similarity matrix (K = gallery size) and a faiss search.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from photoid.errors import DataError
from photoid.metrics import NEW_INDIVIDUAL, map_at_k


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


INDEXES = ("flat", "ivf")


@dataclass(frozen=True)
class Search:
    """How a gallery is searched: the ``neighbours`` best entries per query, by an exact scan
    (``index="flat"``, faiss IndexFlatIP) or approximately (``"ivf"``: faiss IndexIVFFlat, for
    galleries past a million entries: the gallery is clustered into ``ivf_lists`` lists, 0 = 4·√N,
    and each query scans the ``ivf_probe`` nearest lists). With ``query_expansion`` w > 0, each query
    is searched again as itself plus w times each of its two best gallery entries (L2-normalised: the
    Happywhale beluga winners' query expansion). params.yaml's knn.neighbours, knn.index,
    knn.ivf_lists, knn.ivf_probe and knn.query_expansion."""

    neighbours: int
    index: str
    ivf_lists: int
    ivf_probe: int
    query_expansion: float  # weight of the query's two best gallery entries added to it for a second search (0: off)

    def __post_init__(self):
        if self.index not in INDEXES:
            raise DataError(f"knn.index is {self.index!r}: use one of {', '.join(INDEXES)} (params.yaml)")
        if not self.query_expansion >= 0:
            raise DataError(f"knn.query_expansion must be 0 (off) or a positive weight, got {self.query_expansion}")

    @classmethod
    def of(cls, search: "int | Search") -> "Search":
        """A neighbour count alone means an exact search for that many, without query expansion."""
        return search if isinstance(search, Search) else cls(int(search), "flat", 0, 0, 0.0)


def _on_gpu(index):
    """``index`` on the GPU when faiss-gpu is installed and sees one, else as it is (CPU)."""
    import faiss

    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        return faiss.index_cpu_to_all_gpus(index)
    return index


def _flat_search(queries: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    index = _on_gpu(faiss.IndexFlatIP(gallery.shape[1]))
    index.add(gallery)
    return index.search(queries, k)


def _ivf_search(queries: np.ndarray, gallery: np.ndarray, k: int, lists: int, probe: int):
    """IVF search; rows where the probed lists held fewer than ``k`` entries (faiss pads them with
    -1) are searched again exactly, so every row has ``k`` real neighbours."""
    import faiss

    n, dim = gallery.shape
    lists = min(lists or int(4 * np.sqrt(n)), n // 39)  # faiss's k-means wants >= 39 points per list
    if lists < 2:
        return _flat_search(queries, gallery, k)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
    index.train(gallery)
    index.add(gallery)
    index.nprobe = min(probe, lists)
    sims, idx = _on_gpu(index).search(queries, k)
    short = np.flatnonzero((idx < 0).any(axis=1))
    if len(short):
        sims[short], idx[short] = _flat_search(np.ascontiguousarray(queries[short]), gallery, k)
    return sims, idx


def neighbours(queries: np.ndarray, gallery: np.ndarray, search: "int | Search") -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine neighbours of L2-normalised float32 vectors, k = ``search``'s neighbours (an int:
    k, searched exactly) capped at the gallery size: (similarities Q×k, gallery indices Q×k), best
    first. Exact with faiss IndexFlatIP; approximate with the IVF index (:class:`Search`)."""
    search = Search.of(search)
    queries, gallery = l2_normalise(queries), l2_normalise(gallery)
    k = min(search.neighbours, len(gallery))
    if len(queries) == 0 or k == 0:
        return np.zeros((len(queries), k), np.float32), np.zeros((len(queries), k), np.int64)
    queries, gallery = np.ascontiguousarray(queries), np.ascontiguousarray(gallery)
    if search.index == "ivf":
        sims, idx = _ivf_search(queries, gallery, k, search.ivf_lists, search.ivf_probe)
    else:
        sims, idx = _flat_search(queries, gallery, k)
    if search.query_expansion > 0 and k >= 2:
        expanded = l2_normalise(queries + search.query_expansion * gallery[idx[:, :2]].sum(axis=1))
        return neighbours(expanded, gallery, replace(search, query_expansion=0.0))
    return sims, idx.astype(np.int64)


def fold_ensemble(per_fold: list[np.ndarray]) -> np.ndarray:
    """Concatenate the folds' L2-normalised vectors of the same items, scaled by 1/sqrt(F): the inner
    product of two such vectors is the mean over folds of their cosine similarities (the fold ensemble)."""
    return np.concatenate([l2_normalise(v) for v in per_fold], axis=1) / np.sqrt(len(per_fold))


def ranked_images(idx: np.ndarray, owners: np.ndarray, labels: np.ndarray, n: int = 20) -> list[list[str]]:
    """Image-level ranking (for mAP@n): the individual of each of the first ``n`` distinct gallery images,
    best first. ``owners`` maps a gallery entry to its image (an image and its flip are one image)."""
    out = []
    for row in idx:
        seen: set = set()
        ranked = []
        for j in row:
            if j < 0 or owners[j] in seen:
                continue
            seen.add(owners[j])
            ranked.append(labels[j])
            if len(ranked) == n:
                break
        out.append(ranked)
    return out


@dataclass
class Candidates:
    """Per query, the best-scoring known individuals, best first (``labels`` Q×n, ``scores`` Q×n; '' / -inf pad)."""

    labels: np.ndarray
    scores: np.ndarray
    # per query, the lowest similarity its neighbour list searched: no unlisted individual scores above it
    # (None where the scores are not similarities, e.g. re-ranked probabilities)
    floor: np.ndarray | None = None

    def margin(self) -> np.ndarray:
        """The best individual's lead over the second. When the neighbour list held one individual only,
        the lead over ``floor`` (a lower bound of the true lead), or 0 without a floor: one individual
        filling the list is never a lead by itself."""
        s = self.scores.astype(np.float64)
        top = s[:, 0] if s.shape[1] else np.full(len(s), -np.inf)
        second = s[:, 1] if s.shape[1] > 1 else np.full(len(s), -np.inf)
        bound = np.zeros(len(s)) if self.floor is None else top - np.asarray(self.floor, np.float64)
        return np.where(np.isfinite(second), top - second, np.where(np.isfinite(top), bound, 0.0))


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
    floor = sims[:, -1].astype(np.float64) if sims.shape[1] else np.full(q, -np.inf)
    return Candidates(labels, scores, floor)


def candidate_photos(idx: np.ndarray, owners: np.ndarray, gallery_labels: np.ndarray, candidates: Candidates,
                     m: int = 0) -> list[list[list[int]]]:
    """Per query and candidate individual, its gallery images (``owners`` values) in the order the neighbour
    list ``idx`` found them, best first, at most ``m`` (0: all that the list holds). An image and its
    mirror entry are one image."""
    gallery_labels = np.asarray(gallery_labels)
    out = []
    for row, labels in zip(idx, candidates.labels):
        found: dict[str, list[int]] = {lab: [] for lab in labels if lab != ""}
        for j in row:
            if j < 0:
                continue
            photos = found.get(gallery_labels[j])
            if photos is not None and int(owners[j]) not in photos and (m <= 0 or len(photos) < m):
                photos.append(int(owners[j]))
        out.append([found.get(lab, []) for lab in labels])
    return out


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


def concat_candidates(parts: list[Candidates]) -> Candidates:
    """The queries of several candidate sets as one; narrower sets padded ('' / -inf) to the widest."""
    floor = None if any(c.floor is None for c in parts) else np.concatenate([c.floor for c in parts])
    width = max((c.labels.shape[1] for c in parts), default=0)

    def pad(x, value):
        return np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=value)

    return Candidates(np.concatenate([pad(c.labels, "") for c in parts]),
                      np.concatenate([pad(c.scores, -np.inf) for c in parts]), floor)


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
            "map5_without_new": map_at_k(predict(cands, -np.inf, k), truth, k)}
