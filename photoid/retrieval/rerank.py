"""Local-feature evidence for every candidate individual, fused with the embedding similarity into
a calibrated probability that ranks them.

For each query (CV and test alike):

1. **Candidates.** With ``local: catalogue`` (the default) and ``candidates: 0``, every individual of
   the query's gallery, each with its best embedding similarity; with ``candidates: n``, the
   embedding's best n.
2. **Catalogue matching** (``local: catalogue``, :mod:`photoid.retrieval.catalogue`): the query's
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
   probability never falls when its similarity, LNBNN score or inlier count grows, and carry a prior
   of fixed weight (``calibration_prior``): a few CV queries cannot pull them far. It is fitted on
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from photoid.retrieval.calibration import Calibration, figures, fused_candidates, rerank_candidates
from photoid.retrieval.evaluation import RankResult, choose_thresholds
from photoid.retrieval.evidence_memo import EvidenceMemo
from photoid.retrieval.search import Candidates
from photoid.retrieval.thresholds import ThresholdRule
from photoid.retrieval.verification import Evidence, RerankConfig, ranking_evidence

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
                   progress: bool = True, verified: dict[tuple[str, str], int] | None = None,
                   memo: EvidenceMemo | None = None):
    """A :class:`~photoid.retrieval.evaluation.Ranking` of new queries (with its shortlists' photos) re-ranked by the
    fusion knn-rank fitted, as knn-rank re-ranks its test ranking; ``gallery_ids``: the image_id of
    each row the ranking's photos point to; ``verified``: pair counts verified before (an outcome's),
    not verified again; ``memo``: as for :func:`rerank_result`. Returns (the re-ranked ranking, P(new) of each query)."""
    cfg, width = reranker.cfg, min(reranker.width, ranking.candidates.labels.shape[1])
    evidence, _ = ranking_evidence(ranking, gallery_ids, store_dirs, cfg, width, progress, verified, memo=memo)
    candidates, p_new = fused_candidates(reranker.calibration, cfg, ranking.candidates, evidence)
    return ranking.reranked(candidates), p_new


def rerank_result(result, store_dir: Path, cfg: RerankConfig, threshold=None,
                  per_species: bool = False, min_species_queries: int = 10, progress: bool = True,
                  memo: EvidenceMemo | None = None) -> RerankOutcome:
    """Re-rank a :class:`~photoid.retrieval.evaluation.RankResult` whose rankings kept their shortlists' photos
    (:class:`~photoid.retrieval.evaluation.Shortlist`); the threshold(s) are chosen again by ``threshold`` (a
    :class:`~photoid.retrieval.thresholds.ThresholdRule`; default: tuned), on the probabilities. ``memo``:
    local evidence computed before (:mod:`photoid.retrieval.evidence_memo`), read, and added to."""
    def width_of(r) -> int:  # candidates fused per query: every one the ranking holds, or rerank.candidates
        return min(cfg.candidates or 10**9, r.candidates.labels.shape[1])

    ids = result.rows["image_id"].to_numpy()
    start_time, counts, parts, part_seconds = time.perf_counter(), {}, [], {}
    for r in tqdm([*result.folds, result.test], desc=f"re-rank ({cfg.local})", unit="gallery", disable=not progress):
        evidence, verified = ranking_evidence(r, ids, [store_dir], cfg, width_of(r), progress, counts, part_seconds,
                                              memo)
        counts.update(verified)
        parts.append(evidence)
    width = width_of(result.test)  # the test photos' gallery holds every individual: what identify answers from
    cv_inliers, test_inliers = Evidence.concat(parts[:-1], width_of(result.cv)), parts[-1]
    seconds = time.perf_counter() - start_time
    timing = {"pairs": len(counts), "queries": len(result.cv.image_ids) + len(result.test.image_ids), "seconds": seconds,
              "queries_per_second": (len(result.cv.image_ids) + len(result.test.image_ids)) / seconds if seconds else 0.0}
    start_time = time.perf_counter()
    fused = rerank_candidates(result.cv.candidates, cv_inliers, result.cv.truth, result.test.candidates, test_inliers, cfg)
    cv = result.cv.reranked(fused.cv)
    folds, start = [], 0
    for part in result.folds:
        n = len(part.image_ids)
        folds.append(part.reranked(Candidates(fused.cv.labels[start:start + n], fused.cv.scores[start:start + n])))
        start += n
    test = result.test.reranked(fused.test)
    thresholds = choose_thresholds(cv, threshold or ThresholdRule(), per_species, min_species_queries, test)
    # where the time goes: the local scores over the catalogue, RANSAC, the fusion (with the thresholds)
    timing.update({f"{part}_seconds": s for part, s in part_seconds.items()},
                  fusion_seconds=time.perf_counter() - start_time)
    figures_ = {**figures(fused), "candidates": width, "photos": cfg.photos, "score": cfg.score, "local": cfg.local,
                **timing}
    return RerankOutcome(RankResult(folds, cv, thresholds, test, result.rows), fused.cv_p_new, fused.test_p_new, figures_,
                         FittedReranker(fused.calibration, cfg, width), counts)
