"""Local-feature evidence for every candidate individual, fused with the embedding similarity into
a calibrated probability that ranks them.

For each query (CV and test alike):

1. **Candidates.** With ``local: catalogue`` (the default) and ``candidates: 0``, every individual of
   the query's gallery, each with its best embedding similarity; with ``candidates: n``, the
   embedding's best n.
2. **Catalogue matching** (``local: catalogue``, :mod:`photoid.catalogue_match`): the query's
   keypoints vote (LNBNN) over every keypoint of its gallery, one index per CV fold (never holding
   that fold's validation photos) and one for the test photos: a score for every individual, so an
   animal the embedding ranks far down can still come first.
3. **Verification.** The query's best ``verify`` individuals by similarity and its best ``verify``
   by LNBNN (``local: pairwise``: the embedding's best ``candidates``, as before) are matched pair by
   pair, the query as it is and mirrored (the other side of a fin), against each one's best
   ``photos`` gallery photos (:func:`photoid.local_features.count_inliers`: RANSAC with scale and
   orientation checks); a candidate's evidence is its largest inlier count. Keypoints come from the
   local-features stage's store, computed once per photo; the pairs run in parallel across
   ``workers`` processes.
4. **Fusion.** A logistic model turns the embedding similarity and its rank among the query's
   candidates (as 1/rank), and each kind of local evidence read against the query's own candidates
   (above their median; the leader's lead over the next), into P(same individual). Its
   coefficients are bounded at zero or above (:class:`MonotoneLogistic`), so a candidate's
   probability never falls when its similarity, LNBNN score or inlier count grows. It is fitted on
   the CV queries only, never on test.
5. **New individual.** The ``new_individual`` threshold is tuned on the fused probabilities, and
   isotonic regression gives P(new individual) from the best candidate's probability (the lower
   it is, the likelier new).

The CV figures are honest: every CV query's probabilities come from models fitted on the other CV
queries (``calibration_folds``-fold cross-fitting); test queries get the models fitted on all of them.
``score: inliers`` ranks by the local-feature evidence alone (the "SIFT only" row; ties broken at
random, not by the embedding).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from photoid.catalogue_match import CatalogueConfig, CatalogueIndex, scores_for_candidates
from photoid.errors import DataError
from photoid.local_features import MatchConfig, count_inliers, open_stores
from photoid.metrics import NEW_INDIVIDUAL, map_at_k
from photoid.retrieval import Candidates

if TYPE_CHECKING:  # knn ranks; this module re-ranks what it ranked
    from photoid.ranking import RankResult

SCORES = ("fused", "inliers")
LOCAL_MATCHING = ("catalogue", "pairwise")
POOL_MIN_PAIRS = 1000  # fewer pairs are verified in this process: a pool of spawned workers takes seconds to start


@dataclass(frozen=True)
class RerankConfig:
    """params.yaml's rerank section (the values live there)."""

    candidates: int  # individuals of the embedding's shortlist that are verified (0: all it holds)
    photos: int  # gallery photos verified per candidate (0: all the neighbour search found)
    verify: int  # catalogue: RANSAC verifies each query's best ``verify`` individuals by similarity and by LNBNN
    score: str  # fused: embedding + local features | inliers: local features alone
    calibration_folds: int  # cross-fitting of the CV probabilities
    seed: int
    workers: int
    local: str  # catalogue: LNBNN votes over every gallery keypoint | pairwise: RANSAC inliers of the shortlist's photos
    match: MatchConfig
    catalogue: CatalogueConfig

    def __post_init__(self):
        if self.score not in SCORES:
            raise DataError(f"rerank.score takes {' or '.join(SCORES)}, got {self.score!r}")
        if self.local not in LOCAL_MATCHING:
            raise DataError(f"rerank.local takes {' or '.join(LOCAL_MATCHING)}, got {self.local!r}")
        if self.candidates and self.candidates < 5:
            raise DataError(f"rerank.candidates must be 0 (all) or at least 5 (the five answers), got {self.candidates}")
        if self.verify < 0:
            raise DataError(f"rerank.verify must be 0 (no RANSAC) or more, got {self.verify}")
        if self.calibration_folds < 2:
            raise DataError(f"rerank.calibration_folds must be at least 2, got {self.calibration_folds}")


