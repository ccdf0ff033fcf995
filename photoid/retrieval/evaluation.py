"""The evaluation protocol: cross-validation on the split, the test ranking, their scores.

- **Cross-validation.** For fold k (with fold k's model): the queries are the fold's validation
  images (its known ones plus every held-out individual's); the gallery is every other training
  image, held-out individuals excluded, individuals too rare to train on included (they are still
  known animals). The photos of those rare individuals are queries too, each in one fold, their
  other photos in its gallery (:func:`rare_query_folds`): they are among the hardest test cases.
  The folds' candidates are pooled; the ``new_individual`` threshold is tuned on them — never on
  the test set's truth (:class:`photoid.retrieval.thresholds.ThresholdRule`).
- **Pseudo-labels.** Test images ranked by each fold's model against every training image but
  that fold's validation images (:func:`rank_test_per_fold`).
- **Test.** The queries are the test images, the gallery every training image; the folds are
  ensembled by averaging their similarities (:func:`photoid.retrieval.search.fold_ensemble`).
- Flips (:class:`Flips`, each a param): a query is the flip-TTA mean of the crop and its mirror
  image (``query``), or the crop alone; a gallery image is that mean too (``gallery="mean"``), or
  the crop with its mirror image as a second entry (``"entries"``), or the crop alone (``"none"``);
  an individual scores its best entry.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from photoid.data.schema import TEST, TRAIN, UNKNOWN_SPECIES
from photoid.data.split import cv_folds, fold_view, parse_fold, test_folds
from photoid.embed import GALLERY_FLIPS, EmbeddingSet
from photoid.errors import DataError
from photoid.metrics import NEW_INDIVIDUAL, average_precision_at_n, map_at_k
from photoid.retrieval.search import (
    Candidates,
    Search,
    candidate_photos,
    concat_candidates,
    fold_ensemble,
    individual_candidates,
    neighbours,
    query_truth,
    ranked_images,
)
from photoid.retrieval.thresholds import (
    K,
    ThresholdRule,
    Thresholds,
    answered_new_first,
    map_for_thresholds,
    new_individual_precision_recall,
    predict,
    share_threshold,
    threshold_grid,
    tune_species_thresholds,
    tune_threshold,
)

N_MAP = 20  # mAP@20 (Where's Whale-do)


@dataclass(frozen=True)
class Flips:
    """How mirror images are used in ranking (both need embeddings made with flips)."""

    query: bool = True  # a query is the mean of its crop's and its mirror image's embeddings
    # mean: a gallery image is that mean too | entries: it is also entered as its mirror image | none: neither
    gallery: str = "mean"

    def __post_init__(self):
        if self.gallery not in GALLERY_FLIPS:
            raise DataError(f"knn.gallery_flip is {self.gallery!r}: use one of {', '.join(GALLERY_FLIPS)} "
                            "(params.yaml; true means entries, false none)")

    @classmethod
    def parse(cls, query: bool, gallery) -> "Flips":
        """From knn.query_flip and knn.gallery_flip (``true`` and ``false``, the values before ``mean``
        existed, mean ``entries`` and ``none``)."""
        g = str(gallery).strip().lower()
        return cls(bool(query), {"true": "entries", "false": "none"}.get(g, g))


def load_fold_sets(root: Path, folds: list[int]) -> list[EmbeddingSet]:
    """The embedding sets ``root/fold<k>`` of ``folds``, checked to describe the same rows."""
    if not folds:
        raise DataError("no folds given: set `folds` in params.yaml (e.g. [0]).")
    sets = [EmbeddingSet.load(Path(root) / f"fold{k}") for k in folds]
    for k, s in zip(folds[1:], sets[1:]):
        if not s.rows["image_id"].equals(sets[0].rows["image_id"]):
            raise DataError(f"{root}/fold{k} embeds other images than {root}/fold{folds[0]}: "
                            "re-run the embedding stages (`dvc repro`).")
    return sets


@dataclass
class Ranking:
    """Candidates of a set of queries, with what evaluation needs."""

    image_ids: np.ndarray
    candidates: Candidates
    species: np.ndarray  # the query's species, else that of its best gallery match
    images: list[list[str]]  # individuals of the first N_MAP distinct gallery images (mAP@20)
    gallery_counts: dict[str, int]  # gallery images per individual
    truth: list[str] | None = None  # individual, or new_individual when the gallery lacks it
    n_relevant: np.ndarray | None = None  # gallery images of the query's individual (mAP@20)
    fold: np.ndarray | None = None
    photos: list[list[list[int]]] | None = None  # per query and candidate: its gallery images (row positions), best first
    rare: np.ndarray | None = None  # CV: the query is of an individual too rare to train on (filter.min_samples)
    gallery_ids: np.ndarray | None = None  # image_id of every gallery photo searched (one ranking's; None when pooled)
    gallery_individuals: np.ndarray | None = None  # their individuals

    def set_truth(self, individuals) -> "Ranking":
        self.truth = query_truth(individuals, list(self.gallery_counts))
        self.n_relevant = np.array([self.gallery_counts.get(t, 0) for t in self.truth], np.int64)
        return self

    def thresholds(self, overall: float, per_species: dict[str, float]) -> np.ndarray:
        return np.array([per_species.get(sp, overall) for sp in self.species], np.float64)

    def reranked(self, candidates: Candidates) -> "Ranking":
        """This ranking with ``candidates`` (its own re-ordered, e.g. by a fused probability), each
        candidate keeping its gallery photos."""
        if self.photos is None:
            return replace(self, candidates=candidates)
        photos = [[dict(zip(old, kept)).get(label, []) for label in new]
                  for old, kept, new in zip(self.candidates.labels, self.photos, candidates.labels)]
        return replace(self, candidates=candidates, photos=photos)


@dataclass(frozen=True)
class Shortlist:
    """How many individuals each query keeps (0: every individual of the gallery, the whole gallery
    searched), and whether (and how many of) their gallery photos are kept for re-ranking (0: every
    one the neighbour list found)."""

    individuals: int = K
    photos: int | None = None  # None: no photos kept


def _rank(queries: np.ndarray, query_rows: pd.DataFrame, gallery: np.ndarray, owners: np.ndarray,
          rows: pd.DataFrame, search: "int | Search", shortlist: Shortlist = Shortlist()) -> Ranking:
    labels = rows["individual"].to_numpy()[owners]
    width = shortlist.individuals or len(set(labels))
    if not shortlist.individuals:  # every individual: the whole gallery searched
        search = replace(Search.of(search), neighbours=len(gallery))
    sims, idx = neighbours(queries, gallery, search)
    species = rows["species"].to_numpy()[owners]
    own = query_rows["species"].to_numpy()
    top = species[idx[:, 0]] if idx.shape[1] else np.full(len(query_rows), UNKNOWN_SPECIES, dtype=object)
    gallery_rows = rows.iloc[np.unique(owners)]
    candidates = individual_candidates(sims, idx, labels, n=max(K, width))
    photos = None if shortlist.photos is None else candidate_photos(idx, owners, labels, candidates, shortlist.photos)
    return Ranking(query_rows["image_id"].to_numpy(), candidates,
                   np.where(own == UNKNOWN_SPECIES, top, own), ranked_images(idx, owners, labels, N_MAP),
                   gallery_rows["individual"].value_counts().to_dict(), photos=photos,
                   gallery_ids=gallery_rows["image_id"].to_numpy(), gallery_individuals=gallery_rows["individual"].to_numpy())


def rare_query_folds(rows: pd.DataFrame, split: pd.DataFrame) -> pd.Series:
    """The CV fold in which each training photo of a rare individual is a query (indexed by image_id).

    Rare individuals (fewer than ``filter.min_samples`` photos: not in the split, never trained on) are
    known animals all the same, and among the hardest test cases. Each one with at least two photos
    has every photo a query in one fold (dealt round-robin over the split's folds in image order, from
    a starting fold fixed by the individual's name), its other photos staying in that fold's gallery."""
    n_folds = int(split["fold"].max()) + 1 if (split["fold"] >= 0).any() else 0
    train = rows[(rows["part"] == TRAIN) & ~rows["individual"].isin(set(split["individual"]))]
    out = {}
    if n_folds == 0:
        return pd.Series(out, dtype=np.int64)
    for ind, group in train.groupby("individual", sort=True):
        if len(group) < 2:  # a photo with no other photo of its animal would only play a new individual
            continue
        start = zlib.crc32(str(ind).encode())
        for j, image_id in enumerate(sorted(group["image_id"])):
            out[image_id] = (start + j) % n_folds
    return pd.Series(out, dtype=np.int64)


def cross_validate(sets: list[EmbeddingSet], folds: list[int], split: pd.DataFrame, search: "int | Search",
                   flips: Flips = Flips(), shortlist: Shortlist = Shortlist()) -> list[Ranking]:
    """The validation ranking of every fold, each with its own fold's embeddings; the photos of rare
    individuals are queries too (:func:`rare_query_folds`)."""
    held_out = set(split.loc[split["is_new"], "individual"])
    rare_folds = rare_query_folds(sets[0].rows, split)
    parts = []
    for fold, s in zip(folds, sets):  # every fold's set embeds the same rows (load_fold_sets checks)
        rows = s.rows
        _, val = fold_view(split, fold)
        rare = set(rare_folds.index[rare_folds.to_numpy() == fold])
        in_val = rows["image_id"].isin(set(val["image_id"]) | rare)
        in_gallery = (rows["part"] == TRAIN) & ~in_val & ~rows["individual"].isin(held_out)
        q = np.flatnonzero(in_val.to_numpy())
        g = np.flatnonzero(in_gallery.to_numpy())
        if len(q) == 0 or len(g) == 0:
            raise DataError(f"fold {fold} has {len(q)} validation and {len(g)} gallery images: check split.n_folds and "
                            "filter.min_samples against the data set's size.")
        gallery, owners = s.gallery(g, flips.gallery)
        r = _rank(s.queries(q, flips.query), rows.iloc[q], gallery, owners, rows, search, shortlist)
        r.set_truth(rows["individual"].to_numpy()[q])
        r.fold = np.full(len(q), fold)
        r.rare = rows["image_id"].iloc[q].isin(rare).to_numpy()
        parts.append(r)
    return parts


def pool(parts: list[Ranking]) -> Ranking:
    """The folds' validation rankings as one (each query keeps its own fold's truth and counts)."""
    counts: dict[str, int] = {}
    for r in parts:
        counts.update(r.gallery_counts)
    return Ranking(np.concatenate([r.image_ids for r in parts]), concat_candidates([r.candidates for r in parts]),
                   np.concatenate([r.species for r in parts]), [x for r in parts for x in r.images], counts,
                   [t for r in parts for t in r.truth], np.concatenate([r.n_relevant for r in parts]),
                   np.concatenate([r.fold for r in parts]),
                   None if any(r.photos is None for r in parts) else [x for r in parts for x in r.photos],
                   None if any(r.rare is None for r in parts) else np.concatenate([r.rare for r in parts]))


def rank_test(sets: list[EmbeddingSet], search: "int | Search", flips: Flips = Flips(),
              shortlist: Shortlist = Shortlist()) -> Ranking:
    """Test images against every training image, the folds' similarities averaged."""
    rows = sets[0].rows
    q = np.flatnonzero((rows["part"] == TEST).to_numpy())
    queries, gallery, owners = test_vectors(sets, q, flips)
    return _rank(queries, rows.iloc[q], gallery, owners, rows, search, shortlist)


