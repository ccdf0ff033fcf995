"""The Ranker: how photos are answered, fitted on the CV queries, saved, and loaded to answer others.

knn-rank fits one (:meth:`Ranker.fit`: the embedding ranking, its re-ranking by local evidence, the
``new_individual`` threshold(s) and the P(new individual) calibration, all on the CV queries) and
saves it in ``models/ranker``; pseudo-label fits one the same way on the train-dolg embeddings; and
``photoid identify`` loads knn-rank's to answer new photos exactly as the test photos were answered
(:meth:`Ranker.answer`).

The saved form is versioned: ``manifest.json`` (the format and its version, the photoid version that
wrote it, the config, the thresholds, the fitted models' sizes) and ``arrays.npz`` (the fitted
models' coefficients): no pickled classes, so a renamed class never breaks a saved ranker, and a
ranker of another format stops with a message saying what to run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from photoid import __version__
from photoid.data.split import test_folds
from photoid.errors import DataError
from photoid.io import atomic_path
from photoid.local_features import MatchConfig
from photoid.retrieval.calibration import (
    Calibration,
    MonotoneLogistic,
    NewIndividualCalibration,
    similarity_new_probability,
    similarity_p_new,
)
from photoid.retrieval.catalogue import CatalogueConfig
from photoid.retrieval.evaluation import Flips, Ranking, RankResult, Shortlist, rank_sets, rank_test, rank_test_per_fold
from photoid.retrieval.evidence_memo import EvidenceMemo
from photoid.retrieval.rerank import FittedReranker, rerank_queries, rerank_result
from photoid.retrieval.search import Search
from photoid.retrieval.thresholds import ThresholdRule, Thresholds
from photoid.retrieval.verification import RerankConfig, rerank_config, shortlisted_search

FORMAT = "photoid-ranker"
FORMAT_VERSION = 2  # 2: the fusion's prior (rerank.calibration_prior)
MANIFEST, ARRAYS = "manifest.json", "arrays.npz"


@dataclass(frozen=True)
class RankerConfig:
    """How photos are ranked: params.yaml's knn and rerank sections (:meth:`from_params`)."""

    search: Search
    flips: Flips
    rule: ThresholdRule
    per_species: bool
    min_species_queries: int
    rerank: RerankConfig
    reranking: bool  # rerank.enabled: local evidence fused into P(same individual); else the similarity ranks

    READS = ("knn", "rerank")  # the params sections it is made from

    @classmethod
    def from_params(cls, params) -> "RankerConfig":
        """From loaded params (:func:`photoid.params.load_params` with :data:`READS`)."""
        return cls(params.build(Search, "knn"), Flips.parse(params.bool("knn.query_flip"), params.str("knn.gallery_flip")),
                   ThresholdRule.parse(params.str("knn.threshold")), params.bool("knn.per_species"),
                   params.int("knn.min_species_queries"), rerank_config(params), params.bool("rerank.enabled"))

    def shortlisted(self, split: pd.DataFrame) -> tuple[Shortlist, Search]:
        """The shortlist each query keeps and the search that finds it (:func:`shortlisted_search`)."""
        return shortlisted_search(self.rerank, self.search, split) if self.reranking else (Shortlist(), self.search)


@dataclass
class Fitted:
    """A ranker fitted on CV queries, with what it found on them and on the test photos."""

    ranker: "Ranker"
    result: RankResult  # CV and test, ranked and thresholded as the ranker answers
    embedding: dict  # the embedding ranking's own figures (RankResult.metrics before re-ranking)
    cv_p_new: np.ndarray  # P(new individual) of the CV queries (cross-fitted) and of the test photos
    test_p_new: np.ndarray
    rerank_figures: dict | None  # the fusion's coefficients and timing, with re-ranking on
    verified: dict  # inlier counts of the pairs verified (answer_per_fold does not verify them again)


