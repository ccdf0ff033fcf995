"""Local-feature re-ranking: geometric verification, the monotone calibrated fusion, P(new) and its
calibration error, and crops that give no keypoints."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from photoid.data.demo import make_fin, render_fin, render_photo
from photoid.errors import DataError
from photoid.local_features import KeypointConfig, KeypointStore, MatchConfig, count_inliers, match_points, write_store
from photoid.local_features import detect as detect_keypoints
from photoid.metrics import NEW_INDIVIDUAL, expected_calibration_error, map_at_k, reliability_bins
from photoid.retrieval.calibration import (
    MonotoneLogistic,
    NewIndividualCalibration,
    chosen_features,
    pair_features,
    rerank_candidates,
)
from photoid.retrieval.catalogue import CatalogueConfig
from photoid.retrieval.search import Candidates
from photoid.retrieval.verification import RerankConfig, verify_pairs
from tests.structure import project_config

cv2 = pytest.importorskip("cv2")


def detect(grey):
    return detect_keypoints(grey, project_config(KeypointConfig, "local"))


def _match(**given):
    return project_config(MatchConfig, "rerank", **given)


def _rerank(**given):
    return project_config(RerankConfig, "rerank", match=_match(), catalogue=project_config(CatalogueConfig, "rerank"),
                          **given)


def _fin_crop(individual: int, photo: int, size: int = 160) -> np.ndarray:
    """A grey crop of one demo individual's fin (one photo of it), letterboxed to ``size`` as the crop stage does."""
    fin = render_fin(make_fin(np.random.default_rng([0, individual, 1]), "bottlenose_dolphin"))
    rng = np.random.default_rng([0, individual, 2, photo])
    img, box = render_photo(fin, rng, 320, 240)
    while box is None:
        img, box = render_photo(fin, rng, 320, 240)
    crop = img.crop(tuple(int(v) for v in box)).convert("L")
    scale = size / max(crop.size)
    crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))), Image.Resampling.BICUBIC)
    canvas = Image.new("L", (size, size), 0)
    canvas.paste(crop, ((size - crop.width) // 2, (size - crop.height) // 2))
    return np.maximum(np.asarray(canvas), 1)  # the fin's own pixels are never letterbox black


def _rotated(grey: np.ndarray, degrees: float, scale: float) -> np.ndarray:
    h, w = grey.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, scale)
    return cv2.warpAffine(grey, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)


def test_a_crop_and_its_rotated_rescaled_copy_share_many_inliers_two_individuals_few():
    a = _fin_crop(3, 0)
    kp = detect(a)
    same = count_inliers(kp, detect(_rotated(a, 20, 0.8)), _match())
    others = [count_inliers(kp, detect(_fin_crop(other, 0)), _match()) for other in (4, 5, 6, 7)]
    assert same >= 30, same
    assert max(others) <= 10 and same >= 4 * max(others), (same, others)


def test_the_matches_drawn_lie_where_the_transform_takes_the_query_keypoints():
    """What the review page draws: each matched query keypoint's partner sits where the rotation and
    scaling that made the copy puts it."""
    a = _fin_crop(3, 0)
    h, w = a.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 20, 0.8)
    q_xy, g_xy = match_points(detect(a), detect(_rotated(a, 20, 0.8)), _match())
    assert len(q_xy) == count_inliers(detect(a), detect(_rotated(a, 20, 0.8)), _match()) >= 30
    moved = q_xy @ m[:, :2].T + m[:, 2]
    assert np.median(np.linalg.norm(moved - g_xy, axis=1)) < 1.5  # pixels of a 160-px crop


def test_a_mirror_image_matches_only_once_mirrored_back():
    a = _fin_crop(3, 0)
    mirrored = np.ascontiguousarray(a[:, ::-1])
    assert count_inliers(detect(a), detect(np.ascontiguousarray(mirrored[:, ::-1])), _match()) >= 30
    # SIFT is not mirror-invariant: that is why every crop is also described mirrored
    assert count_inliers(detect(a), detect(mirrored), _match()) < count_inliers(detect(a), detect(a), _match()) // 3