def rerank_config(params) -> RerankConfig:
    """params.yaml's rerank section as knn-rank and pseudo-label read it (:func:`photoid.params.load_params`)."""
    return params.build(RerankConfig, "rerank", match=params.build(MatchConfig, "rerank"),
                        catalogue=params.build(CatalogueConfig, "rerank"))


def shortlisted_search(cfg: RerankConfig, search, split):
    """(Shortlist, Search) of a ranking to be re-ranked, as knn-rank and pseudo-label rank: each query
    keeps ``cfg.candidates`` individuals (0: every individual of the split table ``split``) with their best
    ``cfg.photos`` gallery photos (0: all), and the search finds enough neighbours for them (an image and
    its mirror are two entries; with all candidates or all photos, the whole gallery)."""
    from dataclasses import replace

    from photoid.ranking import Shortlist

    if cfg.local == "catalogue":  # every individual scored by the catalogue (0), or the embedding's best few
        return Shortlist(cfg.candidates, cfg.photos), search
    width = cfg.candidates or int(split["individual"].nunique())
    if not (cfg.candidates and cfg.photos):
        return Shortlist(width, cfg.photos), replace(search, neighbours=len(split) * 2)
    return Shortlist(width, cfg.photos), replace(search, neighbours=max(search.neighbours, 4 * width * cfg.photos))


# ------------------------------------------------------------------------------------------- pairs

_STORE = None
_MATCH: MatchConfig | None = None


def _init_worker(store_dirs: list[str], match: MatchConfig, single_thread: bool = False) -> None:
    global _STORE, _MATCH
    _STORE, _MATCH = open_stores(store_dirs), match
    if single_thread:  # one process per core: threads inside each would only fight over the cores
        import cv2
        from threadpoolctl import threadpool_limits

        cv2.setNumThreads(1)
        threadpool_limits(1)


def _verify(pair: tuple[str, str]) -> int:
    query, photo = pair
    gallery = _STORE.get(photo)
    return max(count_inliers(_STORE.get(query), gallery, _MATCH),
               count_inliers(_STORE.get(query, flipped=True), gallery, _MATCH))


def verify_pairs(pairs: list[tuple[str, str]], store_dir: Path | list[Path], match: MatchConfig, workers: int = 1,
                 progress: bool = True, verified: dict[tuple[str, str], int] | None = None) -> dict[tuple[str, str], int]:
    """Inlier count of each (query image_id, gallery image_id) pair: the better of the query crop and its
    mirror image against the gallery crop. ``store_dir``: a keypoint store, or several read as one.
    ``verified``: counts of pairs verified before (with the same stores and ``match``), taken as they are."""
    verified = verified or {}
    known = {p: verified[p] for p in pairs if p in verified}
    unique = [p for p in dict.fromkeys(pairs) if p not in known]
    if not unique:
        return known
    store_dirs = [str(d) for d in ([store_dir] if isinstance(store_dir, (str, Path)) else store_dir)]
    bar = dict(total=len(unique), desc="re-rank: verifying pairs", unit="pair", disable=not progress, mininterval=2)
    if workers > 1 and len(unique) > POOL_MIN_PAIRS:
        from multiprocessing import get_context

        with get_context("spawn").Pool(workers, _init_worker, (store_dirs, match, True)) as pool:
            counts = list(tqdm(pool.imap(_verify, unique, chunksize=64), **bar))
    else:
        _init_worker(store_dirs, match)
        counts = [_verify(p) for p in tqdm(unique, **bar)]
    return {**known, **dict(zip(unique, counts))}


