"""MAP@5 and mAP@20 on hand-computed cases; ranking and threshold search on tiny matrices."""

import numpy as np
import pytest

from photoid.errors import DataError
from photoid.metrics import NEW_INDIVIDUAL, average_precision_at_n, map_at_k
from photoid.retrieval.search import Candidates, Search, individual_candidates, neighbours
from photoid.retrieval.thresholds import predict, tune_threshold


def test_map5_hand_computed():
    preds = [["a", "b", "c", "d", "e"],  # hit at 1 → 1
             ["b", "a", "c", "d", "e"],  # hit at 2 → 1/2
             ["x", "y", "z", "w", "a"],  # hit at 5 → 1/5
             ["x", "y", "z", "w", "v"],  # miss → 0
             ["x", "x", "a"]]  # fewer than five, duplicate before the hit → rank 3 → 1/3
    assert map_at_k(preds, ["a"] * 5) == pytest.approx((1 + 1 / 2 + 1 / 5 + 0 + 1 / 3) / 5)


def test_map5_all_new_and_hit_beyond_k():
    assert map_at_k([[NEW_INDIVIDUAL, "a"]] * 3, [NEW_INDIVIDUAL] * 3) == 1.0
    assert map_at_k([["b", "c", "d", "e", "f", "a"]], ["a"]) == 0.0  # the sixth does not count


def test_map20_hand_computed():
    # relevant at ranks 1 and 3, 2 relevant in the database: (1/1 + 2/3) / 2
    assert average_precision_at_n([True, False, True, False], 2, 20) == pytest.approx((1 + 2 / 3) / 2)
    # more relevant than n: divide by n
    assert average_precision_at_n([True] * 20, 30, 20) == pytest.approx(1.0)


def test_individual_score_is_the_best_gallery_image():
    sims = np.array([[0.9, 0.8, 0.7, 0.6]])
    idx = np.array([[2, 0, 1, 3]])
    labels = np.array(["a", "a", "b", "c"])  # gallery 2 is b, 0 is a, 1 is a, 3 is c
    c = individual_candidates(sims, idx, labels, n=5)
    assert c.labels[0, :3].tolist() == ["b", "a", "c"]
    assert c.scores[0, :3].tolist() == pytest.approx([0.9, 0.8, 0.6])  # a keeps its max, not its second image


def test_new_individual_goes_where_the_threshold_beats_the_next_score():
    c = Candidates(np.array([["a", "b", "c", "", ""]], dtype=object), np.array([[0.9, 0.5, 0.3, -np.inf, -np.inf]], np.float32))
    assert predict(c, 0.6) == [["a", NEW_INDIVIDUAL, "b", "c"]]
    assert predict(c, 0.95) == [[NEW_INDIVIDUAL, "a", "b", "c"]]
    assert predict(c, 0.1) == [["a", "b", "c", NEW_INDIVIDUAL]]


def test_threshold_search_finds_a_planted_threshold():
    rng = np.random.default_rng(0)
    # known queries score ~U(0.6, 1) for their individual; new ones top out ~U(0.1, 0.5)
    n = 200
    is_new = rng.random(n) < 0.4
    top = np.where(is_new, rng.uniform(0.1, 0.5, n), rng.uniform(0.6, 1.0, n))
    labels = np.array([[f"i{q}", "x", "y", "z", "w"] for q in range(n)], dtype=object)
    scores = np.stack([top, top - 0.05, top - 0.1, top - 0.15, top - 0.2], axis=1).astype(np.float32)
    truth = [NEW_INDIVIDUAL if new else f"i{q}" for q, new in enumerate(is_new)]
    t, score = tune_threshold(Candidates(labels, scores), truth)
    # perfect exactly when every new query's best score is below t and every known one's is not
    assert top[is_new].max() < t <= top[~is_new].min() and score == pytest.approx(1.0)
    t_grid, _ = tune_threshold(Candidates(labels, scores), truth, grid=np.arange(0, 1.0001, 0.01))
    assert 0.5 <= t_grid <= 0.6 + 1e-9


def test_neighbours_are_cosine_best_first():
    g = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    sims, idx = neighbours(np.array([[2, 0.1]], np.float32), g, 3)
    assert idx[0].tolist() == [0, 2, 1] and sims[0, 0] == pytest.approx(0.99875, abs=1e-4)


def test_vectorised_threshold_search_equals_predict_then_map5():
    """map_for_thresholds must score every threshold exactly as predict + map_at_k would."""
    from photoid.retrieval.thresholds import map_for_thresholds, threshold_grid

    rng = np.random.default_rng(1)
    q, pool = 60, ["a", "b", "c", "d", "e", "f", "g"]
    labels = np.array([rng.choice(pool, 5, replace=False) for _ in range(q)], dtype=object)
    labels[:5, 3:] = ""  # fewer than five known candidates
    scores = -np.sort(-rng.uniform(0, 1, (q, 5)), axis=1).astype(np.float32)
    scores[labels == ""] = -np.inf
    truth = [rng.choice(pool + [NEW_INDIVIDUAL] * 3) for _ in range(q)]
    cands = Candidates(labels, scores)
    grid = threshold_grid(cands)
    fast = map_for_thresholds(cands, truth, grid)
    slow = [map_at_k(predict(cands, float(t)), truth) for t in grid]
    assert np.allclose(fast, slow)


