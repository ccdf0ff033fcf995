"""The embedding search: from a query's vectors to its best gallery entries and candidate individuals.

- similarity: inner product of L2-normalised float32 vectors (cosine), by faiss (exact, or IVF for
  galleries past a million entries; on the GPU with faiss-gpu);
- the score of an individual for a query: its best similarity over that individual's gallery images;
- a fold ensemble averages the folds' similarities (:func:`fold_ensemble`).

This module works on neighbour lists (the top-K gallery matches of each query), so that the same
code ranks a dense similarity matrix (K = gallery size) and a faiss search.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from photoid.errors import DataError
from photoid.metrics import NEW_INDIVIDUAL


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