def shortlist_pairs(query_ids, labels: np.ndarray, photos: list[list[list[int]]], gallery_ids: np.ndarray,
                    n_candidates: int, n_photos: int, columns: list | None = None) -> list[tuple[int, int, str, str]]:
    """(query row, candidate column, query image_id, gallery image_id) of every pair to verify: each
    query's first ``n_candidates`` candidates (0: all), or the candidate columns ``columns[i]`` of query i."""
    out = []
    for i, (qid, row) in enumerate(zip(query_ids, photos)):
        for j in (range(min(n_candidates or len(row), len(row))) if columns is None else columns[i]):
            if labels[i, j] == "":
                continue
            imgs = row[j]
            for g in imgs[: n_photos or len(imgs)]:
                out.append((i, j, qid, gallery_ids[g]))
    return out


def verification_columns(lnbnn: np.ndarray, valid: np.ndarray, n: int) -> list[list[int]]:
    """Per query, the candidate columns RANSAC verifies: the first ``n`` (candidates come by
    similarity, best first) and the ``n`` with the highest LNBNN scores, so an animal the embedding
    ranks far down is checked when the catalogue finds it."""
    out = []
    for scores, ok in zip(lnbnn, valid):
        by_catalogue = [int(j) for j in np.argsort(-np.where(ok, scores, -np.inf), kind="stable")[:n] if ok[j]]
        out.append(sorted(set(np.flatnonzero(ok)[:n].tolist()) | set(by_catalogue)))
    return out


def inlier_matrix(pairs: list[tuple[int, int, str, str]], shape: tuple[int, int], counts: dict) -> np.ndarray:
    """Q×C: each shortlisted candidate's largest inlier count over its verified photos (0 when none), from
    :func:`shortlist_pairs` and the pairs' counts."""
    out = np.zeros(shape, np.float32)
    for i, j, qid, gid in pairs:
        out[i, j] = max(out[i, j], counts[(qid, gid)])
    return out


QUERY_BLOCK = 512  # catalogue scores are read per block of queries: a Q×I table of a large catalogue would not fit


def catalogue_evidence(ranking, store_dirs, cfg: RerankConfig, width: int) -> np.ndarray:
    """Q×width: the LNBNN score (:mod:`photoid.catalogue_match`) of each of a ranking's first ``width``
    candidates, the query's keypoints matched against every keypoint of the ranking's own gallery
    (``ranking.gallery_ids``: a CV fold's index never holds that fold's validation photos)."""
    if ranking.gallery_ids is None:
        raise ValueError("the ranking must name its gallery photos (a pooled ranking does not: score its folds)")
    store = open_stores(store_dirs)
    index = CatalogueIndex(store, ranking.gallery_ids, ranking.gallery_individuals, cfg.catalogue)
    labels = ranking.candidates.labels[:, :width]
    out = np.zeros(labels.shape, np.float32)
    for start in range(0, len(ranking.image_ids), QUERY_BLOCK):
        block = slice(start, start + QUERY_BLOCK)
        matrix = index.scores([store.get(q).descriptors for q in ranking.image_ids[block]])
        out[block] = scores_for_candidates(matrix, index.individuals, labels[block])
    return out


@dataclass
class Evidence:
    """Local evidence of each (query, candidate) of a ranking's first candidates, Q×C each: the LNBNN
    score (catalogue), RANSAC inliers and where they were counted (``verified``: False where no pair
    was verified; None: everywhere)."""

    lnbnn: np.ndarray | None
    inliers: np.ndarray | None
    verified: np.ndarray | None = None

    @staticmethod
    def concat(parts: list["Evidence"], width: int) -> "Evidence":
        """The parts' queries as one, each padded to ``width`` candidates (none there: 0, not verified)."""
        def cat(name):
            values = [getattr(p, name) for p in parts]
            if values[0] is None:
                return None
            return np.concatenate([np.pad(v, ((0, 0), (0, width - v.shape[1]))) for v in values])

        return Evidence(cat("lnbnn"), cat("inliers"), cat("verified"))

    def kinds(self) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
        """(name, Q×C values, where they were counted or None) of each kind of evidence there, LNBNN first."""
        return ([("lnbnn", self.lnbnn, None)] if self.lnbnn is not None else []) + (
            [("inliers", self.inliers, self.verified)] if self.inliers is not None else [])