def test_a_score_equal_to_the_threshold_stays_known_and_tied_individuals_keep_their_order():
    sims = np.array([[0.7, 0.7, 0.5]])
    idx = np.array([[0, 1, 2]])
    c = individual_candidates(sims, idx, np.array(["a", "b", "c"]), n=5)
    assert c.labels[0, :3].tolist() == ["a", "b", "c"]  # a tie keeps the neighbour order
    assert predict(c, 0.7) == [["a", "b", NEW_INDIVIDUAL, "c"]]


def test_per_species_thresholds_find_each_planted_threshold():
    from photoid.retrieval.thresholds import tune_species_thresholds

    rng = np.random.default_rng(2)
    n = 300
    species = np.where(np.arange(n) % 2 == 0, "beluga", "humpback")
    is_new = rng.random(n) < 0.4
    cut = np.where(species == "beluga", 0.3, 0.7)  # belugas score lower overall
    top = np.where(is_new, cut - rng.uniform(0.02, 0.2, n), cut + rng.uniform(0.02, 0.2, n))
    labels = np.array([[f"i{q}", "x", "y", "z", "w"] for q in range(n)], dtype=object)
    scores = np.stack([top - 0.01 * j for j in range(5)], axis=1).astype(np.float32)
    truth = [NEW_INDIVIDUAL if new else f"i{q}" for q, new in enumerate(is_new)]
    overall, per = tune_species_thresholds(Candidates(labels, scores), truth, species, min_queries=10)
    assert abs(per["beluga"] - 0.3) <= 0.021 and abs(per["humpback"] - 0.7) <= 0.021
    thresholds = np.array([per[s] for s in species])
    assert map_at_k(predict(Candidates(labels, scores), thresholds), truth) == pytest.approx(1.0)
    assert map_at_k(predict(Candidates(labels, scores), overall), truth) < 1.0  # one threshold cannot do it


def test_fold_ensemble_inner_product_is_the_mean_of_the_folds_cosines_then_individual_max():
    from photoid.retrieval.search import fold_ensemble, l2_normalise

    rng = np.random.default_rng(3)
    q = [rng.normal(size=(2, 4)) for _ in range(3)]  # 3 folds, 2 queries, 4-d
    g = [rng.normal(size=(5, 4)) for _ in range(3)]  # 5 gallery images
    mean_cos = np.mean([l2_normalise(a) @ l2_normalise(b).T for a, b in zip(q, g)], axis=0)
    assert np.allclose(fold_ensemble(q) @ fold_ensemble(g).T, mean_cos, atol=1e-6)
    sims, idx = neighbours(fold_ensemble(q), fold_ensemble(g), 5)
    assert np.allclose(sims, -np.sort(-mean_cos, axis=1), atol=1e-5)
    labels = np.array(["a", "a", "b", "b", "c"])
    c = individual_candidates(sims, idx, labels, n=5)
    for i in range(2):
        expected = {lab: mean_cos[i, labels == lab].max() for lab in "abc"}
        assert dict(zip(c.labels[i, :3], c.scores[i, :3])) == pytest.approx(expected, abs=1e-5)


def test_faiss_neighbours_match_brute_force():
    from photoid.retrieval.search import l2_normalise

    rng = np.random.default_rng(4)
    g, q = rng.normal(size=(500, 32)).astype(np.float32), rng.normal(size=(20, 32)).astype(np.float32)
    sims, idx = neighbours(q, g, 10)
    brute = l2_normalise(q) @ l2_normalise(g).T
    assert (idx == np.argsort(-brute, axis=1)[:, :10]).all()
    assert np.allclose(sims, np.take_along_axis(brute, idx, axis=1), atol=1e-5)
    assert neighbours(q[:0], g, 10)[0].shape == (0, 10)  # no queries: empty, not an error


def test_new_individual_precision_recall_and_image_ranking():
    from photoid.retrieval.search import ranked_images
    from photoid.retrieval.thresholds import new_individual_precision_recall

    preds = [[NEW_INDIVIDUAL, "a"], [NEW_INDIVIDUAL, "b"], ["a", NEW_INDIVIDUAL], ["b"]]
    truth = [NEW_INDIVIDUAL, "b", NEW_INDIVIDUAL, "b"]
    assert new_individual_precision_recall(preds, truth) == (0.5, 0.5)  # 1 of 2 said-new right; 1 of 2 new found
    # an image and its mirror (same owner) count once in the image ranking
    idx = np.array([[0, 3, 1, 2]])
    owners = np.array([10, 11, 12, 10])
    labels = np.array(["a", "b", "c", "a"])
    assert [list(map(str, r)) for r in ranked_images(idx, owners, labels, n=20)] == [["a", "b", "c"]]


