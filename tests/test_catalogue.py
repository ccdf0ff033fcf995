"""Catalogue-wide local matching: LNBNN votes over every gallery keypoint, keypoints described at the
photo's own resolution, and CV indexes that never hold a fold's own validation photos."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from photoid.local_features import DESCRIPTOR_DIM, KeypointConfig, Keypoints, write_store
from photoid.retrieval.catalogue import CatalogueConfig, CatalogueIndex, scores_for_candidates
from tests.structure import project_config

pytest.importorskip("cv2")
pytest.importorskip("faiss")


class FakeStore:
    """A keypoint store of given descriptors (unit float vectors); mirrored photos have no keypoints."""

    def __init__(self, photos: dict[str, list[np.ndarray]]):
        self.photos = photos

    def get(self, image_id, flipped=False):
        d = [] if flipped else self.photos[image_id]
        desc = np.array([np.round(np.asarray(v) * 255) for v in d], np.uint8).reshape(-1, DESCRIPTOR_DIM)
        return Keypoints(np.zeros((len(desc), 4), np.float32), desc)

    def descriptor_slice(self, image_id, flipped=False):
        d = self.get(image_id, flipped).descriptors
        return d, 0, len(d)


def _unit_at(distance: float, axis: int) -> np.ndarray:
    """A unit vector at L2 ``distance`` from e0, leaning towards axis ``axis``."""
    cos = 1.0 - distance**2 / 2.0
    v = np.zeros(DESCRIPTOR_DIM)
    v[0], v[axis] = cos, np.sqrt(1.0 - cos**2)
    return v


def test_a_keypoint_close_to_one_individual_votes_for_it_alone_and_shared_texture_votes_for_no_one():
    e0 = _unit_at(0.0, 1)
    photos = {"a1": [_unit_at(0.2, 1), _unit_at(0.3, 2)],  # individual A: two keypoints near the query's first
              "b1": [_unit_at(0.8, 3)], "c1": [_unit_at(0.8, 4)], "d1": [_unit_at(0.8, 5)], "e1": [_unit_at(0.8, 6)]}
    owners = {"a1": "A", "b1": "B", "c1": "C", "d1": "D", "e1": "E"}
    index = CatalogueIndex(FakeStore(photos), list(photos), [owners[p] for p in photos], CatalogueConfig(4, "individual", 0, 1))
    # neighbours of e0: A at 0.2 and 0.3, then B..E at 0.8; k = 4 votes, measured against the 5th (0.8)
    scores = dict(zip(index.individuals, index.scores([FakeStore({"q": [e0]}).get("q").descriptors])[0]))
    assert scores["A"] == pytest.approx(0.8 - 0.2, abs=0.01)  # its best keypoint's vote, once
    assert scores["B"] == pytest.approx(0.0, abs=0.01) and scores["C"] == scores["D"] == scores["E"] == 0.0
    # texture every individual shares: all at the same distance, no individual gains
    flat = {p: [_unit_at(0.5, 10 + i)] for i, p in enumerate(photos)}
    index = CatalogueIndex(FakeStore(flat), list(flat), [owners[p] for p in flat], CatalogueConfig(4, "individual", 0, 1))
    assert np.abs(index.scores([FakeStore({"q": [e0]}).get("q").descriptors])).max() < 0.01
    # a query without keypoints scores nothing; the candidates' columns read by name, unknown ones 0
    assert not index.scores([np.zeros((0, DESCRIPTOR_DIM), np.uint8)]).any()
    picked = scores_for_candidates(np.array([[1.0, 2.0, 3.0, 4.0, 5.0]]), index.individuals,
                                   np.array([["C", "", "Z", "A"]], dtype=object))
    assert picked.tolist() == [[3.0, 0.0, 0.0, 1.0]]


def test_the_approximate_index_finds_what_the_exact_one_finds_on_a_clear_match():
    rng = np.random.default_rng(0)
    photos = {f"p{i}": list(np.abs(rng.normal(size=(40, DESCRIPTOR_DIM)))) for i in range(60)}
    photos = {k: [v / np.linalg.norm(v) for v in vs] for k, vs in photos.items()}
    owners = [f"ind{i // 2}" for i in range(60)]
    query = FakeStore({"q": photos["p7"][:30]}).get("q").descriptors
    exact = CatalogueIndex(FakeStore(photos), list(photos), owners, CatalogueConfig(4, "individual", 0, 1))
    approximate = CatalogueIndex(FakeStore(photos), list(photos), owners, CatalogueConfig(4, "individual", 100, 8))
    best = [ix.individuals[np.argmax(ix.scores([query])[0])] for ix in (exact, approximate)]
    assert best == ["ind3", "ind3"]


def _photo(tmp_path, name: str) -> pd.DataFrame:
    """A large camera-like photo with marks at every scale (blurred noise), and its row as write_store
    reads it: the box a region of 900 x 600 pixels."""
    import cv2

    rng = np.random.default_rng(0)
    img = np.zeros((1200, 1600), np.float32)
    for sigma in (1.5, 4.0, 12.0):
        img += cv2.GaussianBlur(rng.normal(size=img.shape).astype(np.float32), (0, 0), sigma) * sigma
    img = np.clip(128 + 40 * img / img.std(), 1, 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / f"{name}.png")
    return pd.DataFrame({"image_id": [name], "path": [str(tmp_path / f"{name}.png")], "width": [1600], "height": [1200],
                         "crop_x1": [300.0], "crop_y1": [200.0], "crop_x2": [1200.0], "crop_y2": [800.0]})


def test_a_region_described_at_a_larger_size_gives_more_keypoints_and_frames_in_its_pixels(tmp_path):
    rows = _photo(tmp_path, "fin")
    figures = {}
    for size in (160, 512):
        cfg = project_config(KeypointConfig, "local", long_side=size, max_keypoints=2000)
        figures[size] = write_store(rows, tmp_path / f"store{size}", cfg, workers=1, progress=False)
        from photoid.local_features import KeypointStore

        kp = KeypointStore(tmp_path / f"store{size}").get("fin")
        assert kp.side == size and kp.frames[:, :2].max() <= size  # the box's longer side is scaled to size
    assert figures[512]["keypoints_per_crop"] > 1.5 * figures[160]["keypoints_per_crop"], figures
    assert figures[512]["store_mb_per_1000_photos"] > figures[160]["store_mb_per_1000_photos"] > 0


def test_an_unreadable_photo_stops_with_its_path(tmp_path):
    from photoid.errors import DataError

    rows = _photo(tmp_path, "fin")
    (tmp_path / "fin.png").write_bytes(b"not a photo")
    with pytest.raises(DataError, match="fin.png"):
        write_store(rows, tmp_path / "store", project_config(KeypointConfig, "local"), workers=1, progress=False)


def _two_fold_rankings(rng):
    """(image ids, the CV rankings of folds 0 and 1) of individuals 0..5 with three photos each, random
    embeddings; fold 0 validates photos *_0 and *_1, fold 1 photos *_2."""
    from photoid.embed import EmbeddingSet
    from photoid.retrieval.evaluation import cross_validate

    ids = [f"i{i}_{p}" for i in range(6) for p in range(3)]
    inds = [f"ind{i}" for i in range(6) for p in range(3)]
    rows = pd.DataFrame({"image_id": ids, "part": "train", "individual": inds, "species": "dolphin"})
    split = pd.DataFrame({"image_id": ids, "individual": inds, "is_new": False,
                          "fold": [0 if p < 2 else 1 for i in range(6) for p in range(3)]})
    vectors = rng.normal(size=(len(ids), 8)).astype(np.float32)
    return ids, cross_validate([EmbeddingSet(rows, vectors, vectors, {"flip": True})] * 2, [0, 1], split, 100)


def test_cv_never_matches_a_query_against_its_own_folds_validation_photos(monkeypatch):
    """A CV query whose exact copy is another validation photo of its fold (a burst) gets no votes
    from that copy: each fold's catalogue holds that fold's gallery only."""
    import photoid.retrieval.verification as rerank

    rng = np.random.default_rng(0)
    ids, parts = _two_fold_rankings(rng)
    for part in parts:
        assert len(part.gallery_ids) and not set(part.image_ids) & set(part.gallery_ids)
    # keypoints: photos i0_0 and i0_1 are copies (one texture), every other photo a texture of its own
    texture = {i: [v / np.linalg.norm(v) for v in np.abs(rng.normal(size=(30, DESCRIPTOR_DIM)))] for i in ids}
    texture["i0_1"] = texture["i0_0"]
    monkeypatch.setattr(rerank, "open_stores", lambda dirs: FakeStore(texture))
    cfg = project_config(rerank.RerankConfig, "rerank", match=project_config(rerank.MatchConfig, "rerank"),
                         catalogue=project_config(CatalogueConfig, "rerank"))
    fold0 = parts[0]
    evidence = catalogue_evidence_of(rerank, fold0, cfg)
    q = list(fold0.image_ids).index("i0_0")
    ind0 = list(fold0.candidates.labels[q]).index("ind0")
    # the copy i0_1 validates in the same fold: ind0's gallery is i0_2 alone, another texture
    assert "i0_1" not in set(fold0.gallery_ids) and evidence[q, ind0] < 1.0
    # the same query against a catalogue that held the copy would find it at once
    with_copy = CatalogueIndex(FakeStore(texture), ["i0_1", *fold0.gallery_ids], ["ind0", *fold0.gallery_individuals],
                               cfg.catalogue)
    scores = dict(zip(with_copy.individuals, with_copy.scores([FakeStore(texture).get("i0_0").descriptors])[0]))
    assert scores["ind0"] > 10 * max(evidence[q, ind0], 0.1)


def test_lnbnn_scores_kept_by_one_stage_are_read_by_the_next_for_the_same_catalogue_only(monkeypatch, tmp_path):
    """pseudo-label keeps the catalogue scores it computed; knn-rank, given that memo, gets the same
    evidence without matching a keypoint, computes a catalogue the memo does not hold, and ignores a
    memo made from other keypoints or settings."""
    import photoid.retrieval.verification as rerank
    from photoid.retrieval.evidence_memo import EvidenceMemo

    rng = np.random.default_rng(1)
    ids, (fold0, fold1) = _two_fold_rankings(rng)
    texture = {i: [v / np.linalg.norm(v) for v in np.abs(rng.normal(size=(30, DESCRIPTOR_DIM)))] for i in ids}
    monkeypatch.setattr(rerank, "open_stores", lambda dirs: FakeStore(texture))
    cfg = project_config(rerank.RerankConfig, "rerank", match=project_config(rerank.MatchConfig, "rerank"),
                         catalogue=project_config(CatalogueConfig, "rerank"))
    width = fold0.candidates.labels.shape[1]
    kept = EvidenceMemo("key")
    computed = rerank.catalogue_evidence(fold0, ["a store"], cfg, width, kept)
    assert computed.any()
    kept.pairs[("i0_0", "i0_2")] = 7
    kept.save(tmp_path / "memo")
    read = EvidenceMemo.load(tmp_path / "memo", "key")
    assert read.pairs == {("i0_0", "i0_2"): 7}

    def no_matching(*args, **kwargs):
        raise AssertionError("matched keypoints the memo holds the scores of")

    monkeypatch.setattr(rerank, "CatalogueIndex", no_matching)
    np.testing.assert_array_equal(rerank.catalogue_evidence(fold0, ["a store"], cfg, width, read), computed)
    with pytest.raises(AssertionError, match="matched keypoints"):  # fold 1's catalogue is another one
        rerank.catalogue_evidence(fold1, ["a store"], cfg, width, read)
    assert EvidenceMemo.load(tmp_path / "memo", "other keypoints").catalogues == {}


def catalogue_evidence_of(rerank, ranking, cfg):
    return rerank.catalogue_evidence(ranking, ["a store"], cfg, ranking.candidates.labels.shape[1])


def test_photo_pooling_scores_an_individual_by_its_best_photo_not_by_its_number_of_photos():
    """Two query keypoints, each near a different photo of A: summed per individual A gains twice,
    per photo A scores its best photo once; B's one photo near both keypoints scores the same either way."""
    def unit(*pairs):
        v = np.zeros(DESCRIPTOR_DIM)
        for axis, weight in pairs:
            v[axis] = weight
        return v / np.linalg.norm(v)

    photos = {"a1": [unit((1, 1), (20, 0.1))], "a2": [unit((2, 1), (21, 0.1))],
              "b1": [unit((1, 1), (22, 0.5)), unit((2, 1), (23, 0.5))], **{f"x{i}": [unit((30 + i, 1))] for i in range(4)}}
    owners = {"a1": "A", "a2": "A", "b1": "B", **{f"x{i}": f"X{i}" for i in range(4)}}
    query = FakeStore({"q": [unit((1, 1)), unit((2, 1))]}).get("q").descriptors
    scores = {}
    for pool in ("individual", "photo"):
        index = CatalogueIndex(FakeStore(photos), list(photos), [owners[p] for p in photos], CatalogueConfig(2, pool, 0, 1))
        scores[pool] = dict(zip(index.individuals, index.scores([query])[0]))
    assert scores["individual"]["A"] == pytest.approx(2 * scores["photo"]["A"], rel=0.02)
    assert scores["photo"]["A"] > 1.0 and scores["individual"]["B"] == pytest.approx(scores["photo"]["B"])
    assert scores["individual"]["A"] > scores["individual"]["B"] > scores["photo"]["A"]