def test_vectors(sets: list[EmbeddingSet], query_index: np.ndarray, flips: Flips = Flips()):
    """(queries, gallery, owners) of a test ranking: the rows ``query_index`` against every training
    image, each fold ensemble of the folds' vectors; ``owners``: the row of each gallery entry."""
    rows = sets[0].rows
    g = np.flatnonzero((rows["part"] == TRAIN).to_numpy())
    if len(g) == 0:
        raise DataError("no training images were embedded: the gallery is empty.")
    galleries = [s.gallery(g, flips.gallery) for s in sets]
    queries = fold_ensemble([s.queries(query_index, flips.query) for s in sets])
    return queries, fold_ensemble([vec for vec, _ in galleries]), galleries[0][1]


def rank_test_per_fold(sets: list[EmbeddingSet], folds: list[int], split: pd.DataFrame, search: "int | Search",
                       flips: Flips = Flips(), shortlist: Shortlist = Shortlist()) -> list[Ranking]:
    """Test images ranked by each fold's model alone against every training image except that fold's
    validation images: what pseudo-labels for fold k come from, so that no fold trains on a test photo
    labelled by an image it validates on (often a near-duplicate of one encounter)."""
    out = []
    for fold, s in zip(folds, sets):
        rows = s.rows
        _, val = fold_view(split, fold)
        q = np.flatnonzero((rows["part"] == TEST).to_numpy())
        g = np.flatnonzero(((rows["part"] == TRAIN) & ~rows["image_id"].isin(set(val["image_id"]))).to_numpy())
        if len(g) == 0:
            raise DataError(f"fold {fold} leaves no training image for its gallery: check split.n_folds.")
        gallery, owners = s.gallery(g, flips.gallery)
        r = _rank(s.queries(q, flips.query), rows.iloc[q], gallery, owners, rows, search, shortlist)
        r.fold = np.full(len(q), fold)
        out.append(r)
    return out