def test_scale_beyond_the_limit_is_no_match():
    a = _fin_crop(3, 0)
    small = cv2.resize(a, None, fx=0.35, fy=0.35, interpolation=cv2.INTER_AREA)
    wide = _match(max_scale=4.0)
    assert count_inliers(detect(a), detect(small), wide) > count_inliers(detect(a), detect(small), _match(max_scale=2.0))
    assert count_inliers(detect(a), detect(small), _match(max_scale=2.0)) == 0


def _crop_store(folder, crops: dict[str, np.ndarray]):
    """Save grey photos as PNGs under ``folder`` and write their keypoint store to ``folder``/store, as
    the local-features stage does (each photo's box its whole frame, described at its own size).
    Returns (the table described, the store's figures)."""
    for name, grey in crops.items():
        Image.fromarray(grey).save(folder / f"{name}.png")
    table = photo_table(folder, crops)
    cfg = project_config(KeypointConfig, "local", long_side=max(max(g.shape) for g in crops.values()))
    return table, write_store(table, folder / "store", cfg, workers=1, progress=False)


def photo_table(folder, photos: dict[str, np.ndarray]) -> pd.DataFrame:
    """The rows write_store describes: each photo's path and width, its box the whole frame."""
    return pd.DataFrame({"image_id": list(photos), "path": [str(folder / f"{n}.png") for n in photos],
                         "width": [g.shape[1] for g in photos.values()], "height": [g.shape[0] for g in photos.values()],
                         "crop_x1": 0.0, "crop_y1": 0.0, "crop_x2": [float(g.shape[1]) for g in photos.values()],
                         "crop_y2": [float(g.shape[0]) for g in photos.values()]})