def ranking_evidence(ranking, gallery_ids: np.ndarray, store_dirs, cfg: RerankConfig, width: int,
                     progress: bool = True, verified: dict | None = None) -> tuple[Evidence, dict]:
    """The local evidence of a ranking's first ``width`` candidates, as ``cfg.local`` says, and the pair
    counts it verified. ``gallery_ids``: the image_id of each row the ranking's photos point to;
    ``verified``: pair counts verified before, not verified again."""
    labels = ranking.candidates.labels[:, :width]
    lnbnn = catalogue_evidence(ranking, store_dirs, cfg, width) if cfg.local == "catalogue" else None
    if cfg.local == "catalogue" and cfg.verify == 0:
        return Evidence(lnbnn, None), {}
    if ranking.photos is None:
        raise ValueError("the ranking must keep its candidates' photos (Shortlist(photos=...))")
    columns = verification_columns(lnbnn, labels != "", cfg.verify) if lnbnn is not None else None
    pairs = shortlist_pairs(ranking.image_ids, labels, ranking.photos, gallery_ids, width, cfg.photos, columns)
    counts = verify_pairs([(q, g) for _, _, q, g in pairs], store_dirs, cfg.match, cfg.workers, progress, verified)
    inliers = inlier_matrix(pairs, labels.shape, counts)
    mask = None
    if columns is not None:
        mask = np.zeros(labels.shape, bool)
        for i, cols in enumerate(columns):
            mask[i, cols] = True
    return Evidence(lnbnn, inliers, mask), counts


# ----------------------------------------------------------------------------------------- fusion

def _ranks(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per row, 1 + the number of valid entries strictly greater (ties share the better rank)."""
    v = np.where(valid, values, -np.inf)
    return 1.0 + (v[:, None, :] > v[:, :, None]).sum(axis=2)


def pair_features(similarity: np.ndarray, inliers: np.ndarray, valid: np.ndarray, score: str = "fused") -> np.ndarray:
    """Q×C×F features of each (query, candidate), none of them falling when that candidate's own evidence
    grows. fused: similarity, log(1 + inliers above the median of the query's shortlist), 1/similarity
    rank, and log(1 + the lead in inliers of the candidate with the most over the next one; 0 for the
    others); inliers (the SIFT-only ranking): log(1 + inliers), 1/inlier rank.

    The fused kind reads inlier counts against the query's own shortlist: random matches give every
    candidate a few inliers, more for a richly textured query, so neither a raw count nor its rank tells
    a match from that floor (a count of 5 against 1 ranks first, though both are noise). An amount
    added to every candidate of a query changes none of its features."""
    if score == "inliers":
        return np.stack([np.log1p(inliers), 1.0 / _ranks(inliers, valid)], axis=-1)
    sim = np.where(valid, similarity, 0.0)
    with warnings.catch_warnings():  # a query without candidates has no median (its floor: 0)
        warnings.simplefilter("ignore", RuntimeWarning)
        floor = np.nan_to_num(np.nanmedian(np.where(valid, inliers, np.nan), axis=1, keepdims=True))
    excess = np.where(valid, np.maximum(inliers - floor, 0.0), 0.0)
    # counts are >= 0: a missing candidate counts 0; a shortlist of one leads no one
    ordered = -np.sort(-np.pad(np.where(valid, inliers, 0.0), ((0, 0), (0, 1))), axis=1)
    lead = (np.where(valid & (inliers == ordered[:, :1]), inliers - ordered[:, 1:2], 0.0) if inliers.shape[1] > 1
            else np.zeros_like(sim))
    return np.stack([sim, np.log1p(excess), 1.0 / _ranks(sim, valid), np.log1p(lead)], axis=-1)


class MonotoneLogistic:
    """Logistic regression with every coefficient >= 0 (L-BFGS-B with bounds, a small L2 penalty on
    standardised features): its probability is non-decreasing in every feature. With one class only
    it predicts that class's share."""

    def __init__(self, l2: float = 1e-3):
        self.l2 = l2
        self.coef = None
        self.intercept = 0.0

    def fit(self, x: np.ndarray, y: np.ndarray) -> "MonotoneLogistic":
        from scipy.optimize import minimize

        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if len(y) == 0:
            raise DataError("no CV candidates to fit the re-ranking calibration on: check the split (split.n_folds).")
        mean, std = x.mean(axis=0), x.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)
        z = (x - mean) / std
        share = np.clip(y.mean(), 1e-6, 1 - 1e-6)
        if y.min() == y.max():
            self.coef, self.intercept = np.zeros(x.shape[1]), float(np.log(share / (1 - share)))
            return self

        def loss(params):
            w, b = params[:-1], params[-1]
            t = z @ w + b
            p = 1.0 / (1.0 + np.exp(-t))
            value = np.mean(np.logaddexp(0.0, t) - y * t) + 0.5 * self.l2 * w @ w
            g = p - y
            return value, np.append(z.T @ g / len(y) + self.l2 * w, g.mean())

        start = np.append(np.zeros(x.shape[1]), np.log(share / (1 - share)))
        bounds = [(0.0, None)] * x.shape[1] + [(None, None)]
        res = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=bounds)
        w = res.x[:-1]
        self.coef = w / std
        self.intercept = float(res.x[-1] - (w * mean / std).sum())
        return self

    def decision(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float64) @ self.coef + self.intercept

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.decision(x)))