@dataclass
class Ranker:
    """A fitted ranker: its config, the folds whose models answer and where their gallery embeddings
    are, the search and shortlist, the threshold(s), and the fitted fusion (re-ranking on) or the
    P(new individual) calibration of the similarity (re-ranking off)."""

    config: RankerConfig
    folds: list  # the folds whose models rank the photos to answer (fold "all", else every numbered fold)
    embeddings: str  # folder of the folds' embedding sets, relative to the workspace
    searched: Search
    shortlist: Shortlist
    thresholds: Thresholds
    reranker: FittedReranker | None = None
    p_new: NewIndividualCalibration | None = None

    @classmethod
    def fit(cls, config: RankerConfig, sets: list, folds: list, split: pd.DataFrame, local_features: Path,
            test_truth: pd.DataFrame | None = None, embeddings: str = "", progress: bool = True,
            memo: EvidenceMemo | None = None) -> Fitted:
        """Cross-validate the folds' embedding sets (:func:`~photoid.retrieval.evaluation.rank_sets`), rank
        the test photos, re-rank both by local evidence when ``config.reranking``, choose the threshold(s).
        ``memo``: local evidence computed before, read and added to (:mod:`photoid.retrieval.evidence_memo`)."""
        shortlist, searched = config.shortlisted(split)
        result = rank_sets(sets, folds, split, searched, threshold=config.rule, per_species=config.per_species,
                           min_species_queries=config.min_species_queries, test_truth=test_truth, flips=config.flips,
                           shortlist=shortlist)
        embedding = result.metrics()
        reranker, p_new, figures, verified = None, None, None, {}
        if config.reranking:
            outcome = rerank_result(result, local_features, config.rerank, config.rule, config.per_species,
                                    config.min_species_queries, progress, memo)
            result, cv_p_new, test_p_new = outcome.result, outcome.cv_p_new, outcome.test_p_new
            reranker, figures, verified = outcome.reranker, outcome.figures, outcome.verified
        else:
            cv_p_new, test_p_new, p_new = similarity_new_probability(
                result.cv.candidates, result.cv.truth, result.test.candidates, config.rerank.calibration_folds,
                config.rerank.seed)
        ranker = cls(config, test_folds(folds), str(embeddings), searched, shortlist, result.thresholds, reranker, p_new)
        return Fitted(ranker, result, embedding, cv_p_new, test_p_new, figures, verified)

    def answer(self, sets: list, store_dirs: list[Path] = (), progress: bool = True) -> tuple[Ranking, np.ndarray]:
        """The test rows of ``sets`` (one embedding set per fold of :attr:`folds`, each with the gallery's
        training rows) ranked against the training rows as the test photos were: (ranking, P(new) of
        each query). ``store_dirs``: keypoint stores holding every photo's keypoints (re-ranking)."""
        ranking = rank_test(sets, self.searched, self.config.flips, self.shortlist)
        if self.reranker is None:
            return ranking, similarity_p_new(self.p_new, ranking.candidates)
        return rerank_queries(ranking, sets[0].rows["image_id"].to_numpy(), list(store_dirs), self.reranker, progress)

    def answer_per_fold(self, sets: list, folds: list, split: pd.DataFrame, store_dirs: list[Path],
                        verified: dict | None = None, memo: EvidenceMemo | None = None) -> list[Ranking]:
        """The test photos ranked by each fold's model alone against every training photo but that fold's
        validation photos (:func:`~photoid.retrieval.evaluation.rank_test_per_fold`; pseudo-labels),
        re-ranked as :meth:`answer` re-ranks; ``memo`` as for :meth:`fit`."""
        per_fold = rank_test_per_fold(sets, folds, split, self.searched, self.config.flips, self.shortlist)
        if self.reranker is None:
            return per_fold
        ids = sets[0].rows["image_id"].to_numpy()
        return [rerank_queries(r, ids, list(store_dirs), self.reranker, verified=verified, memo=memo)[0]
                for r in per_fold]

    # ------------------------------------------------------------------------------- saved form

    def save(self, out_dir: Path) -> None:
        """``out_dir/manifest.json`` and ``out_dir/arrays.npz`` (written whole or not at all)."""
        arrays, models = {}, {}
        if self.reranker is not None:
            cal = self.reranker.calibration
            arrays |= {"same_coef": cal.same.coef, "new_x": cal.new.x, "new_y": cal.new.y}
            models["reranker"] = {"width": self.reranker.width, "columns": cal.columns, "same_intercept": cal.same.intercept,
                                  "same_prior": cal.same.prior}
        if self.p_new is not None:
            arrays |= {"p_new_x": self.p_new.x, "p_new_y": self.p_new.y}
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "photoid_version": __version__,
            "config": asdict(self.config), "folds": list(self.folds), "embeddings": self.embeddings,
            "searched": asdict(self.searched), "shortlist": asdict(self.shortlist), "thresholds": asdict(self.thresholds),
            **models, "arrays": {k: list(np.shape(v)) for k, v in arrays.items()},
        }
        with atomic_path(out_dir) as tmp:
            tmp.mkdir(parents=True)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
            np.savez(tmp / ARRAYS, **{k: np.asarray(v, np.float64) for k, v in arrays.items()})

    @classmethod
    def load(cls, ranker_dir: Path) -> "Ranker":
        """A ranker :meth:`save` wrote; another format (or version of it) stops with what to run."""
        ranker_dir = Path(ranker_dir)
        manifest_path = ranker_dir / MANIFEST
        redo = "run knn-rank again to write it anew (`dvc repro knn-rank`; `dvc repro` where it ran)"
        if not manifest_path.exists():
            raise DataError(f"{manifest_path} does not exist: {ranker_dir} holds no ranker of this photoid: {redo}.")
        m = json.loads(manifest_path.read_text())
        if m.get("format") != FORMAT or m.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{ranker_dir} holds a ranker of format {m.get('format')!r} version {m.get('format_version')} "
                            f"(written by photoid {m.get('photoid_version')}); this photoid ({__version__}) reads "
                            f"{FORMAT!r} version {FORMAT_VERSION}: {redo}.")
        with np.load(ranker_dir / ARRAYS) as npz:
            arrays = {k: npz[k] for k in npz.files}
        c = m["config"]
        rerank = dict(c["rerank"])
        rerank |= {"match": MatchConfig(**rerank["match"]), "catalogue": CatalogueConfig(**rerank["catalogue"])}
        config = RankerConfig(Search(**c["search"]), Flips(**c["flips"]), ThresholdRule(**c["rule"]), c["per_species"],
                              c["min_species_queries"], RerankConfig(**rerank), c["reranking"])
        reranker = None
        if "reranker" in m:
            r = m["reranker"]
            same = MonotoneLogistic(r["same_prior"])
            same.coef, same.intercept = arrays["same_coef"], float(r["same_intercept"])
            calibration = Calibration(same, NewIndividualCalibration(arrays["new_x"], arrays["new_y"]), r["columns"])
            reranker = FittedReranker(calibration, config.rerank, int(r["width"]))
        p_new = NewIndividualCalibration(arrays["p_new_x"], arrays["p_new_y"]) if "p_new_x" in arrays else None
        return cls(config, m["folds"], m["embeddings"], Search(**m["searched"]), Shortlist(**m["shortlist"]),
                   Thresholds(**m["thresholds"]), reranker, p_new)