def test_a_flat_colour_crop_has_no_keypoints_and_matches_nothing(tmp_path):
    flat = np.full((160, 160), 128, np.uint8)
    kp = detect(flat)
    assert len(kp.frames) == 0 and kp.descriptors.shape == (0, 128)
    assert count_inliers(kp, detect(_fin_crop(3, 0)), _match()) == 0 and count_inliers(detect(_fin_crop(3, 0)), kp, _match()) == 0
    # through the store and the pair verification, as the stages use them
    crops, figures = _crop_store(tmp_path, {"flat": flat, "fin": _fin_crop(3, 0)})
    assert figures["crops"] == 2 and figures["crops_without_keypoints"] == 1
    # the same crops give the same bytes (DVC finds the store in its cache instead of computing it again)
    write_store(crops, tmp_path / "again", project_config(KeypointConfig, "local", long_side=160), workers=1, progress=False)
    for name in ("frames.npy", "descriptors.npy", "index.parquet", "meta.json"):
        assert (tmp_path / "store" / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    store = KeypointStore(tmp_path / "store")
    assert len(store.get("flat").frames) == 0 and len(store.get("fin", flipped=True).frames) > 20
    counts = verify_pairs([("flat", "fin"), ("fin", "fin")], tmp_path / "store", _match(), workers=1, progress=False)
    assert counts[("flat", "fin")] == 0 and counts[("fin", "fin")] > 30
    with pytest.raises(DataError, match="local-features"):
        store.get("missing")


def test_pairs_verified_before_are_taken_as_they_are_and_only_the_rest_are_verified(tmp_path):
    _crop_store(tmp_path, {"a": _fin_crop(3, 0), "b": _fin_crop(3, 1)})
    counts = verify_pairs([("a", "b"), ("a", "a")], tmp_path / "store", _match(), workers=1, progress=False)
    # every pair known: no store is opened (this one does not exist), the counts come back as they were
    assert verify_pairs([("a", "a"), ("a", "b")], tmp_path / "no-store", _match(), workers=1, progress=False,
                        verified=counts) == counts
    # a known count is used as it is (a deliberately wrong one shows it is not verified again); the rest are verified
    mixed = verify_pairs([("a", "b"), ("b", "b")], tmp_path / "store", _match(), workers=1, progress=False,
                         verified={("a", "b"): 999})
    assert mixed[("a", "b")] == 999 and mixed[("b", "b")] > 30 and counts[("a", "b")] != 999
    assert set(mixed) == {("a", "b"), ("b", "b")}


def test_root_sift_descriptors_are_unit_vectors():
    kp = detect(_fin_crop(3, 0))
    norms = np.linalg.norm(kp.descriptors.astype(np.float32) / 255.0, axis=1)
    assert np.allclose(norms, 1.0, atol=0.03)


# --------------------------------------------------------------------------------- calibration

def _synthetic_cv(n=300, c=8, seed=0, informative_inliers=True):
    """Queries whose true individual (if known) sits somewhere in an 8-long shortlist; similarity and
    inlier counts are noisy evidence of it; a third of the queries are new individuals."""
    rng = np.random.default_rng(seed)
    labels = np.array([[f"ind{q}_{j}" for j in range(c)] for q in range(n)], dtype=object)
    truth, sims, inl = [], rng.uniform(0.3, 0.7, (n, c)), rng.poisson(3, (n, c)).astype(np.float32)
    for q in range(n):
        if rng.random() < 1 / 3:
            truth.append(NEW_INDIVIDUAL)
            continue
        j = int(rng.integers(0, 3))
        truth.append(labels[q, j])
        sims[q, j] += 0.15
        if informative_inliers:
            inl[q, j] += rng.poisson(12)
    order = np.argsort(-sims, axis=1)
    return Candidates(np.take_along_axis(labels, order, 1), np.take_along_axis(sims, order, 1).astype(np.float32)), \
        np.take_along_axis(inl, order, 1), truth


def test_fused_probability_never_falls_when_similarity_or_inliers_grow():
    cands, inliers, truth = _synthetic_cv(seed=1)
    result = rerank_candidates(cands, inliers, truth, cands, inliers, _rerank(calibration_folds=3))
    model = result.calibration.same
    assert (model.coef >= 0).all()
    base_sims = np.array([[0.6, 0.55, 0.5, 0.45, 0.4]])
    base_inl = np.array([[5.0, 3.0, 2.0, 2.0, 1.0]])
    valid = np.ones_like(base_sims, bool)

    def p_first(sim, inl):
        s, i = base_sims.copy(), base_inl.copy()
        s[0, 1], i[0, 1] = sim, inl  # the second candidate's evidence varies
        return model.predict_proba(pair_features(s, i, valid)[0])[1]

    grid_sim, grid_inl = np.linspace(0.0, 1.0, 21), np.arange(0, 40, 2)
    table = np.array([[p_first(s, i) for i in grid_inl] for s in grid_sim])
    assert (np.diff(table, axis=0) >= -1e-12).all() and (np.diff(table, axis=1) >= -1e-12).all()
    assert table[-1, -1] > table[0, 0] + 0.3


def test_the_fusion_reads_one_part_alone_only_where_it_ranks_the_cv_queries_clearly_better():
    """Per-query AP@5 of the same known CV queries under each choice of features."""
    everything = np.full(20, 0.5)
    chance = everything + np.tile([0.5, -0.45], 10)  # better on average by 0.025, worse on half the queries
    clear = everything + np.repeat([0.5, 0.0], 10)  # better on half the queries, worse on none
    clearer = everything + np.repeat([0.5, 0.25], 10)
    assert chosen_features({"all": everything, "similarity": chance, "local": chance[::-1]}) == "all"
    assert chosen_features({"all": everything, "similarity": clear, "local": chance}) == "similarity"
    assert chosen_features({"all": everything, "similarity": clear, "local": clearer}) == "local"
    assert chosen_features({"all": everything, "similarity": everything.copy()}) == "all"
    assert chosen_features({"all": everything[:1], "similarity": everything[:1] + 0.5}) == "all"  # one query: no evidence


def test_on_small_catalogues_whose_local_evidence_is_noise_the_fusion_costs_new_photos_little():
    """Thirty CV queries and local evidence that is noise: the fusion is fitted on the CV queries and
    judged on six hundred other photos of the same kind, where it must not rank the known animals
    clearly below the similarity alone; with local evidence worth having it reads every feature and
    finds far more of them."""
    def known_map(labels, truth):
        known = [i for i, t in enumerate(truth) if t != NEW_INDIVIDUAL]
        return map_at_k([list(labels[i]) for i in known], [truth[i] for i in known])

    for informative in (False, True):
        for seed in range(6):
            cands, inliers, truth = _synthetic_cv(n=30, seed=seed, informative_inliers=informative)
            test, test_inliers, test_truth = _synthetic_cv(n=600, seed=1000 + seed, informative_inliers=informative)
            result = rerank_candidates(cands, inliers, truth, test, test_inliers, _rerank(calibration_folds=5))
            gain = known_map(result.test.labels, test_truth) - known_map(test.labels, test_truth)
            if informative:
                assert result.features_used == "all" and gain > 0.2
            else:
                assert gain > -0.02


def test_inliers_that_every_candidate_of_a_query_gets_change_none_of_its_features():
    """Random matches give every candidate of a richly textured query a few inliers more: that floor is
    not evidence for any of them, so the fused features (and P(same)) must not move with it."""
    sims = np.array([[0.9, 0.7, 0.6, 0.5, 0.4, 0.0]])
    inliers = np.array([[1.0, 5.0, 2.0, 3.0, 4.0, 0.0]])
    valid = np.array([[True] * 5 + [False]])
    plain = pair_features(sims, inliers, valid)
    textured = pair_features(sims, inliers + 20.0, valid)
    np.testing.assert_allclose(plain, textured)
    # only the most-matched candidate has a lead (5 over 4), and below the median nothing is in excess
    lead, excess = plain[0, :, 3], plain[0, :, 1]
    assert lead[1] == pytest.approx(np.log1p(1.0)) and (np.delete(lead, 1) == 0).all()
    assert excess[0] == 0 and excess[2] == 0 and excess[1] == pytest.approx(np.log1p(2.0))
    assert (plain[0, 5, [1, 3]] == 0).all()  # no candidate: no inlier evidence
    assert np.isfinite(pair_features(sims[:, :1], inliers[:, :1], valid[:, :1])).all()  # one candidate leads no one


def test_a_noise_floor_that_varies_from_query_to_query_does_not_outrank_the_embedding():
    """Half the queries match anything with about 8 inliers more: read against each query's shortlist,
    the inliers lift the true individual in both halves, textured or not."""
    cands, inliers, truth = _synthetic_cv(seed=5)
    rng = np.random.default_rng(5)
    textured = rng.random(len(truth)) < 0.5
    inliers = inliers + np.where(textured[:, None], rng.poisson(8, inliers.shape), 0).astype(np.float32)
    result = rerank_candidates(cands, inliers, truth, cands, inliers, _rerank(calibration_folds=5))
    known = np.array([t != NEW_INDIVIDUAL for t in truth])
    for group in (textured & known, ~textured & known):
        rows = np.flatnonzero(group)
        before = np.mean([cands.labels[i, 0] == truth[i] for i in rows])
        after = np.mean([result.cv.labels[i, 0] == truth[i] for i in rows])
        assert after > before + 0.2


def test_a_feature_that_speaks_against_a_match_gets_no_weight():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    y = (x[:, 0] - 2 * x[:, 1] + rng.normal(scale=0.5, size=400) > 0).astype(float)
    model = MonotoneLogistic().fit(x, y)
    assert model.coef[0] > 0.5 and model.coef[1] == 0.0


def test_the_fusion_prior_holds_a_fit_on_few_pairs_and_yields_to_many():
    def fitted_coef(n: int, prior: float) -> float:
        rng = np.random.default_rng(n)
        x = rng.normal(size=(n, 1))
        y = (rng.random(n) < 1 / (1 + np.exp(-2 * x[:, 0]))).astype(float)
        return MonotoneLogistic(prior).fit(x, y).coef[0]

    assert fitted_coef(100, 30.0) < 0.5 * fitted_coef(100, 0.0)  # a hundred pairs: the weight is held back
    assert fitted_coef(20000, 30.0) > 0.95 * fitted_coef(20000, 0.0)  # twenty thousand: the data decide
    assert abs(fitted_coef(20000, 0.0) - 2.0) < 0.1


def test_inliers_lift_the_true_individual_that_the_embedding_ranked_second():
    cands, inliers, truth = _synthetic_cv(seed=2)
    result = rerank_candidates(cands, inliers, truth, cands, inliers, _rerank(calibration_folds=5))
    known = [i for i, t in enumerate(truth) if t != NEW_INDIVIDUAL]
    top1_before = np.mean([cands.labels[i, 0] == truth[i] for i in known])
    top1_after = np.mean([result.cv.labels[i, 0] == truth[i] for i in known])
    assert top1_after > top1_before + 0.2
    # probabilities are sorted best first and P(new) is higher for new queries
    assert (np.diff(result.cv.scores, axis=1) <= 1e-9).all()
    new = np.array([t == NEW_INDIVIDUAL for t in truth])
    assert result.cv_p_new[new].mean() > result.cv_p_new[~new].mean() + 0.3


def test_a_data_set_without_test_photos_is_re_ranked_on_cv_alone():
    cands, inliers, truth = _synthetic_cv(seed=4)
    empty = Candidates(cands.labels[:0], cands.scores[:0])
    result = rerank_candidates(cands, inliers, truth, empty, inliers[:0], _rerank(calibration_folds=3))
    assert result.test.labels.shape == (0, cands.labels.shape[1]) and len(result.test_p_new) == 0
    assert len(result.cv_p_new) == len(truth)


def test_uninformative_inliers_leave_the_embedding_order():
    cands, inliers, truth = _synthetic_cv(seed=3, informative_inliers=False)
    result = rerank_candidates(cands, inliers, truth, cands, inliers, _rerank(calibration_folds=5))
    known = [i for i, t in enumerate(truth) if t != NEW_INDIVIDUAL]
    top1_before = np.mean([cands.labels[i, 0] == truth[i] for i in known])
    top1_after = np.mean([result.cv.labels[i, 0] == truth[i] for i in known])
    assert top1_after >= top1_before - 0.05


def test_p_new_falls_as_the_best_candidate_gets_more_convincing():
    rng = np.random.default_rng(0)
    top = rng.uniform(0, 1, 500)
    is_new = (rng.uniform(0, 1, 500) > top).astype(float)  # P(new) = 1 - top
    cal = NewIndividualCalibration().fit(top, is_new)
    grid = np.linspace(0, 1, 50)
    p = cal.predict(grid)
    assert (np.diff(p) <= 1e-12).all() and p[0] > 0.8 and p[-1] < 0.2
    assert expected_calibration_error(cal.predict(top), is_new) < 0.1


def test_expected_calibration_error_by_hand():
    # bin 0.1-0.2: predicted 0.1, 0.1, observed 0 of 2 -> gap 0.1; bin 0.9-1.0: predicted 0.9 x2, observed 1 of 2 -> gap 0.4
    p, y = [0.1, 0.1, 0.9, 0.9], [0, 0, 1, 0]
    assert expected_calibration_error(p, y) == pytest.approx((2 * 0.1 + 2 * 0.4) / 4)
    bins = reliability_bins(p, y)
    assert [b["count"] for b in bins] == [2, 2] and bins[1]["observed"] == 0.5


def test_bad_settings_are_clear_errors():
    with pytest.raises(DataError, match="rerank.score"):
        _rerank(score="cosine")
    with pytest.raises(DataError, match="at least 5"):
        _rerank(candidates=3)


def test_test_photos_are_fused_over_more_candidates_than_a_cv_fold_holds():
    """A CV fold's gallery lacks its own validation individuals, so its queries have fewer candidates
    than the test photos, whose gallery holds every individual: the fusion fitted on CV ranks them
    all, by LNBNN and inliers alike."""
    from photoid.retrieval.verification import Evidence

    cands, inliers, truth = _synthetic_cv(seed=2)
    cv = Candidates(cands.labels[:, :4], cands.scores[:, :4])
    verified = np.zeros(inliers.shape, bool)
    verified[:, :2] = True
    cv_evidence = Evidence(inliers[:, :4] * 0.5, inliers[:, :4], verified[:, :4])
    result = rerank_candidates(cv, cv_evidence, truth, cands, Evidence(inliers * 0.5, inliers, verified), _rerank())
    assert result.cv.labels.shape[1] == 4 and result.test.labels.shape[1] == inliers.shape[1]
    assert len(result.feature_names) == 6 and result.test.scores.shape == inliers.shape