def attach_truth(ranking: Ranking, truth_table: pd.DataFrame | None) -> Ranking:
    """Set the truth of a test ranking from a test-truth table (image_id, individual) when it covers every query."""
    if truth_table is None or truth_table.empty or len(ranking.image_ids) == 0:
        return ranking
    by_id = dict(zip(truth_table["image_id"], truth_table["individual"]))
    if all(i in by_id for i in ranking.image_ids):
        ranking.set_truth([by_id[i] for i in ranking.image_ids])
    return ranking


def scores(r: Ranking, t: Thresholds) -> dict:
    """MAP@5, top-1, new_individual precision/recall, MAP@5 per species and mAP@20 of a ranking with truth."""
    preds = predict(r.candidates, r.thresholds(t.overall, t.per_species), K)
    precision, recall = new_individual_precision_recall(preds, r.truth)
    with_matches = np.flatnonzero(r.n_relevant > 0)
    species = np.asarray(r.species)
    known = [i for i, y in enumerate(r.truth) if y != NEW_INDIVIDUAL]
    ranked = predict(r.candidates, -np.inf, K)  # known individuals only, new_individual last
    map5_known = map_at_k([ranked[i] for i in known], [r.truth[i] for i in known], K)
    out = {
        "map5": map_at_k(preds, r.truth, K),
        "top1": float(np.mean([p[0] == y for p, y in zip(preds, r.truth)])) if r.truth else 0.0,
        # over every query (new ones score 0): bounded by the share of queries of known individuals
        "map5_without_new": map_at_k(ranked, r.truth, K),
        # over the queries of known individuals only: how well photoid finds a known animal
        "map5_known": map5_known,
        "top1_known": float(np.mean([ranked[i][0] == r.truth[i] for i in known])) if known else 0.0,
        # where MAP@5 is lost: with each query told whether its animal is new (new ones score 1, known ones
        # their rank among the known individuals: map5_known), the ranking's ceiling; and with the one
        # threshold that is best in hindsight on this set's own truth, the ceiling of any single threshold
        "map5_new_told": (len(r.truth) - len(known) + map5_known * len(known)) / len(r.truth) if r.truth else 0.0,
        "map5_hindsight_threshold": float(map_for_thresholds(r.candidates, r.truth, threshold_grid(r.candidates),
                                                             K).max()) if r.truth else 0.0,
        "new_precision": precision,
        "new_recall": recall,
        "new_first_share": float(answered_new_first(preds).mean()) if preds else 0.0,
        "map20": float(np.mean([average_precision_at_n([x == r.truth[i] for x in r.images[i]], int(r.n_relevant[i]),
                                                       N_MAP) for i in with_matches])) if len(with_matches) else 0.0,
        "queries": len(r.truth),
        "new_queries": int(sum(y == NEW_INDIVIDUAL for y in r.truth)),
        "map5_per_species": {sp: map_at_k([p for p, m in zip(preds, species == sp) if m],
                                          [y for y, m in zip(r.truth, species == sp) if m], K)
                             for sp in sorted(set(species.tolist()))},
    }
    if r.rare is not None and r.rare.any():  # individuals too rare to train on, as CV queries
        rare = np.flatnonzero(r.rare)
        out["rare_queries"] = int(len(rare))
        out["map5_rare"] = map_at_k([preds[i] for i in rare], [r.truth[i] for i in rare], K)
    return out


