"""MAP@5 and mAP@20 on hand-computed cases; ranking and threshold search on tiny matrices."""

import numpy as np
import pytest

from photoid.metrics import NEW_INDIVIDUAL, average_precision_at_n, map_at_k, map_at_n
from photoid.retrieval import Candidates, individual_candidates, neighbours, predict, tune_threshold


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
    assert map_at_n([["a", "b", "a"], ["c"]], ["a", "z"], {"a": 2, "c": 1}, 20) == pytest.approx((1 + 2 / 3) / 2)


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
    assert 0.5 <= t <= 0.6 + 1e-9 and score == pytest.approx(1.0)


def test_neighbours_are_cosine_best_first():
    g = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    sims, idx = neighbours(np.array([[2, 0.1]], np.float32), g, 3)
    assert idx[0].tolist() == [0, 2, 1] and sims[0, 0] == pytest.approx(0.99875, abs=1e-4)
