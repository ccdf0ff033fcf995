"""Ranking with embedding sets: cross-validation on the split, the test ranking and its submission.

What knn-rank and pseudo-label share.

- **Cross-validation.** For fold k (with fold k's model): the queries are the fold's validation
  images (its known ones plus every held-out individual's); the gallery is every other training
  image, held-out individuals excluded, individuals too rare to train on included (they are still
  known animals). The folds' candidates are pooled; the ``new_individual`` threshold is tuned on
  them — never on the test set.
- **Test.** The queries are the test images, the gallery every training image; the folds are
  ensembled by averaging their similarities (:func:`photoid.retrieval.fold_ensemble`).
- Flips (:class:`Flips`, each a param): a query is the flip-TTA mean of the crop and its mirror
  image (``query``), or the crop alone; the gallery holds each image and, with ``gallery``, its
  mirror image as a second entry; an individual scores its best entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from photoid.data.schema import TEST, TRAIN, UNKNOWN_SPECIES
from photoid.data.sources import DataError
from photoid.data.split import fold_view
from photoid.embed import EmbeddingSet
from photoid.metrics import NEW_INDIVIDUAL, average_precision_at_n, map_at_k
from photoid.retrieval import (Candidates, candidate_photos, concat_candidates, fold_ensemble, individual_candidates,
                               neighbours, new_individual_precision_recall, predict, query_truth, ranked_images,
                               tune_threshold, tune_species_thresholds)

K = 5  # five predictions per image (Happywhale)
N_MAP = 20  # mAP@20 (Where's Whale-do)


@dataclass(frozen=True)
class Flips:
    """How mirror images are used in ranking (both need embeddings made with flips)."""

    query: bool = True  # a query is the mean of its crop's and its mirror image's embeddings
    gallery: bool = True  # every gallery image is also entered as its mirror image


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

    def set_truth(self, individuals) -> "Ranking":
        self.truth = query_truth(individuals, list(self.gallery_counts))
        self.n_relevant = np.array([self.gallery_counts.get(t, 0) for t in self.truth], np.int64)
        return self

    def thresholds(self, overall: float, per_species: dict[str, float]) -> np.ndarray:
        return np.array([per_species.get(sp, overall) for sp in self.species], np.float64)


@dataclass(frozen=True)
class Shortlist:
    """How many individuals each query keeps, and whether (and how many of) their gallery photos are
    kept for re-ranking (0: every one the neighbour list found)."""

    individuals: int = K
    photos: int | None = None  # None: no photos kept


def _rank(queries: np.ndarray, query_rows: pd.DataFrame, gallery: np.ndarray, owners: np.ndarray,
          rows: pd.DataFrame, n_neighbours: int, shortlist: Shortlist = Shortlist()) -> Ranking:
    sims, idx = neighbours(queries, gallery, n_neighbours)
    labels = rows["individual"].to_numpy()[owners]
    species = rows["species"].to_numpy()[owners]
    own = query_rows["species"].to_numpy()
    top = species[idx[:, 0]] if idx.shape[1] else np.full(len(query_rows), UNKNOWN_SPECIES, dtype=object)
    gallery_rows = rows.iloc[np.unique(owners)]
    candidates = individual_candidates(sims, idx, labels, n=max(K, shortlist.individuals))
    photos = None if shortlist.photos is None else candidate_photos(idx, owners, labels, candidates, shortlist.photos)
    return Ranking(query_rows["image_id"].to_numpy(), candidates,
                   np.where(own == UNKNOWN_SPECIES, top, own), ranked_images(idx, owners, labels, N_MAP),
                   gallery_rows["individual"].value_counts().to_dict(), photos=photos)


def cross_validate(sets: list[EmbeddingSet], folds: list[int], split: pd.DataFrame, n_neighbours: int,
                   flips: Flips = Flips(), shortlist: Shortlist = Shortlist()) -> list[Ranking]:
    """The validation ranking of every fold, each with its own fold's embeddings."""
    held_out = set(split.loc[split["is_new"], "individual"])
    parts = []
    for fold, s in zip(folds, sets):
        rows = s.rows
        _, val = fold_view(split, fold)
        in_val = rows["image_id"].isin(set(val["image_id"]))
        in_gallery = (rows["part"] == TRAIN) & ~in_val & ~rows["individual"].isin(held_out)
        q = np.flatnonzero(in_val.to_numpy())
        g = np.flatnonzero(in_gallery.to_numpy())
        if len(q) == 0 or len(g) == 0:
            raise DataError(f"fold {fold} has {len(q)} validation and {len(g)} gallery images: check split.n_folds and "
                            "filter.min_samples against the data set's size.")
        gallery, owners = s.gallery(g, flips.gallery)
        r = _rank(s.queries(q, flips.query), rows.iloc[q], gallery, owners, rows, n_neighbours, shortlist)
        r.set_truth(rows["individual"].to_numpy()[q])
        r.fold = np.full(len(q), fold)
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
                   None if any(r.photos is None for r in parts) else [x for r in parts for x in r.photos])