@dataclass
class RankResult:
    folds: list[Ranking]  # each fold's validation ranking
    cv: Ranking  # the folds' pooled
    thresholds: Thresholds
    test: Ranking
    rows: pd.DataFrame  # the embedded crops (image_id, part, individual, species, crop_path)

    def metrics(self) -> dict:
        """CV figures (``cv_*``), the threshold(s) and, where the test truth is known, the test figures."""
        cv = scores(self.cv, self.thresholds)
        out = {f"cv_{k}": v for k, v in cv.items()}
        out["cv_map5_per_fold"] = {str(int(r.fold[0])): scores(r, self.thresholds)["map5"] for r in self.folds}
        out["threshold"] = self.thresholds.overall
        out["threshold_tuned"] = self.thresholds.tuned
        if self.thresholds.per_species:
            out["threshold_per_species"] = self.thresholds.per_species
        out["test_images"] = len(self.test.image_ids)
        out["threshold_rule"] = self.thresholds.rule
        # the share of test photos answered new_individual first: known without test truth, to set beside CV's
        preds = predict(self.test.candidates, self.test.thresholds(self.thresholds.overall, self.thresholds.per_species), K)
        out["test_new_first_share"] = float(answered_new_first(preds).mean()) if preds else 0.0
        if self.test.truth is not None:
            out.update({f"test_{k}": v for k, v in scores(self.test, self.thresholds).items() if k != "queries"})
        return out