class NewIndividualCalibration:
    """P(new individual) from the best candidate's score: isotonic regression, non-increasing in that
    score (a query whose best candidate is more convincing is never more likely new)."""

    def fit(self, top: np.ndarray, is_new: np.ndarray) -> "NewIndividualCalibration":
        from sklearn.isotonic import IsotonicRegression

        if len(is_new) == 0:
            raise DataError("no CV queries to calibrate P(new individual) on: check the split (split.n_folds).")
        self.model = IsotonicRegression(increasing=False, out_of_bounds="clip", y_min=0.0, y_max=1.0)
        self.model.fit(np.asarray(top, np.float64), np.asarray(is_new, np.float64))
        return self

    def predict(self, top: np.ndarray) -> np.ndarray:
        top = np.asarray(top, np.float64)
        return self.model.predict(top) if len(top) else np.zeros(0)


def _best(p: np.ndarray) -> np.ndarray:
    """Each row's best finite score (-1 where there is none)."""
    p = np.where(np.isfinite(p), p, -1.0)
    return p.max(axis=1) if p.shape[1] else np.full(len(p), -1.0)


@dataclass
class Calibration:
    """The two monotone models: P(same individual | pair features) and P(new | best candidate's
    probability); ``columns``: the features P(same) reads (None: all)."""

    same: MonotoneLogistic
    new: NewIndividualCalibration
    columns: list[int] | None = None

    @staticmethod
    def fit(features: np.ndarray, valid: np.ndarray, truth_hits: np.ndarray, is_new: np.ndarray,
            columns: list[int] | None = None) -> "Calibration":
        x = features if columns is None else features[..., columns]
        same = MonotoneLogistic().fit(x[valid], truth_hits[valid])
        return Calibration(same, NewIndividualCalibration().fit(_best(_p_same(same, x, valid)), is_new), columns)

    def apply(self, features: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P(same) Q×C with -inf where no candidate, P(new) Q)."""
        p = _p_same(self.same, features if self.columns is None else features[..., self.columns], valid)
        return p, self.new.predict(_best(p))


def _p_same(model: MonotoneLogistic, features: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Q×C P(same individual) of Q×C×F features, -inf where there is no candidate."""
    p = model.predict_proba(features.reshape(-1, features.shape[-1])).reshape(valid.shape)
    return np.where(valid, p, -np.inf)