def rank_test(sets: list[EmbeddingSet], n_neighbours: int, flips: Flips = Flips(),
              shortlist: Shortlist = Shortlist()) -> Ranking:
    """Test images against every training image, the folds' similarities averaged."""
    rows = sets[0].rows
    q = np.flatnonzero((rows["part"] == TEST).to_numpy())
    g = np.flatnonzero((rows["part"] == TRAIN).to_numpy())
    if len(g) == 0:
        raise DataError("no training images were embedded: the gallery is empty.")
    galleries = [s.gallery(g, flips.gallery) for s in sets]
    owners = galleries[0][1]
    queries = fold_ensemble([s.queries(q, flips.query) for s in sets])
    gallery = fold_ensemble([vec for vec, _ in galleries])
    return _rank(queries, rows.iloc[q], gallery, owners, rows, n_neighbours, shortlist)


def attach_truth(ranking: Ranking, truth_table: pd.DataFrame | None) -> Ranking:
    """Set the truth of a test ranking from a test-truth table (image_id, individual) when it covers every query."""
    if truth_table is None or truth_table.empty or len(ranking.image_ids) == 0:
        return ranking
    by_id = dict(zip(truth_table["image_id"], truth_table["individual"]))
    if all(i in by_id for i in ranking.image_ids):
        ranking.set_truth([by_id[i] for i in ranking.image_ids])
    return ranking


@dataclass
class Thresholds:
    overall: float
    per_species: dict[str, float] = field(default_factory=dict)
    tuned: bool = True


def choose_thresholds(cv: Ranking, fixed: float | None = None, per_species: bool = False,
                      min_species_queries: int = 10) -> Thresholds:
    """The ``new_individual`` threshold(s): ``fixed`` if given, else tuned on the CV queries for MAP@5."""
    if fixed is not None:
        return Thresholds(float(fixed), {}, tuned=False)
    if per_species:
        overall, by_species = tune_species_thresholds(cv.candidates, cv.truth, cv.species, min_species_queries, k=K)
        return Thresholds(overall, by_species)
    overall, _ = tune_threshold(cv.candidates, cv.truth, k=K)
    return Thresholds(overall)


