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
or, past ``ivf_above`` gallery keypoints, an inverted-file index of 8-bit codes (a byte a
dimension, as the store keeps them) that scans ``ivf_probe`` of its √N lists per query keypoint:
approximate, for large catalogues.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from photoid.errors import DataError

POOLS = ("individual", "photo")


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
        parts, owners = [], []
        for photo, image_id in enumerate(image_ids):
            for flipped in (False, True):
                d = store.get(image_id, flipped).descriptors
                parts.append(d)
                owners.append(np.full(len(d), photo, np.int64))
        descriptors = np.concatenate(parts) if parts else np.zeros((0, 128), np.uint8)  # uint8, as stored
        photo_of = np.concatenate(owners) if owners else np.zeros(0, np.int64)
        self.owners = photo_of if cfg.lnbnn_pool == "photo" else self.photo_individual[photo_of]
        self.size = len(descriptors)
        dim = descriptors.shape[1]
        if cfg.ivf_above and self.size > cfg.ivf_above:
            # inverted lists of 8-bit codes: RootSIFT is stored as uint8 already, so next to nothing is lost
            lists = max(2, min(int(np.sqrt(self.size)), self.size // 39))
            self._quantizer = faiss.IndexFlatL2(dim)  # the IVF index keeps a pointer to it
            index = faiss.IndexIVFScalarQuantizer(self._quantizer, dim, lists, faiss.ScalarQuantizer.QT_8bit,
                                                  faiss.METRIC_L2)
            index.cp.niter = 10  # k-means iterations: the lists need not be optimal, only balanced enough
            index.train(_unit(descriptors[np.random.default_rng(0).permutation(self.size)[: lists * 40]]))
            index.nprobe = min(cfg.ivf_probe, lists)
        else:
            index = faiss.IndexFlatL2(dim)
        for start in range(0, self.size, 1 << 20):  # never the whole gallery as float32 at once
            index.add(_unit(descriptors[start:start + (1 << 20)]))
        self.index = index

    def scores(self, query_descriptors: list[np.ndarray], batch_keypoints: int = 65536) -> np.ndarray:
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
            dist, idx = self.index.search(chunk, k + 1)
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
