"""Local evidence for a ranking's candidate individuals: LNBNN scores over the whole catalogue
(:mod:`photoid.retrieval.catalogue`) and RANSAC inliers of the query against each candidate's best
gallery photos (:func:`photoid.local_features.count_inliers`), the pairs verified in parallel."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from photoid.errors import DataError
from photoid.local_features import MatchConfig, count_inliers, match_points, open_stores
from photoid.retrieval.catalogue import CatalogueConfig, CatalogueIndex, scores_for_candidates
from photoid.retrieval.evaluation import Shortlist
from photoid.retrieval.evidence_memo import EvidenceMemo, catalogue_key

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
    calibration_prior: float  # weight of the fusion's prior on its coefficients, in candidate pairs (MonotoneLogistic)
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
        if self.calibration_prior < 0:
            raise DataError(f"rerank.calibration_prior must be 0 (no prior) or more, got {self.calibration_prior}")


def rerank_config(params) -> RerankConfig:
    """params.yaml's rerank section as knn-rank and pseudo-label read it (:func:`photoid.params.load_params`)."""
    return params.build(RerankConfig, "rerank", match=params.build(MatchConfig, "rerank"),
                        catalogue=params.build(CatalogueConfig, "rerank"))


def shortlisted_search(cfg: RerankConfig, search, split):
    """(Shortlist, Search) of a ranking to be re-ranked, as knn-rank and pseudo-label rank: each query
    keeps ``cfg.candidates`` individuals (0: every individual of the split table ``split``) with their best
    ``cfg.photos`` gallery photos (0: all), and the search finds enough neighbours for them (an image and
    its mirror are two entries; with all candidates or all photos, the whole gallery)."""
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


def catalogue_evidence(ranking, store_dirs, cfg: RerankConfig, width: int, memo: EvidenceMemo | None = None) -> np.ndarray:
    """Q×width: the LNBNN score (:mod:`photoid.retrieval.catalogue`) of each of a ranking's first ``width``
    candidates, the query's keypoints matched against every keypoint of the ranking's own gallery
    (``ranking.gallery_ids``: a CV fold's index never holds that fold's validation photos). ``memo``:
    scores computed before are read from it, new ones kept in it."""
    if ranking.gallery_ids is None:
        raise ValueError("the ranking must name its gallery photos (a pooled ranking does not: score its folds)")
    store = open_stores(store_dirs)
    catalogue = catalogue_key(ranking.gallery_ids, ranking.gallery_individuals) if memo is not None else ""
    index = None
    labels = ranking.candidates.labels[:, :width]
    out = np.zeros(labels.shape, np.float32)
    for start in range(0, len(ranking.image_ids), QUERY_BLOCK):
        block = slice(start, start + QUERY_BLOCK)
        queries = list(ranking.image_ids[block])
        held = memo.scores(catalogue, queries) if memo is not None else None
        if held is None:
            if index is None:
                index = CatalogueIndex(store, ranking.gallery_ids, ranking.gallery_individuals, cfg.catalogue)
            held = index.individuals, index.scores([store.get(q).descriptors for q in queries])
            if memo is not None:
                memo.keep_scores(catalogue, held[0], queries, held[1])
        individuals, matrix = held
        out[block] = scores_for_candidates(matrix, individuals, labels[block])
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
                     progress: bool = True, verified: dict | None = None,
                     seconds: dict | None = None, memo: EvidenceMemo | None = None) -> tuple[Evidence, dict]:
    """The local evidence of a ranking's first ``width`` candidates, as ``cfg.local`` says, and the pair
    counts it verified. ``gallery_ids``: the image_id of each row the ranking's photos point to;
    ``verified``: pair counts verified before, not verified again; ``seconds``: the time of the
    catalogue scoring and of the verification is added to its ``catalogue`` and ``verify``; ``memo``: LNBNN
    scores and pair counts computed before (by another stage), read from it, and what is new kept in it."""
    seconds = {} if seconds is None else seconds
    labels = ranking.candidates.labels[:, :width]
    start = time.perf_counter()
    lnbnn = catalogue_evidence(ranking, store_dirs, cfg, width, memo) if cfg.local == "catalogue" else None
    seconds["catalogue"] = seconds.get("catalogue", 0.0) + time.perf_counter() - start
    if cfg.local == "catalogue" and cfg.verify == 0:
        return Evidence(lnbnn, None), {}
    if ranking.photos is None:
        raise ValueError("the ranking must keep its candidates' photos (Shortlist(photos=...))")
    start = time.perf_counter()
    columns = verification_columns(lnbnn, labels != "", cfg.verify) if lnbnn is not None else None
    pairs = shortlist_pairs(ranking.image_ids, labels, ranking.photos, gallery_ids, width, cfg.photos, columns)
    counts = verify_pairs([(q, g) for _, _, q, g in pairs], store_dirs, cfg.match, cfg.workers, progress,
                          verified if memo is None else memo.verified(verified or {}))
    if memo is not None:
        memo.pairs.update(counts)
    seconds["verify"] = seconds.get("verify", 0.0) + time.perf_counter() - start
    inliers = inlier_matrix(pairs, labels.shape, counts)
    mask = None
    if columns is not None:
        mask = np.zeros(labels.shape, bool)
        for i, cols in enumerate(columns):
            mask[i, cols] = True
    return Evidence(lnbnn, inliers, mask), counts


MATCH_COLUMNS = ["image_id", "individual", "gallery_id", "flipped", "inliers", "query_side", "gallery_side",
                 "query_xy", "gallery_xy"]


def answer_matches(ranking, gallery_ids: np.ndarray, store_dirs, match: MatchConfig,
                   answers: list[list[str]]) -> pd.DataFrame:
    """Why each answer was proposed, to be drawn: for each query and each known individual among its
    ``answers``, that individual's gallery photo (of those the ranking kept for it) with the most
    verified matches, the query as it is or mirrored (``flipped``), and the matched keypoints' positions
    (``query_xy``, ``gallery_xy``: x, y pairs flattened, in each described region's pixels, whose longer
    side is ``query_side`` / ``gallery_side``). No row for an answer without kept photos."""
    store = open_stores(store_dirs)
    rows = []
    for i, (query, answer) in enumerate(zip(ranking.image_ids, answers)):
        column = {label: j for j, label in enumerate(ranking.candidates.labels[i]) if label}
        sides = {f: store.get(query, flipped=f) for f in (False, True)}
        for label in answer:
            if label not in column or ranking.photos is None:
                continue
            best = None
            for g in ranking.photos[i][column[label]]:
                gallery = store.get(gallery_ids[g])
                for flipped in (False, True):
                    q_xy, g_xy = match_points(sides[flipped], gallery, match)
                    if best is None or len(q_xy) > best["inliers"]:  # ties: the better photo by similarity, unmirrored
                        best = dict(image_id=query, individual=label, gallery_id=gallery_ids[g], flipped=flipped,
                                    inliers=len(q_xy), query_side=sides[flipped].side, gallery_side=gallery.side,
                                    query_xy=q_xy.ravel().round(1).tolist(), gallery_xy=g_xy.ravel().round(1).tolist())
            if best is not None:
                rows.append(best)
    return pd.DataFrame(rows, columns=MATCH_COLUMNS)