def test_metrics_files_are_strict_json_with_null_for_a_missing_number(tmp_path):
    """A metric that has no value (the train loss of kept starting weights is NaN) is written as null:
    a bare NaN token is not JSON, and strict readers refuse the whole file."""
    import json

    from photoid.io import write_json

    path = tmp_path / "m.json"
    write_json({"loss": float("nan"), "gain": np.float32("inf"), "per_fold": [np.float64(0.5), np.nan],
                "nested": {"x": np.float32(0.25)}}, path)

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    assert json.loads(path.read_text(), parse_constant=refuse) == {
        "loss": None, "gain": None, "per_fold": [0.5, None], "nested": {"x": 0.25}}


def _clustered(n, centres, rng, noise=0.15):
    x = centres[rng.integers(0, len(centres), n)] + noise * rng.standard_normal((n, centres.shape[1]))
    return x.astype(np.float32)


def test_ivf_search_finds_what_the_exact_search_finds_and_never_leaves_an_empty_slot():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((200, 32))
    gallery, queries = _clustered(8000, centres, rng), _clustered(300, centres, rng)
    exact_s, exact_i = neighbours(queries, gallery, 10)
    every_list = neighbours(queries, gallery, Search(10, "ivf", 50, 50, 0.0))  # all scanned: exact
    assert np.allclose(every_list[0], exact_s, atol=1e-5)
    s, i = neighbours(queries, gallery, Search(10, "ivf", 50, 3, 0.0))
    recall5 = np.mean([len(set(a[:5]) & set(b[:5])) / 5 for a, b in zip(i, exact_i)])
    assert 0.9 < recall5 <= 1 and (np.diff(s, axis=1) <= 1e-6).all()
    # more neighbours than the scanned lists hold: faiss pads with -1; those rows are searched exactly
    s, i = neighbours(queries[:5], gallery, Search(1000, "ivf", 50, 1, 0.0))
    assert (i >= 0).all() and i.shape == (5, 1000)
    assert np.allclose(s, neighbours(queries[:5], gallery, 1000)[0], atol=1e-5)


def test_an_unknown_search_index_names_the_param():
    with pytest.raises(DataError, match="knn.index is 'hnsw': use one of flat, ivf"):
        Search(10, "hnsw", 0, 0, 0.0)


def test_map5_loss_is_split_between_the_ranking_and_the_new_individual_threshold():
    from photoid.retrieval.evaluation import Ranking, scores
    from photoid.retrieval.thresholds import Thresholds

    new = NEW_INDIVIDUAL
    # q0 A found first; q1 new, but A scores 0.6; q2 B only second, under A's 0.7; q3 new, weak scores
    cands = Candidates(np.array([["A", "B"], ["A", "B"], ["A", "B"], ["B", "A"]], dtype=object),
                       np.array([[0.9, 0.5], [0.6, 0.2], [0.7, 0.3], [0.4, 0.1]], np.float32))
    r = Ranking(np.array(["q0", "q1", "q2", "q3"]), cands, np.array(["s"] * 4), [["A"], ["A"], ["A"], ["B"]],
                {"A": 1, "B": 1}).set_truth(["A", "q1_animal", "B", "q3_animal"])
    assert r.truth == ["A", new, "B", new]
    out = scores(r, Thresholds(0.55))
    # at 0.55: q0 A first (1), q1 A then new (1/2), q2 A, new, B (1/3), q3 new first (1)
    assert out["map5"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1) / 4)
    # told which are new: q1, q3 score 1; q0 finds A first (1), q2 finds B second (1/2)
    assert out["map5_new_told"] == pytest.approx((1 + 1 + 1 + 1 / 2) / 4)
    # the best single threshold lies in (0.6, 0.9]: q0 1, q1 1, q2 1/3 (new before B), q3 1
    assert out["map5_hindsight_threshold"] == pytest.approx((1 + 1 + 1 / 3 + 1) / 4)
    assert out["map5"] <= out["map5_hindsight_threshold"] <= out["map5_new_told"]


def test_query_expansion_searches_again_with_the_two_best_gallery_entries_added():
    """A photo of A that the query itself ranks below one of B is found once the query's two best
    entries (both of A) pull it towards A's side: q' = q + w (g1 + g2), normalised."""
    gallery = np.array([[1.0, 0.0, 0.0], [0.95, 0.31, 0.0], [0.7, -0.71, 0.0], [0.6, 0.8, 0.0]], np.float32)
    owners = ["A", "A", "B", "A"]
    q = np.array([[0.97, -0.1, 0.2]], np.float32)
    _, plain = neighbours(q, gallery, Search(4, "flat", 0, 0, 0.0))
    assert [owners[j] for j in plain[0]] == ["A", "A", "B", "A"]
    sims, expanded = neighbours(q, gallery, Search(4, "flat", 0, 0, 1.0))
    by_hand = q + gallery[plain[0, :2]].sum(axis=0)
    by_hand /= np.linalg.norm(by_hand)
    assert expanded[0].tolist() == np.argsort(-(gallery / np.linalg.norm(gallery, axis=1, keepdims=True)) @ by_hand[0]).tolist()
    assert [owners[j] for j in expanded[0][:3]] == ["A", "A", "A"]
    with pytest.raises(DataError, match="query_expansion"):
        Search(4, "flat", 0, 0, -1.0)