def crossfit_folds(n: int, folds: int, seed: int):
    """(fitting rows, held-out rows) of a seeded ``folds``-way split of ``n`` queries: each query is
    scored once, by a model that did not see it."""
    for held in np.array_split(np.random.default_rng(seed).permutation(n), max(1, min(folds, n))):
        yield np.setdiff1d(np.arange(n), held), held


def _sorted(labels: np.ndarray, probability: np.ndarray, rng: np.random.Generator | None) -> Candidates:
    """Candidates re-ordered by probability, best first; ties in the shortlist's order or, with ``rng``, at random."""
    order_in = np.tile(np.arange(labels.shape[1]), (len(labels), 1))
    if rng is not None:
        order_in = np.argsort(rng.random(labels.shape), axis=1)
    shuffled = np.take_along_axis(probability, order_in, axis=1)
    order = np.take_along_axis(order_in, np.argsort(-shuffled, axis=1, kind="stable"), axis=1)
    return Candidates(np.take_along_axis(labels, order, axis=1),
                      np.take_along_axis(probability, order, axis=1).astype(np.float32))


@dataclass
class Reranked:
    cv: Candidates  # CV queries: cross-fitted probabilities, best first
    test: Candidates  # test queries: the models fitted on every CV query
    cv_p_new: np.ndarray
    test_p_new: np.ndarray
    calibration: Calibration  # fitted on every CV query
    feature_names: list[str]  # of the features it reads
    features_used: str = "all"  # all | similarity | local: the part the CV queries ranked best by


def shortlist_features(cands: Candidates, evidence: "Evidence | np.ndarray", score: str):
    """(labels, valid, features) of the first C candidates of each query, C the evidence's width: the
    features of :func:`pair_features` of the first kind of evidence (LNBNN where there is, else
    inliers) and, where both are there, the inliers' own features (read against the verified
    candidates only) after them. An array is inlier counts."""
    kinds = (evidence if isinstance(evidence, Evidence) else Evidence(None, evidence)).kinds()
    c = kinds[0][1].shape[1]
    labels, sims = cands.labels[:, :c], cands.scores[:, :c].astype(np.float64)
    valid = labels != ""
    parts = []
    for k, (_, matrix, mask) in enumerate(kinds):
        x = pair_features(sims, matrix, valid if mask is None else valid & mask, score)
        parts.append(x if k == 0 or score == "inliers" else x[..., [1, 3]])  # the similarity's once
    return labels, valid, np.concatenate(parts, axis=-1)


def feature_names(evidence: "Evidence | np.ndarray", score: str) -> list[str]:
    """The names of :func:`shortlist_features`' columns."""
    kinds = (evidence if isinstance(evidence, Evidence) else Evidence(None, evidence)).kinds()
    names = []
    for k, (e, _, _) in enumerate(kinds):
        if score == "inliers":
            names += [f"log_{e}", f"inv_{e}_rank"]
        else:
            names += (["similarity", f"log_excess_{e}", "inv_similarity_rank", f"log_{e}_lead"] if k == 0
                      else [f"log_excess_{e}", f"log_{e}_lead"])
    return names


def _tie_rng(cfg: RerankConfig) -> np.random.Generator | None:
    """Ties of the inlier-only ranking are broken at random (seeded); the fused score has none to speak of."""
    return np.random.default_rng(cfg.seed + 1) if cfg.score == "inliers" else None


