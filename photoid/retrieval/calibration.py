"""The fusion of the embedding similarity with the local evidence into P(same individual), and
P(new individual) from the best candidate: monotone models fitted on the CV queries only,
cross-fitted for the CV queries' own figures (see :mod:`photoid.retrieval.rerank`)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from photoid.errors import DataError
from photoid.metrics import NEW_INDIVIDUAL, average_precision_at_k
from photoid.retrieval.search import Candidates
from photoid.retrieval.verification import Evidence, RerankConfig

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
    """Logistic regression with every coefficient >= 0 (L-BFGS-B with bounds): its probability is
    non-decreasing in every feature. With one class only it predicts that class's share.

    The coefficients of the standardised features carry a Gaussian prior at 0 of weight ``prior``
    (an L2 penalty ``prior / 2 * |w|^2`` on the summed log-loss, as in L2-regularised logistic
    regression with C = 1 / prior). Its weight is fixed while the data's grows with the examples, so a
    fit on a hundred candidate pairs keeps its weights small (a few CV queries cannot fit six of them),
    one on tens of thousands lets the data decide."""

    def __init__(self, prior: float = 1.0):
        self.prior = prior
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
        l2 = self.prior / len(y)  # per example of the mean log-loss below
        share = np.clip(y.mean(), 1e-6, 1 - 1e-6)
        if y.min() == y.max():
            self.coef, self.intercept = np.zeros(x.shape[1]), float(np.log(share / (1 - share)))
            return self

        def loss(params):
            w, b = params[:-1], params[-1]
            t = z @ w + b
            p = 1.0 / (1.0 + np.exp(-t))
            value = np.mean(np.logaddexp(0.0, t) - y * t) + 0.5 * l2 * w @ w
            g = p - y
            return value, np.append(z.T @ g / len(y) + l2 * w, g.mean())

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
    score (a query whose best candidate is more convincing is never more likely new). Held as the
    fitted step function's knots (``x`` increasing, ``y``), read by linear interpolation and clipped
    at the ends, as scikit-learn's IsotonicRegression predicts."""

    def __init__(self, x: np.ndarray | None = None, y: np.ndarray | None = None):
        self.x, self.y = x, y

    def fit(self, top: np.ndarray, is_new: np.ndarray) -> "NewIndividualCalibration":
        from sklearn.isotonic import IsotonicRegression

        if len(is_new) == 0:
            raise DataError("no CV queries to calibrate P(new individual) on: check the split (split.n_folds).")
        model = IsotonicRegression(increasing=False, out_of_bounds="clip", y_min=0.0, y_max=1.0)
        model.fit(np.asarray(top, np.float64), np.asarray(is_new, np.float64))
        self.x, self.y = np.asarray(model.X_thresholds_, np.float64), np.asarray(model.y_thresholds_, np.float64)
        return self

    def predict(self, top: np.ndarray) -> np.ndarray:
        top = np.asarray(top, np.float64)
        return np.interp(top, self.x, self.y) if len(top) else np.zeros(0)


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
            columns: list[int] | None = None, prior: float = 1.0) -> "Calibration":
        x = features if columns is None else features[..., columns]
        same = MonotoneLogistic(prior).fit(x[valid], truth_hits[valid])
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
    features_used: str = "all"  # all | similarity | local: see chosen_features


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


SWITCH_STANDARD_ERRORS = 2.0


def chosen_features(ap: dict[str, np.ndarray]) -> str:
    """Which features the fusion reads, from each choice's AP@5 of the same known CV queries
    (cross-fitted; ``ap["all"]``: every feature). All of them unless another choice ranks those
    queries better by more than SWITCH_STANDARD_ERRORS standard errors of the per-query gains; then
    the choice with the largest mean gain. A catalogue of a few dozen CV queries often ranks them
    better by one part by chance, and a switch on such a gain cost the test photos more than it won: on
    the marine sample's eight splits (14 CV queries each) a gate at one standard error dropped the local
    evidence on three, and their mean known MAP@5 was 0.813 against 0.842 at two (docs/results.md)."""
    choice, best = "all", 0.0
    for name, values in ap.items():
        gain = np.asarray(values, np.float64) - np.asarray(ap["all"], np.float64)
        if name == "all" or len(gain) < 2:
            continue
        mean, standard_error = gain.mean(), gain.std(ddof=1) / np.sqrt(len(gain))
        if mean > SWITCH_STANDARD_ERRORS * standard_error and mean > best:
            choice, best = name, mean
    return choice


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
    # The fusion must not fall below the better of its parts: where the CV queries (cross-fitted) rank
    # the known individuals clearly better by the similarity's features alone, or by the local
    # evidence's alone, than by all of them (a small catalogue gives the fit little to learn from),
    # that part is used (see :func:`chosen_features`).
    choices = {"all": None}
    if cfg.score == "fused":
        similarity = [i for i, n in enumerate(names) if "similarity" in n]
        choices |= {"similarity": similarity, "local": [i for i in range(len(names)) if i not in similarity]}
    known = is_new == 0
    tried = {}
    for choice, columns in choices.items():
        p_cv, p_new_cv = np.full(cv_labels.shape, -np.inf), np.zeros(len(cv_labels))
        for rest, held in crossfit_folds(len(cv_labels), cfg.calibration_folds, cfg.seed):
            model = Calibration.fit(cv_x[rest], cv_valid[rest], hits[rest], is_new[rest], columns, cfg.calibration_prior)
            p_cv[held], p_new_cv[held] = model.apply(cv_x[held], cv_valid[held])
        ranked = _sorted(cv_labels, p_cv, _tie_rng(cfg))
        ap = np.array([average_precision_at_k(list(r), t) for r, t in zip(ranked.labels[known], truth[known])])
        tried[choice] = (ap, ranked, p_new_cv)
    choice = chosen_features({c: ap for c, (ap, _, _) in tried.items()})
    columns, (_, cv_ranked, p_new_cv) = choices[choice], tried[choice]
    full = Calibration.fit(cv_x, cv_valid, hits, is_new, columns, cfg.calibration_prior)
    p_test, p_new_test = full.apply(test_x, test_valid)
    return Reranked(cv_ranked, _sorted(test_labels, p_test, _tie_rng(cfg)), p_new_cv, p_new_test, full,
                    names if columns is None else [names[i] for i in columns], choice)


def fused_candidates(calibration: Calibration, cfg: RerankConfig, candidates: Candidates,
                     evidence: Evidence) -> tuple[Candidates, np.ndarray]:
    """Queries' candidates ranked by a fitted fusion's P(same individual) (as :func:`rerank_candidates`
    ranks the test queries), and each query's P(new individual)."""
    labels, valid, x = shortlist_features(candidates, evidence, cfg.score)
    p, p_new = calibration.apply(x, valid)
    return _sorted(labels, p, _tie_rng(cfg)), p_new


def figures(result: Reranked) -> dict:
    """The fitted models' coefficients, for the metrics file."""
    same = result.calibration.same
    return {"same_coefficients": dict(zip(result.feature_names, map(float, same.coef))),
            "same_intercept": same.intercept, "features_used": result.features_used}


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
