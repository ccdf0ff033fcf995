"""One-vs-many matching of local features over the whole catalogue: a score for every known
individual, not for a shortlist.

HotSpotter's design (Crall et al., WACV 2013; the matcher behind Wildbook): every keypoint of every
gallery photo (as it is and mirrored) goes into one nearest-neighbour index; each query keypoint
looks up its ``k + 1`` nearest gallery keypoints and votes for the individuals among the first
``k`` by how much closer they are than the ``k + 1``-th (local naive-Bayes nearest neighbour,
LNBNN: McCann and Lowe, CVPR 2012). A keypoint whose texture every animal shares (water, a smooth
flank) has all its neighbours at about the same distance and votes for no one; one near a
particular nick votes for its owner alone. ``pool="individual"`` (HotSpotter's way): an
individual's votes from one query keypoint count once (its best) and its score is the sum over
the query's keypoints, so an individual with many photos has more keypoints to be near;
``pool="photo"``: the votes are summed per gallery photo (a photo and its mirror image are one)
and an individual scores its best photo, whatever the number of its photos.

The index is faiss's exact L2 search (``IndexFlatL2``) over RootSIFT descriptors as unit vectors,
or, past ``ivf_above`` gallery keypoints, approximate, for large catalogues: an inverted file of √N
lists (``ivf_probe`` of them scanned per query keypoint) holding product-quantised codes (64 codes of
4 bits, 32 bytes a keypoint, scanned with faiss's SIMD "fast-scan"), whose best ``REFINE × (k + 1)``
neighbours of each query keypoint are measured again exactly from the keypoint store's own
descriptors (memory-mapped, read only for those candidates). On real descriptors that finds the
exact index's 5 nearest neighbours as often as an index of 8-bit codes does (94 %); at 10,000
gallery photos it answers a query in a tenth of that index's time with about a third of its
memory (bench/catalogue_scale.py times it up to Happywhale's size).
The gallery is read photo by photo and added in blocks: never the whole catalogue as one array.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from photoid.errors import DataError

POOLS = ("individual", "photo")


REFINE = 8  # approximate index: candidates re-measured exactly per neighbour needed (k + 1)


PQ_CODES = 64  # approximate index: 4-bit codes per keypoint (two per byte)


HNSW_LISTS = 4096  # approximate index: past this many lists, they are found through a graph (HNSW), not one by one


ADD_BLOCK = 1 << 20  # keypoints added to the index at a time


@dataclass(frozen=True)
class CatalogueConfig:
    """params.yaml's rerank.lnbnn_k, rerank.lnbnn_pool, rerank.ivf_above and rerank.ivf_probe (the values
    live there)."""

    lnbnn_k: int  # neighbours that vote; the next one is the distance they are measured against
    lnbnn_pool: str  # individual: votes summed per individual | photo: per gallery photo, an individual its best
    ivf_above: int  # gallery keypoints past which the index is approximate (inverted lists); 0: always exact
    ivf_probe: int  # inverted lists scanned per query keypoint

    def __post_init__(self):
        if self.lnbnn_pool not in POOLS:
            raise DataError(f"rerank.lnbnn_pool takes {' or '.join(POOLS)}, got {self.lnbnn_pool!r}")
        if self.lnbnn_k < 1:
            raise DataError(f"rerank.lnbnn_k must be at least 1, got {self.lnbnn_k}")
        if self.ivf_above < 0 or self.ivf_probe < 1:
            raise DataError(f"rerank.ivf_above must be >= 0 and rerank.ivf_probe >= 1, got {self.ivf_above} and "
                            f"{self.ivf_probe}")


def _unit(descriptors: np.ndarray) -> np.ndarray:
    """Stored RootSIFT (uint8, 255 x a unit vector) as float32 unit vectors."""
    return np.ascontiguousarray(np.asarray(descriptors, np.float32) / 255.0)


class CatalogueIndex:
    """Every keypoint of a gallery's photos (as they are and mirrored) in one faiss index, each
    keypoint owned by its photo's individual. ``store``: a keypoint store
    (:func:`photoid.local_features.open_stores`); ``image_ids`` and ``individuals``: the gallery."""

    def __init__(self, store, image_ids, individuals, cfg: CatalogueConfig):
        import faiss

        self.cfg = cfg
        self.individuals = np.array(sorted(set(individuals)), dtype=object)
        position = {ind: i for i, ind in enumerate(self.individuals)}
        # each photo's individual (column of the result); the voters: photos or individuals
        self.photo_individual = np.array([position[ind] for ind in individuals], np.int64)
        # where each photo's (and its mirror's) descriptors lie: an array of the store, first row, count
        sources, source_of, segments = [], {}, []
        for image_id in image_ids:
            for flipped in (False, True):
                array, first, count = store.descriptor_slice(image_id, flipped)
                segments.append((source_of.setdefault(id(array), len(sources)), first, count))
                if segments[-1][0] == len(sources):
                    sources.append(array)
        self._sources = sources
        seg = np.array(segments, np.int64).reshape(-1, 3)
        self._seg_source, self._seg_row, counts = seg[:, 0], seg[:, 1], seg[:, 2]
        self._seg_first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)  # index id of its first
        self.size = int(counts.sum())
        photo_of = np.repeat(np.arange(len(segments), dtype=np.int64) // 2, counts)
        owners = photo_of if cfg.lnbnn_pool == "photo" else self.photo_individual[photo_of]
        self.owners = owners.astype(np.int32)
        self.approximate = bool(cfg.ivf_above and self.size > cfg.ivf_above)
        self._dim = dim = sources[0].shape[1] if sources else 128
        if self.approximate:
            lists = max(2, min(int(np.sqrt(self.size)), self.size // 39))
            quantizer = f"IVF{lists}_HNSW32" if lists > HNSW_LISTS else f"IVF{lists}"
            index = faiss.index_factory(dim, f"{quantizer},PQ{PQ_CODES}x4fs", faiss.METRIC_L2)
            ivf = faiss.extract_index_ivf(index)
            ivf.cp.niter = 10  # k-means iterations: the lists need not be optimal, only balanced enough
            sample = np.sort(np.random.default_rng(0).permutation(self.size)[: lists * 40])
            index.train(_unit(self.descriptors_of(sample)))
            ivf.nprobe = min(cfg.ivf_probe, lists)
        else:
            index = faiss.IndexFlatL2(dim)
        block, block_rows = [], 0  # added in blocks of whole photos, about ADD_BLOCK keypoints each
        for (source, row, count) in segments:
            block.append(np.asarray(sources[source][row:row + count]))
            block_rows += count
            if block_rows >= ADD_BLOCK:
                index.add(_unit(np.concatenate(block)))
                block, block_rows = [], 0
        if block_rows:
            index.add(_unit(np.concatenate(block)))
        self.index = index

    def descriptors_of(self, ids: np.ndarray) -> np.ndarray:
        """The stored descriptors (uint8) of gallery keypoints by index id, read from the store."""
        ids = np.asarray(ids, np.int64)
        seg = np.searchsorted(self._seg_first, ids, side="right") - 1
        rows = self._seg_row[seg] + ids - self._seg_first[seg]
        source = self._seg_source[seg]
        out = np.empty((len(ids), self._dim), np.uint8)
        for s in np.unique(source):
            here = source == s
            out[here] = self._sources[s][rows[here]]
        return out

    def _neighbours(self, chunk: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Squared distances and ids of the ``n`` nearest gallery keypoints of each query keypoint (unit
        float32 rows), nearest first; the approximate index's candidates re-measured exactly."""
        if not self.approximate:
            return self.index.search(chunk, n)
        wide = min(REFINE * n, self.size)
        _, idx = self.index.search(chunk, wide)
        valid = idx >= 0
        candidates = _unit(self.descriptors_of(np.maximum(idx, 0).ravel())).reshape(len(chunk), wide, -1)
        dist = (np.einsum("qcd,qcd->qc", candidates, candidates) + np.einsum("qd,qd->q", chunk, chunk)[:, None]
                - 2.0 * np.einsum("qcd,qd->qc", candidates, chunk))
        dist = np.where(valid, dist, np.inf)
        order = np.argsort(dist, axis=1, kind="stable")[:, :n]
        dist, idx = np.take_along_axis(dist, order, 1), np.take_along_axis(idx, order, 1)
        return np.where(np.isfinite(dist), dist, 0.0).astype(np.float32), np.where(np.isfinite(dist), idx, -1)

    def scores(self, query_descriptors: list[np.ndarray], batch_keypoints: int = 8192) -> np.ndarray:
        """Q×I LNBNN scores of the queries (one array of stored RootSIFT descriptors each) for the
        individuals in ``self.individuals`` order (see the module's docstring)."""
        n_ind = len(self.individuals)
        by_photo = self.cfg.lnbnn_pool == "photo"
        n_voters = len(self.photo_individual) if by_photo else n_ind
        out = np.zeros((len(query_descriptors), n_voters), np.float64)
        k = self.cfg.lnbnn_k
        if self.size <= k or n_ind == 0:
            return np.zeros((len(query_descriptors), n_ind))
        lengths = np.array([len(d) for d in query_descriptors], np.int64)
        query_of = np.repeat(np.arange(len(query_descriptors)), lengths)
        flat = np.concatenate([np.asarray(d) for d in query_descriptors]) if lengths.sum() else np.zeros((0, 128), np.uint8)
        for start in range(0, len(flat), batch_keypoints):
            chunk = _unit(flat[start:start + batch_keypoints])
            dist, idx = self._neighbours(chunk, k + 1)
            valid = idx >= 0
            dist = np.sqrt(np.maximum(dist, 0.0))
            norm = dist[:, k:k + 1]
            votes = np.where(valid[:, :k] & valid[:, k:k + 1], norm - dist[:, :k], 0.0)
            owner = np.where(valid[:, :k], self.owners[np.maximum(idx[:, :k], 0)], 0)
            rows = np.repeat(np.arange(len(chunk)), k)
            owner, votes = owner.ravel(), votes.ravel()
            # one vote per voter (individual or photo) per query keypoint: its best (neighbours come nearest first)
            key = rows * n_voters + owner
            _, first = np.unique(key, return_index=True)
            queries = query_of[start + rows[first]]
            np.add.at(out, (queries, owner[first]), votes[first])
        if not by_photo:
            return out
        best = np.zeros((len(query_descriptors), n_ind))
        np.maximum.at(best, (slice(None), self.photo_individual), out)  # an individual: its best photo (votes >= 0)
        return best


def scores_for_candidates(matrix: np.ndarray, individuals: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Q×C: each candidate's column of a Q×I score ``matrix`` (0 for padding and for individuals the
    matrix does not hold)."""
    position = {ind: i for i, ind in enumerate(individuals)}
    cols = np.array([position.get(label, -1) for label in labels.ravel()], np.int64).reshape(labels.shape)
    picked = np.take_along_axis(matrix, np.maximum(cols, 0), axis=1) if matrix.shape[1] else np.zeros(labels.shape)
    return np.where(cols >= 0, picked, 0.0).astype(np.float32)