def scores(r: Ranking, t: Thresholds) -> dict:
    """MAP@5, top-1, new_individual precision/recall, MAP@5 per species and mAP@20 of a ranking with truth."""
    preds = predict(r.candidates, r.thresholds(t.overall, t.per_species), K)
    precision, recall = new_individual_precision_recall(preds, r.truth)
    with_matches = np.flatnonzero(r.n_relevant > 0)
    species = np.asarray(r.species)
    known = [i for i, y in enumerate(r.truth) if y != NEW_INDIVIDUAL]
    ranked = predict(r.candidates, -np.inf, K)  # known individuals only, new_individual last
    return {
        "map5": map_at_k(preds, r.truth, K),
        "top1": float(np.mean([p[0] == y for p, y in zip(preds, r.truth)])) if r.truth else 0.0,
        # over every query (new ones score 0): bounded by the share of queries of known individuals
        "map5_without_new": map_at_k(ranked, r.truth, K),
        # over the queries of known individuals only: how well photoid finds a known animal
        "map5_known": map_at_k([ranked[i] for i in known], [r.truth[i] for i in known], K),
        "new_precision": precision,
        "new_recall": recall,
        "map20": float(np.mean([average_precision_at_n([x == r.truth[i] for x in r.images[i]], int(r.n_relevant[i]),
                                                       N_MAP) for i in with_matches])) if len(with_matches) else 0.0,
        "queries": len(r.truth),
        "new_queries": int(sum(y == NEW_INDIVIDUAL for y in r.truth)),
        "map5_per_species": {sp: map_at_k([p for p, m in zip(preds, species == sp) if m],
                                          [y for y, m in zip(r.truth, species == sp) if m], K)
                             for sp in sorted(set(species.tolist()))},
    }


def predictions_table(r: Ranking, t: Thresholds, p_new: np.ndarray | None = None) -> pd.DataFrame:
    """One row per query: the five predictions, the best known individual, its score and its margin
    over the second (the confidence pseudo-labelling uses), the threshold applied and, when given,
    the calibrated probability that the photo shows a new individual."""
    thresholds = r.thresholds(t.overall, t.per_species)
    preds = predict(r.candidates, thresholds, K)
    s = r.candidates.scores
    second = s[:, 1] if s.shape[1] > 1 else np.full(len(s), -np.inf)
    return pd.DataFrame({
        "image_id": r.image_ids,
        "predictions": [" ".join(p) for p in preds],
        "top_individual": r.candidates.labels[:, 0].astype(str),
        "top_score": s[:, 0].astype(np.float64),
        "margin": np.where(np.isfinite(second), s[:, 0] - second, s[:, 0]).astype(np.float64),
        "species": r.species.astype(str),
        "threshold": thresholds,
        **({} if p_new is None else {"p_new": np.asarray(p_new, np.float64)}),
    })


def submission(predictions: pd.DataFrame) -> pd.DataFrame:
    """The Happywhale submission: ``image,predictions`` with five space-separated ids."""
    return pd.DataFrame({"image": predictions["image_id"], "predictions": predictions["predictions"]})


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
        if self.test.truth is not None:
            out.update({f"test_{k}": v for k, v in scores(self.test, self.thresholds).items() if k != "queries"})
        return out


def rank_all(embeddings: Path, folds: list[int], split: pd.DataFrame, n_neighbours: int,
             fixed_threshold: float | None = None, per_species: bool = False, min_species_queries: int = 10,
             test_truth: pd.DataFrame | None = None, flips: Flips = Flips(),
             shortlist: Shortlist = Shortlist()) -> RankResult:
    """Cross-validate the folds' embedding sets under ``embeddings``, choose the threshold(s), rank the test images."""
    sets = load_fold_sets(embeddings, folds)
    parts = cross_validate(sets, folds, split, n_neighbours, flips, shortlist)
    cv = pool(parts)
    thresholds = choose_thresholds(cv, fixed_threshold, per_species, min_species_queries)
    test = attach_truth(rank_test(sets, n_neighbours, flips, shortlist), test_truth)
    return RankResult(parts, cv, thresholds, test, sets[0].rows)


def cv_figures(embeddings: Path, folds: list[int], split: pd.DataFrame, n_neighbours: int, flips: Flips = Flips(),
               fixed_threshold: float | None = None, per_species: bool = False, min_species_queries: int = 10) -> dict:
    """The CV figures of another set of embeddings (e.g. before retraining), ranked and thresholded the same way."""
    sets = load_fold_sets(embeddings, folds)
    cv = pool(cross_validate(sets, folds, split, n_neighbours, flips))
    return scores(cv, choose_thresholds(cv, fixed_threshold, per_species, min_species_queries))