def rerank_candidates(cv: Candidates, cv_inliers: "Evidence | np.ndarray", cv_truth: list[str], test: Candidates,
                      test_inliers: "Evidence | np.ndarray", cfg: RerankConfig) -> Reranked:
    """Fuse the shortlists' similarities with their local evidence (:class:`Evidence`, or inlier counts;
    see the module's docstring)."""

    cv_labels, cv_valid, cv_x = shortlist_features(cv, cv_inliers, cfg.score)
    test_labels, test_valid, test_x = shortlist_features(test, test_inliers, cfg.score)
    if cv_x.shape[-1] != test_x.shape[-1]:
        raise ValueError("CV and test candidates must come with the same kinds of local evidence")
    truth = np.asarray(cv_truth, dtype=object)
    hits = (cv_labels == truth[:, None]).astype(np.float64)
    is_new = (truth == NEW_INDIVIDUAL).astype(np.float64)

    names = feature_names(cv_inliers, cfg.score)
    # The fusion must never fall below the better of its parts: where the CV queries (cross-fitted)
    # rank the known individuals better by the similarity's features alone, or by the local evidence's
    # alone, than by all of them (a small catalogue gives the fit little to learn from), that part is used.
    choices = {"all": None}
    if cfg.score == "fused":
        similarity = [i for i, n in enumerate(names) if "similarity" in n]
        choices |= {"similarity": similarity, "local": [i for i in range(len(names)) if i not in similarity]}
    known = is_new == 0
    best = None
    for choice, columns in choices.items():
        p_cv, p_new_cv = np.full(cv_labels.shape, -np.inf), np.zeros(len(cv_labels))
        for rest, held in crossfit_folds(len(cv_labels), cfg.calibration_folds, cfg.seed):
            model = Calibration.fit(cv_x[rest], cv_valid[rest], hits[rest], is_new[rest], columns)
            p_cv[held], p_new_cv[held] = model.apply(cv_x[held], cv_valid[held])
        ranked = _sorted(cv_labels, p_cv, _tie_rng(cfg))
        found = map_at_k([list(r) for r in ranked.labels[known]], list(truth[known])) if known.any() else 0.0
        if best is None or found > best[0]:  # ties keep the earlier: all the evidence first
            best = (found, choice, columns, ranked, p_new_cv)
    _, choice, columns, cv_ranked, p_new_cv = best
    full = Calibration.fit(cv_x, cv_valid, hits, is_new, columns)
    p_test, p_new_test = full.apply(test_x, test_valid)
    return Reranked(cv_ranked, _sorted(test_labels, p_test, _tie_rng(cfg)), p_new_cv, p_new_test, full,
                    names if columns is None else [names[i] for i in columns], choice)


def figures(result: Reranked) -> dict:
    """The fitted models' coefficients, for the metrics file."""
    same = result.calibration.same
    return {"same_coefficients": dict(zip(result.feature_names, map(float, same.coef))),
            "same_intercept": same.intercept, "features_used": result.features_used}


# ----------------------------------------------------------------------------------- on rankings

@dataclass
class FittedReranker:
    """What knn-rank fitted on its CV queries, to re-rank any other queries as it re-ranks the test
    photos (:func:`rerank_queries`, for photoid identify)."""

    calibration: Calibration
    cfg: RerankConfig
    width: int  # candidates verified per query


@dataclass
class RerankOutcome:
    result: RankResult  # the rankings with fused (or inlier) probabilities and the re-tuned threshold(s)
    cv_p_new: np.ndarray
    test_p_new: np.ndarray
    figures: dict
    reranker: FittedReranker
    verified: dict[tuple[str, str], int]  # inlier counts of the CV and test shortlists' pairs (rerank_queries reuses them)


def rerank_queries(ranking, gallery_ids: np.ndarray, store_dirs: list[Path], reranker: FittedReranker,
                   progress: bool = True, verified: dict[tuple[str, str], int] | None = None):
    """A :class:`photoid.ranking.Ranking` of new queries (with its shortlists' photos) re-ranked by the
    fusion knn-rank fitted, as knn-rank re-ranks its test ranking; ``gallery_ids``: the image_id of
    each row the ranking's photos point to; ``verified``: pair counts verified before (an outcome's),
    not verified again. Returns (the re-ranked ranking, P(new) of each query)."""
    from dataclasses import replace

    cfg, width = reranker.cfg, min(reranker.width, ranking.candidates.labels.shape[1])
    evidence, _ = ranking_evidence(ranking, gallery_ids, store_dirs, cfg, width, progress, verified)
    labels, valid, x = shortlist_features(ranking.candidates, evidence, cfg.score)
    p, p_new = reranker.calibration.apply(x, valid)
    return replace(ranking, candidates=_sorted(labels, p, _tie_rng(cfg))), p_new