def rank_sets(sets: list[EmbeddingSet], folds: list[int], split: pd.DataFrame, search: "int | Search", *,
              threshold: ThresholdRule = ThresholdRule(), per_species: bool = False, min_species_queries: int = 10,
              test_truth: pd.DataFrame | None = None, flips: Flips = Flips(),
              shortlist: Shortlist = Shortlist()) -> RankResult:
    """Cross-validate fold sets (:func:`load_fold_sets`), rank the test images, choose the threshold(s). The numbered folds
    cross-validate; the test photos are ranked by fold ``all``'s model when it is listed (a model on
    every labelled photo), else by every numbered fold's, their similarities averaged."""
    folds = [parse_fold(f) for f in folds]
    by_fold = dict(zip(folds, sets))
    numbered = cv_folds(folds)
    parts = cross_validate([by_fold[k] for k in numbered], numbered, split, search, flips, shortlist)
    cv = pool(parts)
    test = attach_truth(rank_test([by_fold[k] for k in test_folds(folds)], search, flips, shortlist), test_truth)
    thresholds = choose_thresholds(cv, threshold, per_species, min_species_queries, test)
    return RankResult(parts, cv, thresholds, test, sets[0].rows)


def choose_thresholds(cv: Ranking, rule: ThresholdRule = ThresholdRule(), per_species: bool = False,
                      min_species_queries: int = 10, test: Ranking | None = None) -> Thresholds:
    """The ``new_individual`` threshold(s) by ``rule``: tuned on the CV queries for MAP@5 (one overall or
    one per species), a fixed number, or the score giving the test photos the share ``rule.new_share``
    of new-first answers (needs ``test``)."""
    if rule.fixed is not None:
        return Thresholds(float(rule.fixed), {}, rule=str(rule))
    if rule.new_share is not None:
        if test is None:
            raise ValueError("a new_share threshold needs the test ranking")
        if per_species:
            raise DataError("knn.threshold new_share:<r> sets one threshold for all test photos: set knn.per_species false.")
        return Thresholds(share_threshold(test.candidates, rule.new_share), {}, rule=str(rule))
    if per_species:
        overall, by_species = tune_species_thresholds(cv.candidates, cv.truth, cv.species, min_species_queries, k=K)
        return Thresholds(overall, by_species)
    overall, _ = tune_threshold(cv.candidates, cv.truth, k=K)
    return Thresholds(overall)