def rerank_result(result, store_dir: Path, cfg: RerankConfig, threshold=None,
                  per_species: bool = False, min_species_queries: int = 10, progress: bool = True) -> RerankOutcome:
    """Re-rank a :class:`photoid.ranking.RankResult` whose rankings kept their shortlists' photos
    (:class:`photoid.ranking.Shortlist`); the threshold(s) are chosen again by ``threshold`` (a
    :class:`photoid.ranking.ThresholdRule`; default: tuned), on the probabilities."""
    from dataclasses import replace

    from photoid.ranking import RankResult, ThresholdRule, choose_thresholds

    def width_of(r) -> int:  # candidates fused per query: every one the ranking holds, or rerank.candidates
        return min(cfg.candidates or 10**9, r.candidates.labels.shape[1])

    ids = result.rows["image_id"].to_numpy()
    start_time, counts, parts = time.perf_counter(), {}, []
    for r in tqdm([*result.folds, result.test], desc=f"re-rank ({cfg.local})", unit="gallery", disable=not progress):
        evidence, verified = ranking_evidence(r, ids, [store_dir], cfg, width_of(r), progress, counts)
        counts.update(verified)
        parts.append(evidence)
    width = width_of(result.test)  # the test photos' gallery holds every individual: what identify answers from
    cv_inliers, test_inliers = Evidence.concat(parts[:-1], width_of(result.cv)), parts[-1]
    seconds = time.perf_counter() - start_time
    timing = {"pairs": len(counts), "queries": len(result.cv.image_ids) + len(result.test.image_ids), "seconds": seconds,
              "queries_per_second": (len(result.cv.image_ids) + len(result.test.image_ids)) / seconds if seconds else 0.0}
    fused = rerank_candidates(result.cv.candidates, cv_inliers, result.cv.truth, result.test.candidates, test_inliers, cfg)
    cv = replace(result.cv, candidates=fused.cv)
    folds, start = [], 0
    for part in result.folds:
        n = len(part.image_ids)
        folds.append(replace(part, candidates=Candidates(fused.cv.labels[start:start + n], fused.cv.scores[start:start + n])))
        start += n
    test = replace(result.test, candidates=fused.test)
    thresholds = choose_thresholds(cv, threshold or ThresholdRule(), per_species, min_species_queries, test)
    figures_ = {**figures(fused), "candidates": width, "photos": cfg.photos, "score": cfg.score, "local": cfg.local,
                **timing}
    return RerankOutcome(RankResult(folds, cv, thresholds, test, result.rows), fused.cv_p_new, fused.test_p_new, figures_,
                         FittedReranker(fused.calibration, cfg, width), counts)


def similarity_new_probability(cv: Candidates, cv_truth: list[str], test: Candidates, folds: int = 5,
                               seed: int = 0) -> tuple[np.ndarray, np.ndarray, NewIndividualCalibration]:
    """P(new individual) from the best candidate's raw score alone (:class:`NewIndividualCalibration`
    fitted on the CV queries, cross-fitted for them): what predictions carry when re-ranking is off.
    Returns (P(new) of the CV queries, of the test queries, the calibration fitted on every CV query)."""
    top_cv = _best(cv.scores.astype(np.float64))
    y = np.array([t == NEW_INDIVIDUAL for t in cv_truth], np.float64)
    p_cv = np.zeros(len(y))
    for rest, held in crossfit_folds(len(y), folds, seed):
        p_cv[held] = NewIndividualCalibration().fit(top_cv[rest], y[rest]).predict(top_cv[held])
    full = NewIndividualCalibration().fit(top_cv, y)
    return p_cv, similarity_p_new(full, test), full


def similarity_p_new(calibration: NewIndividualCalibration, candidates: Candidates) -> np.ndarray:
    """P(new individual) of queries from their best candidate's similarity (re-ranking off)."""
    return calibration.predict(_best(candidates.scores.astype(np.float64)))
