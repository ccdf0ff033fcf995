"""Embedding sets (flip TTA, written as they go), the knn ranking on a planted case, the submission
format and the pseudo-label rules."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from photoid.embed import EmbeddingSet, embed_rows
from photoid.errors import DataError
from photoid.metrics import NEW_INDIVIDUAL
from photoid.models import create_model
from photoid.pseudo import pseudo_label_figures, select_pseudo_labels
from photoid.retrieval.evaluation import Flips, load_fold_sets, rank_sets, rank_test_per_fold, rare_query_folds
from photoid.retrieval.outputs import predictions_table, submission
from photoid.retrieval.search import Candidates
from photoid.retrieval.thresholds import ThresholdRule
from tests.pipeline import embed_in_memory


def rank_all(embeddings, folds, split, search, threshold=ThresholdRule(), **options):
    """knn-rank's ranking of the fold sets under ``embeddings``."""
    return rank_sets(load_fold_sets(embeddings, folds), folds, split, search, threshold=threshold, **options)


def _model():
    torch.manual_seed(0)
    return create_model(dict(kind="dolg", backbone="resnet18", embedding_dim=16, local_dim=16, dilations=[1, 2],
                             n_classes=3, margins=[0.2] * 3, scale=16.0, subcenters=1)).eval()


def _crop(path, symmetric: bool, seed: int):
    rng = np.random.default_rng(seed)
    half = rng.integers(0, 255, (32, 16, 3), dtype=np.uint8)
    other = half[:, ::-1] if symmetric else rng.integers(0, 255, (32, 16, 3), dtype=np.uint8)
    Image.fromarray(np.concatenate([half, other], axis=1)).save(path)  # PNG: lossless, the symmetry is exact
    return str(path)


def test_flip_tta_leaves_a_mirror_symmetric_crop_unchanged_and_changes_others(tmp_path):
    model = _model()
    sym = _crop(tmp_path / "sym.png", True, 0)
    asym = _crop(tmp_path / "asym.png", False, 1)
    rows = pd.DataFrame({"image_id": ["s", "a"], "part": "train", "individual": ["x", "y"], "species": "w",
                         "crop_path": [sym, asym]})
    embed_rows(model, rows, 32, tmp_path / "emb", flip=True, batch_size=1)
    s = EmbeddingSet.load(tmp_path / "emb")
    assert np.allclose(s.original[0], s.flipped[0], atol=1e-5)  # the mirror image of a symmetric crop is itself
    assert not np.allclose(s.original[1], s.flipped[1], atol=1e-3)  # the flip really happens
    q = s.queries(np.arange(2))
    assert np.allclose(q[0], s.original[0], atol=1e-5)
    mean = (s.original[1] + s.flipped[1]) / np.linalg.norm(s.original[1] + s.flipped[1])
    assert np.allclose(q[1], mean, atol=1e-5) and np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)
    vectors, owners = s.gallery(np.arange(2), "entries")
    assert vectors.shape == (4, 16) and owners.tolist() == [0, 1, 0, 1]  # each image and its mirror
    vectors, owners = s.gallery(np.arange(2), "mean")  # each image once, as its query is
    assert np.allclose(vectors, q, atol=1e-6) and owners.tolist() == [0, 1]
    vectors, owners = s.gallery(np.arange(2), "none")
    assert np.allclose(vectors, s.original[:2] / np.linalg.norm(s.original[:2], axis=1, keepdims=True), atol=1e-6)
    # the in-memory path used by validation agrees with what the stage writes
    assert np.allclose(embed_in_memory(model.embed, [sym, asym], 32, flip=True), q, atol=1e-5)


def test_embeddings_are_written_batch_by_batch_without_flips_when_off(tmp_path):
    model = _model()
    paths = [_crop(tmp_path / f"{i}.png", False, i) for i in range(5)]
    rows = pd.DataFrame({"image_id": list("abcde"), "part": "test", "individual": "", "species": "w", "crop_path": paths})
    info = embed_rows(model, rows, 32, tmp_path / "emb", flip=False, batch_size=2)  # 3 batches, the last short
    s = EmbeddingSet.load(tmp_path / "emb")
    assert s.flipped is None and info["images"] == 5 and s.original.shape == (5, 16)
    assert s.rows["image_id"].tolist() == list("abcde")
    assert np.allclose(s.original, embed_in_memory(model.embed, paths, 32), atol=1e-5)


def _write_set(folder, rows, vectors, flipped=None):
    import json

    folder.mkdir(parents=True)
    rows.to_parquet(folder / "rows.parquet", index=False)
    np.save(folder / "embeddings.npy", vectors.astype(np.float32))
    if flipped is not None:
        np.save(folder / "flipped.npy", flipped.astype(np.float32))
    (folder / "meta.json").write_text(json.dumps({"flip": flipped is not None}))


def _planted(tmp_path, n_folds_embedded=2, noise=0.05, seed=0, rare=0):
    """Individuals as tight clusters around orthogonal directions: 8 known (4 images each, two species), 2
    held out as new in the split; test: 1 image of 4 known individuals and 2 of 2 never-seen ones.
    ``rare``: that many more individuals with 2 training images each, left out of the split (too rare to
    train on), one test image each."""
    rng = np.random.default_rng(seed)
    dim = 32
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0]  # orthogonal directions: individuals are far apart
    centre = {f"ind{i}": basis[i] for i in range(14 + rare)}
    rows, truth_ind = [], []  # (image_id, part, individual, species) and each image's true individual
    for i in range(10):
        for j in range(4):
            rows.append((f"tr{i}_{j}", "train", f"ind{i}", "dolphin" if i % 2 else "beluga"))
            truth_ind.append(f"ind{i}")
    for i in range(14, 14 + rare):
        for j in range(2):
            rows.append((f"tr{i}_{j}", "train", f"ind{i}", "beluga"))
            truth_ind.append(f"ind{i}")
    for i in (0, 3, 5, 6, *range(14, 14 + rare)):
        rows.append((f"te_known{i}", "test", "", "unknown"))
        truth_ind.append(f"ind{i}")
    for i in (12, 13):
        for j in range(2):
            rows.append((f"te_new{i}_{j}", "test", "", "unknown"))
            truth_ind.append(f"ind{i}")
    table = pd.DataFrame(rows, columns=["image_id", "part", "individual", "species"])
    table["crop_path"] = "x.png"
    for k in range(n_folds_embedded):
        v = np.stack([centre[t] + noise * rng.normal(size=dim) * np.linalg.norm(centre[t]) for t in truth_ind])
        f = np.stack([centre[t] + noise * rng.normal(size=dim) * np.linalg.norm(centre[t]) for t in truth_ind])
        _write_set(tmp_path / "emb" / f"fold{k}", table, v, f)
    train = table[(table.part == "train") & ~table.individual.isin([f"ind{i}" for i in range(14, 14 + rare)])].copy()
    train["is_new"] = train["individual"].isin(["ind8", "ind9"])
    train["fold"] = np.where(train["is_new"], -1, [int(r.split("_")[1]) % 2 for r in train.image_id])
    truth = pd.DataFrame({"image_id": table.image_id[table.part == "test"],
                          "individual": np.array(truth_ind)[table.part.to_numpy() == "test"]})
    return train, truth


def test_planted_clusters_rank_perfectly_and_the_submission_has_the_happywhale_format(tmp_path):
    split, truth = _planted(tmp_path)
    result = rank_all(tmp_path / "emb", [0, 1], split, search=100, test_truth=truth)
    m = result.metrics()
    assert m["cv_map5"] == pytest.approx(1.0) and m["cv_new_recall"] == 1.0 and m["cv_new_precision"] == 1.0
    assert m["test_map5"] == pytest.approx(1.0) and m["test_new_queries"] == 4 and m["test_top1"] == 1.0
    assert set(m["cv_map5_per_fold"]) == {"0", "1"} and set(m["cv_map5_per_species"]) == {"beluga", "dolphin"}
    assert m["cv_map20"] == pytest.approx(1.0)
    sub = submission(predictions_table(result.test, result.thresholds))
    assert list(sub.columns) == ["image", "predictions"] and len(sub) == 8
    known = set(split["individual"]) | {NEW_INDIVIDUAL}
    for image, preds in zip(sub["image"], sub["predictions"]):
        ids = preds.split(" ")
        assert len(ids) == 5 and len(set(ids)) == 5 and set(ids) <= known, preds
        assert (ids[0] == NEW_INDIVIDUAL) == image.startswith("te_new")
    csv = sub.to_csv(index=False).splitlines()
    assert csv[0] == "image,predictions" and csv[1].count(",") == 1


def test_a_fixed_threshold_is_used_as_given_and_noise_lowers_cv(tmp_path):
    split, truth = _planted(tmp_path, noise=0.05)
    fixed = rank_all(tmp_path / "emb", [0, 1], split, 100, ThresholdRule(fixed=2.0), test_truth=truth)
    assert fixed.metrics()["threshold"] == 2.0 and not fixed.metrics()["threshold_tuned"]
    assert fixed.metrics()["cv_new_recall"] == 1.0 and fixed.metrics()["cv_new_precision"] < 1.0  # all said new
    split2, truth2 = _planted(tmp_path / "noisy", noise=1.5, seed=1)
    noisy = rank_all(tmp_path / "noisy" / "emb", [0, 1], split2, 100, test_truth=truth2)
    assert noisy.metrics()["cv_map5"] < 0.9


def test_pseudo_labels_need_a_known_first_answer_a_high_score_and_a_margin():
    preds = pd.DataFrame({
        "image_id": ["a", "b", "c", "d", "e"],
        "predictions": ["i1 new_individual", "new_individual i2", "i3 i4", "i4 i3", "i5 i1"],
        "top_individual": ["i1", "i2", "i3", "i4", "i5"],
        "top_score": [0.9, 0.95, 0.5, 0.9, 0.92],
        "margin": [0.2, 0.3, 0.3, 0.01, 0.1],
    })
    crops = pd.DataFrame({"image_id": ["a", "b", "c", "d", "e", "t1", "t5"],
                          "part": ["test"] * 5 + ["train"] * 2, "individual": [""] * 5 + ["i1", "i5"],
                          "species": ["unknown"] * 5 + ["orca", "beluga"], "crop_path": list("abcde") + ["t1", "t5"]})
    pseudo = select_pseudo_labels(preds, crops, threshold=0.8, min_margin=0.05, confidence="score", fold=0)
    # b: new_individual first; c: score too low; d: margin too small
    assert pseudo["image_id"].tolist() == ["a", "e"] and pseudo["individual"].tolist() == ["i1", "i5"]
    assert pseudo["species"].tolist() == ["orca", "beluga"] and pseudo["crop_path"].tolist() == ["a", "e"]
    truth = pd.DataFrame({"image_id": list("abcde"), "individual": ["i1", "i2", "i3", "i4", "i9"]})
    figures = pseudo_label_figures(pseudo, 5, truth)
    assert figures["pseudo_labels"] == 2 and figures["accuracy"] == 0.5 and figures["share"] == 0.4


def test_retrain_uses_only_pseudo_labels_of_individuals_the_fold_trains():
    from photoid.train.fold import pseudo_rows_for_fold

    split = pd.DataFrame({"image_id": list("abcdef"), "individual": ["x", "x", "y", "y", "z", "z"],
                          "fold": [0, 1, 0, 1, -1, -1], "is_new": [False] * 4 + [True] * 2})
    pseudo = pd.DataFrame({"image_id": ["t1", "t2", "t3"], "individual": ["x", "z", "w"], "fold": [0, 0, 0]})
    assert pseudo_rows_for_fold(pseudo, split, 0)["image_id"].tolist() == ["t1"]  # z held out, w not trained
    with pytest.raises(DataError, match="no fold column.*re-run pseudo-label"):  # a table from before folds labelled
        pseudo_rows_for_fold(pseudo.drop(columns="fold"), split, 0)


def test_a_data_set_without_test_images_gives_an_empty_submission_and_no_pseudo_labels(tmp_path):
    split, _ = _planted(tmp_path)
    for k in (0, 1):  # keep only the training rows
        folder = tmp_path / "emb" / f"fold{k}"
        s = EmbeddingSet.load(folder)
        train = (s.rows["part"] == "train").to_numpy()
        rows, orig, flipped = s.rows[train].reset_index(drop=True), np.array(s.original[train]), np.array(s.flipped[train])
        import shutil
        shutil.rmtree(folder)
        _write_set(folder, rows, orig, flipped)
    result = rank_all(tmp_path / "emb", [0, 1], split, 100)
    predictions = predictions_table(result.test, result.thresholds)
    assert predictions.empty and list(submission(predictions).columns) == ["image", "predictions"]
    assert result.metrics()["test_images"] == 0 and "test_map5" not in result.metrics()
    assert select_pseudo_labels(predictions, result.rows, 0.5, 0.0, "score", 0).empty


def test_the_pseudo_label_cut_reaches_its_precision_on_a_constructed_case():
    from photoid.pseudo import precision_cut

    rng = np.random.default_rng(0)
    # 400 answers whose chance of being right rises with the score: right with probability = score
    scores = rng.uniform(0, 1, 400)
    correct = rng.uniform(0, 1, 400) < scores
    for target in (0.8, 0.9, 0.95):
        cut, precision, count = precision_cut(scores, correct, target)
        above = scores >= cut
        assert above.sum() == count and correct[above].mean() == pytest.approx(precision) and precision >= target
        # it is the lowest such cut: one answer lower, the precision falls below the target
        lower = scores < cut
        if lower.any():
            nxt = scores[lower].max()
            assert correct[scores >= nxt].mean() < target
    # hand-computed: scores 0.9 0.8 0.7 0.6, right right wrong right -> precisions 1, 1, 2/3, 3/4
    assert precision_cut([0.6, 0.9, 0.7, 0.8], [True, True, False, True], 0.75) == (0.6, 0.75, 4)
    assert precision_cut([0.6, 0.9, 0.7, 0.8], [True, True, False, True], 0.9) == (0.8, 1.0, 2)
    assert precision_cut([0.9, 0.8], [False, True], 0.95) == (float("inf"), 0.0, 0)  # even the best is wrong
    assert precision_cut([0.9, 0.9, 0.5], [True, False, True], 0.9)[0] == float("inf")  # ties go together


def test_flip_params_change_what_ranks(tmp_path):
    from photoid.retrieval.evaluation import Flips

    split, truth = _planted(tmp_path)
    both = rank_all(tmp_path / "emb", [0, 1], split, 100, test_truth=truth)
    neither = rank_all(tmp_path / "emb", [0, 1], split, 100, test_truth=truth, flips=Flips(query=False, gallery="none"))
    s = EmbeddingSet.load(tmp_path / "emb" / "fold0")
    g = np.flatnonzero((s.rows["part"] == "train").to_numpy())
    assert len(s.gallery(g, "entries")[0]) == 2 * len(s.gallery(g, "none")[0]) == 2 * len(s.gallery(g, "mean")[0])
    assert np.allclose(s.queries(g, flip=False), s.original[g] / np.linalg.norm(s.original[g], axis=1, keepdims=True),
                       atol=1e-6)
    assert not np.allclose(both.test.candidates.scores, neither.test.candidates.scores)


def test_mean_gallery_scores_two_photos_alike_whichever_is_the_query(tmp_path):
    """knn.gallery_flip=mean treats a gallery photo as a query is (the flip-TTA mean), so a pair of photos
    scores the same whichever of the two is the query; two mirror entries per gallery photo do not."""
    _planted(tmp_path)
    s = EmbeddingSet.load(tmp_path / "emb" / "fold0")
    idx = np.arange(len(s.rows))
    q = s.queries(idx)
    g, owners = s.gallery(idx, "mean")
    assert owners.tolist() == idx.tolist() and np.allclose(q @ g.T, (q @ g.T).T, atol=1e-6)
    g, owners = s.gallery(idx, "entries")
    best = np.full((len(idx), len(idx)), -np.inf)
    for col, owner in enumerate(owners):
        best[:, owner] = np.maximum(best[:, owner], q @ g[col])
    assert not np.allclose(best, best.T, atol=1e-3)
    assert Flips.parse(True, "true").gallery == "entries" and Flips.parse(True, "False").gallery == "none"
    assert Flips.parse(False, " MEAN ") == Flips(query=False, gallery="mean")
    with pytest.raises(DataError, match="knn.gallery_flip is 'sideways'"):
        Flips.parse(True, "sideways")


def _stage(name):
    from tests.structure import load_stage

    return load_stage(name).app


def _params(*changes):
    """The project's params.yaml with ``changes`` (section.key=value) for this run."""
    from tests.structure import PARAMS

    return ["--params", str(PARAMS), *[a for c in changes for a in ("--set", c)]]


def test_pseudo_label_stage_cuts_where_cv_reaches_its_precision_and_labels_confident_test_images(tmp_path):
    import json

    from typer.testing import CliRunner

    split, truth = _planted(tmp_path, noise=0.05)
    split.to_parquet(tmp_path / "split.parquet", index=False)
    truth.to_parquet(tmp_path / "truth.parquet", index=False)
    common = ["--embeddings", str(tmp_path / "emb"), "--split", str(tmp_path / "split.parquet"),
              "--test-truth", str(tmp_path / "truth.parquet"), "--out", str(tmp_path / "p.parquet"),
              "--metrics", str(tmp_path / "p.json"), "--evidence-out", str(tmp_path / "evidence")]
    folds = ("ensemble.folds=[0,1]", "rerank.enabled=false")  # planted vectors: no crops to verify
    result = CliRunner().invoke(_stage("pseudo_label"), [*common, *_params(*folds, "pseudo.precision=0.95")])
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "p.json").read_text())
    # planted clusters: every CV answer is right, so the cut is the least confident one and every
    # known test image (4 of them) clears it; the new ones are answered new_individual first
    assert m["threshold_auto"] and m["cv_precision_above_threshold"] == 1.0 and m["cv_answers_above_threshold"] > 0
    # each fold labels for itself (its own model, a gallery without its validation images)
    assert m["pseudo_labels"] == 8 and m["images"] == 4 and m["accuracy"] == 1.0
    assert m["pseudo_labels_per_fold"] == {"0": 4, "1": 4}
    pseudo = pd.read_parquet(tmp_path / "p.parquet")
    assert sorted(set(pseudo["image_id"])) == ["te_known0", "te_known3", "te_known5", "te_known6"]
    # the new_individual threshold rule is knn-rank's: a share of 1 answers every test photo new first
    result = CliRunner().invoke(_stage("pseudo_label"), [*common, *_params(*folds, "knn.threshold=new_share:1")])
    assert result.exit_code == 0 and json.loads((tmp_path / "p.json").read_text())["pseudo_labels"] == 0
    # a fixed cut above every margin labels nothing
    result = CliRunner().invoke(_stage("pseudo_label"), [*common, *_params(*folds, "pseudo.threshold=5")])
    assert result.exit_code == 0 and json.loads((tmp_path / "p.json").read_text())["pseudo_labels"] == 0
    result = CliRunner().invoke(_stage("pseudo_label"), [*common, *_params(*folds, "pseudo.threshold=high")])
    assert result.exit_code == 2 and "auto or a number" in result.output


def test_knn_rank_reports_cv_before_and_after_retraining(tmp_path):
    import json
    import shutil

    from typer.testing import CliRunner

    split, truth = _planted(tmp_path, noise=0.05)
    shutil.copytree(tmp_path / "emb", tmp_path / "before")
    _planted(tmp_path / "noisy", noise=1.5, seed=1)  # a worse "before": the same images, noisier vectors
    shutil.rmtree(tmp_path / "before")
    shutil.copytree(tmp_path / "noisy" / "emb", tmp_path / "before")
    split.to_parquet(tmp_path / "split.parquet", index=False)
    args = [*_params("ensemble.folds=[0,1]", "rerank.enabled=false"), "--embeddings", str(tmp_path / "emb"),
            "--before-embeddings",
            str(tmp_path / "before"), "--split", str(tmp_path / "split.parquet"), "--test-truth", str(tmp_path / "none"),
            "--submission-out", str(tmp_path / "s.csv"), "--predictions-out", str(tmp_path / "p.parquet"),
            "--metrics", str(tmp_path / "k.json"), "--reliability", str(tmp_path / "rel"),
            "--ranker-out", str(tmp_path / "ranker"), "--plots", str(tmp_path / "plots"),
            "--matches-out", str(tmp_path / "matches.parquet")]
    result = CliRunner().invoke(_stage("knn_rank"), args)
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "k.json").read_text())
    assert m["cv_map5"] == pytest.approx(1.0) and m["cv_map5_before_retrain"] < 0.9
    assert m["retrain_gain"] == pytest.approx(m["cv_map5"] - m["cv_map5_before_retrain"])
    # the plots' tables: the curve reaches the reported CV MAP@5 at the chosen threshold (one threshold here)
    curve = pd.read_csv(tmp_path / "plots" / "threshold.csv")
    chosen = pd.read_csv(tmp_path / "plots" / "threshold_chosen.csv")
    assert np.allclose(chosen["threshold"], m["threshold"])
    assert chosen["cv_map5"].iloc[-1] == pytest.approx(m["cv_map5"]) and chosen["cv_map5"].iloc[0] <= curve["cv_map5"].min()
    assert curve["cv_map5"].max() == pytest.approx(m["cv_map5"]) and curve["threshold"].is_monotonic_increasing
    top = pd.read_csv(tmp_path / "plots" / "top_score.csv")
    assert top["cv_known"].sum() == pytest.approx(1.0) and top["cv_new"].sum() == pytest.approx(1.0)  # shares of each kind
    assert top["test_known"].isna().all()  # no test truth here: the columns are there, empty
    # planted clusters: a known query's best candidate is its own individual, far above a new one's best
    assert (top["score"] * top["cv_known"]).sum() > (top["score"] * top["cv_new"]).sum()
    species = pd.read_csv(tmp_path / "plots" / "map5_per_species.csv")
    assert species.set_index("species")["cv_map5"].to_dict() == pytest.approx(m["cv_map5_per_species"])


def test_embed_stage_makes_the_untrained_baseline_and_refuses_one_without_weights(tmp_path):
    import json

    from typer.testing import CliRunner

    from photoid.models.weights import LITE0_PACKAGE

    paths = [_crop(tmp_path / f"{i}.png", False, i) for i in range(3)]
    pd.DataFrame({"image_id": list("abc"), "part": "train", "individual": ["x", "y", "x"], "species": "w",
                  "crop_path": paths}).to_parquet(tmp_path / "crops.parquet", index=False)
    common = ["--fold", "0", "--crops", str(tmp_path / "crops.parquet")]
    size = ("train.backbone=efficientnet_lite0", "train.img_size=32")
    result = CliRunner().invoke(_stage("embed"), [*common, *_params(*size, "embed.features=untrained",
                                                                    f"train.pretrained={LITE0_PACKAGE}"),
                                                  "--outputs", str(tmp_path / "emb")])
    assert result.exit_code == 0, result.output
    s = EmbeddingSet.load(tmp_path / "emb/data/processed/embeddings/dolg/fold0")  # --outputs: the project's layout
    assert s.original.shape == (3, 1280) and s.flipped is not None  # Lite0's pooled features, no training
    assert json.loads((tmp_path / "emb/metrics/embed/fold0.json").read_text())["features"] == "untrained"
    result = CliRunner().invoke(_stage("embed"), [*common, *_params(*size, "embed.features=untrained", "train.pretrained=false"),
                                                  "--outputs", str(tmp_path / "emb2")])
    assert result.exit_code == 2 and "no baseline" in result.output and not (tmp_path / "emb2/data").exists()
    result = CliRunner().invoke(_stage("embed"), [*common, *_params(*size, "embed.features=vit"),
                                                  "--outputs", str(tmp_path / "emb3")])
    assert result.exit_code == 2 and "dolg, backbone or untrained" in result.output


def test_the_threshold_rule_reads_auto_a_number_or_a_share_and_names_the_param_when_wrong():
    assert ThresholdRule.parse("auto") == ThresholdRule()
    assert ThresholdRule.parse(" 0.7 ") == ThresholdRule(fixed=0.7)
    assert ThresholdRule.parse("new_share:0.5") == ThresholdRule(new_share=0.5)
    assert str(ThresholdRule.parse("new_share:0.25")) == "new_share:0.25"
    for bad in ("tuned", "new_share:1.5", "new_share:", "new_share:half"):
        with pytest.raises(DataError, match="knn.threshold takes auto, a number, or new_share"):
            ThresholdRule.parse(bad)


def test_a_new_share_threshold_answers_new_first_for_that_share_of_the_test_photos(tmp_path):
    split, truth = _planted(tmp_path)  # 8 test photos, 4 of them of never-seen individuals
    tuned = rank_all(tmp_path / "emb", [0, 1], split, 100, test_truth=truth).metrics()
    half = rank_all(tmp_path / "emb", [0, 1], split, 100, ThresholdRule(new_share=0.5), test_truth=truth).metrics()
    quarter = rank_all(tmp_path / "emb", [0, 1], split, 100, ThresholdRule(new_share=0.25), test_truth=truth).metrics()
    assert half["test_new_first_share"] == 0.5 and quarter["test_new_first_share"] == 0.25
    assert half["threshold_rule"] == "new_share:0.5" and not half["threshold_tuned"]
    assert half["test_map5"] == pytest.approx(1.0)  # the four least similar are the new ones
    assert quarter["test_new_recall"] == 0.5 and quarter["test_map5"] < 1.0
    # the tuned threshold's shares, reported for CV and test side by side: both halves here
    assert tuned["cv_new_first_share"] == pytest.approx(tuned["cv_new_queries"] / tuned["cv_queries"])
    assert tuned["test_new_first_share"] == 0.5


def test_rare_individuals_are_cv_queries_with_their_other_photos_in_the_gallery(tmp_path):
    split, truth = _planted(tmp_path, rare=3)
    s = EmbeddingSet.load(tmp_path / "emb" / "fold0")
    folds = rare_query_folds(s.rows, split)
    assert sorted(folds.index) == [f"tr{i}_{j}" for i in (14, 15, 16) for j in (0, 1)]
    for i in (14, 15, 16):  # each photo a query in one fold, the two photos of an animal in different folds
        assert folds[f"tr{i}_0"] != folds[f"tr{i}_1"]
    m = rank_all(tmp_path / "emb", [0, 1], split, 100, test_truth=truth).metrics()
    assert m["cv_rare_queries"] == 6 and m["cv_map5_rare"] == pytest.approx(1.0)  # found, not called new
    assert m["cv_queries"] == 32 + 2 * 8 + 6  # every known photo once, the 8 held-out ones per fold, the rare once
    assert m["test_map5"] == pytest.approx(1.0)


def test_a_lone_individual_filling_the_neighbour_list_is_not_a_lead_by_itself():
    lone = Candidates(np.array([["a", ""]], dtype=object), np.array([[0.9, -np.inf]], np.float32), floor=np.array([0.7]))
    assert lone.margin() == pytest.approx([0.2])  # the lead over the lowest similarity searched: a lower bound
    assert Candidates(lone.labels, lone.scores).margin() == pytest.approx([0.0])  # no floor: no lead
    two = Candidates(np.array([["a", "b"]], dtype=object), np.array([[0.9, 0.4]], np.float32))
    assert two.margin() == pytest.approx([0.5])


def test_no_fold_pseudo_labels_a_test_photo_by_one_of_its_own_validation_images(tmp_path):
    split, truth = _planted(tmp_path)
    val0 = split[(split.fold == 0) & ~split.is_new]
    # a test photo that is an exact copy of one of fold 0's validation images (one encounter's burst)
    for k in (0, 1):
        folder = tmp_path / "emb" / f"fold{k}"
        s = EmbeddingSet.load(folder)
        src = int(np.flatnonzero((s.rows.image_id == val0.image_id.iloc[0]).to_numpy())[0])
        rows = pd.concat([s.rows, s.rows.iloc[[src]].assign(image_id="te_copy", part="test", individual="")],
                         ignore_index=True)
        orig, flipped = np.array(s.original), np.array(s.flipped)
        import shutil
        shutil.rmtree(folder)
        _write_set(folder, rows, np.vstack([orig, orig[src]]), np.vstack([flipped, flipped[src]]))
    sets = [EmbeddingSet.load(tmp_path / "emb" / f"fold{k}") for k in (0, 1)]
    per_fold = rank_test_per_fold(sets, [0, 1], split, 100, Flips())  # the copy's flip-TTA mean is the original's
    i0, i1 = (int(np.flatnonzero(r.image_ids == "te_copy")[0]) for r in per_fold)
    assert per_fold[1].candidates.scores[i1, 0] == pytest.approx(1.0, abs=1e-5)  # fold 1 trains on the original
    assert per_fold[0].candidates.scores[i0, 0] < 0.99  # fold 0 validates on it: not in its gallery
    assert per_fold[0].candidates.labels[i0, 0] == per_fold[1].candidates.labels[i1, 0]  # still found, by others
    pseudo = pd.concat([select_pseudo_labels(predictions_table(r, rank_all(tmp_path / "emb", [0, 1], split, 100).thresholds),
                                             sets[0].rows, 0.0, 0.0, "margin", fold=k) for k, r in zip((0, 1), per_fold)])
    from photoid.train.fold import pseudo_rows_for_fold
    for k in (0, 1):
        assert set(pseudo_rows_for_fold(pseudo, split, k)["fold"]) <= {k}


def test_review_page_shows_each_answer_beside_its_best_photo_and_encodes_each_thumbnail_once(tmp_path):
    import json
    import re

    from PIL import Image

    from photoid.retrieval.evaluation import load_fold_sets
    from photoid.review import best_photos, review_rows, write_review_page

    split, truth = _planted(tmp_path)
    sets = load_fold_sets(tmp_path / "emb", [0, 1])
    result = rank_all(tmp_path / "emb", [0, 1], split, 100, test_truth=truth)
    table = predictions_table(result.test, result.thresholds)
    photos = best_photos(sets, Flips(), table["image_id"].tolist(), [p.split(" ") for p in table["predictions"]])
    # planted clusters: the best photo of a known query's first answer is one of that individual's own
    first = dict(zip(table["image_id"], (p[0] for p in photos)))
    assert first["te_known3"].startswith("tr3_") and first["te_known5"].startswith("tr5_")
    for answers, best in zip(table["predictions"], photos):
        for a, b in zip(answers.split(" "), best):
            assert (b is None) == (a == "new_individual") and (b is None or b.startswith(f"tr{a[3:]}_"))
    rows = review_rows(table, photos, truth, set(split["individual"]))
    assert {r["q"]: r["truth"] for r in rows}["te_new12_0"] == "new_individual"  # never in the gallery: new
    assert all(len(r["answers"]) == 5 for r in rows)
    Image.new("RGB", (40, 30), (120, 60, 30)).save(tmp_path / "x.png")
    crop_paths = {i: str(tmp_path / "x.png") for i in sets[0].rows["image_id"]}
    figures = write_review_page(tmp_path / "review.html", rows, crop_paths, size=32, page_size=5)
    page = (tmp_path / "review.html").read_text()
    data = json.loads(re.search(r"const DATA = (\{.*?\});\n", page).group(1))
    shown = {r["q"] for r in rows} | {a["photo"] for r in rows for a in r["answers"] if a["photo"]}
    assert set(data["thumbs"]) == shown and figures["thumbnails"] == len(shown) < sum(1 + 5 for _ in rows)
    assert data["thumbs"]["te_known3"].startswith("data:image/jpeg;base64,") and data["pageSize"] == 5


def test_review_page_carries_each_answers_matches_its_larger_views_and_the_photos_not_answered(tmp_path):
    import json
    import re

    from PIL import Image

    from photoid.review import review_rows, write_review_page

    Image.new("RGB", (300, 200), (120, 60, 30)).save(tmp_path / "photo.png")
    predictions = pd.DataFrame({"image_id": ["q1"], "predictions": ["ind1 new_individual ind2"], "scores": ["0.9 0.5 0.2"],
                                "species": ["dolphin"], "threshold": [0.5], "margin": [0.7], "top_score": [0.9]})
    matches = pd.DataFrame([{"image_id": "q1", "individual": "ind1", "gallery_id": "g7", "flipped": True, "inliers": 2,
                             "query_side": 384.0, "gallery_side": 384.0, "query_xy": [10.0, 20.0, 30.0, 40.0],
                             "gallery_xy": [12.0, 22.0, 33.0, 41.0]}])
    rows = review_rows(predictions, [["g1", None, "g2"]], None, {"ind1", "ind2"}, matches)
    first = rows[0]["answers"][0]
    assert first["photo"] == "g7"  # the photo the matches are with, not the most similar one
    assert first["match"] == {"n": 2, "mirrored": True, "qs": 384.0, "gs": 384.0, "q": [10.0, 20.0, 30.0, 40.0],
                              "g": [12.0, 22.0, 33.0, 41.0]}
    assert rows[0]["answers"][2]["match"] is None and rows[0]["answers"][2]["photo"] == "g2"
    region = (str(tmp_path / "photo.png"), (300, 200), (50.0, 20.0, 250.0, 120.0))
    views = {i: region for i in ("q1", "g7", "g2", "unshown")}
    figures = write_review_page(tmp_path / "review.html", rows, {i: str(tmp_path / "photo.png") for i in views}, size=32,
                                views=views, view_side=480, unanswered=[{"photo": "bad.jpg", "reason": "not an image"}])
    data = json.loads(re.search(r"const DATA = (\{.*?\});\n", (tmp_path / "review.html").read_text()).group(1))
    assert set(data["views"]) == {"q1", "g7", "g2"} and figures["views"] == 3  # the photos shown, each once
    with Image.open(tmp_path / data["views"]["g7"]) as view:
        assert view.size == (480, 240)  # the box region (200 x 100), its longer side at report.view
    assert data["unanswered"] == [{"photo": "bad.jpg", "reason": "not an image"}] and figures["unanswered"] == 1
    assert data["rows"][0]["answers"][0]["match"]["n"] == 2


def test_fold_all_ranks_the_test_photos_and_the_numbered_folds_alone_cross_validate(tmp_path):
    """ensemble.folds [0, 1, all]: CV (and so the threshold) is that of [0, 1]; the test photos are
    ranked by fold all's embeddings alone (the model on every labelled photo)."""
    from photoid.data.split import ALL, cv_folds, fold_view, parse_fold, test_folds
    from photoid.errors import DataError
    from photoid.retrieval.evaluation import load_fold_sets, rank_test

    split, truth = _planted(tmp_path, n_folds_embedded=3, noise=0.3)
    (tmp_path / "emb" / "fold2").rename(tmp_path / "emb" / "foldall")  # other noise: another model
    cv_only = rank_all(tmp_path / "emb", [0, 1], split, 100, test_truth=truth)
    with_all = rank_all(tmp_path / "emb", [0, 1, "all"], split, 100, test_truth=truth)
    assert with_all.metrics()["cv_map5"] == cv_only.metrics()["cv_map5"]
    assert with_all.thresholds == cv_only.thresholds
    alone = rank_test(load_fold_sets(tmp_path / "emb", [ALL]), 100)
    assert (with_all.test.candidates.labels == alone.candidates.labels).all()
    assert np.allclose(with_all.test.candidates.scores, alone.candidates.scores)
    assert not np.allclose(cv_only.test.candidates.scores, alone.candidates.scores)  # not the folds' average
    # the fold itself: every labelled photo trains, nothing validates
    train, val = fold_view(split, ALL)
    assert len(train) == len(split) and val.empty
    assert (cv_folds([0, "all"]), test_folds([0, "all"]), test_folds([0, 1])) == ([0], ["all"], [0, 1])
    assert parse_fold("2") == 2
    with pytest.raises(DataError, match="at least one fold number"):
        cv_folds(["all"])
    with pytest.raises(DataError, match="give a fold number"):
        parse_fold("everything")


def test_a_test_photo_that_is_a_copy_of_a_training_photo_is_answered_with_its_individual():
    """Whatever the ranking found (here: another individual first, above the threshold), the copy's
    first answer is the training photo's individual at score 1, flagged in the predictions."""
    from photoid.data.duplicates import exact_copies
    from photoid.metrics import map_at_k
    from photoid.retrieval.evaluation import Ranking
    from photoid.retrieval.outputs import answer_copies, predictions_table
    from photoid.retrieval.search import Candidates
    from photoid.retrieval.thresholds import Thresholds, predict

    duplicates = pd.DataFrame([
        ("t1", "g7", "exact", 0, "test", "train", "", "ind7"),  # a test copy of a training photo
        ("t2", "g3", "near", 9, "test", "train", "", "ind3"),  # near copies are only reported
        ("g9", "g8", "exact", 0, "train", "train", "ind8", "ind8"),
    ], columns=["image_id", "duplicate_of", "kind", "bits", "part", "other_part", "individual", "other_individual"])
    copies = exact_copies(duplicates)
    assert copies.values.tolist() == [["t1", "g7", "ind7"]]
    labels = np.array([["ind2", "ind7", "ind4"], ["ind3", "ind1", ""]], dtype=object)
    scores = np.array([[0.9, 0.4, 0.1], [0.8, 0.3, -np.inf]], np.float32)
    ranking = Ranking(np.array(["t1", "t2"]), Candidates(labels, scores), np.array(["dolphin"] * 2), [[], []], {})
    answered = answer_copies(ranking, copies)
    assert answered.candidates.labels[0].tolist() == ["ind7", "ind2", "ind4"]
    assert answered.candidates.scores[0].tolist() == pytest.approx([1.0, 0.9, 0.1])
    assert answered.candidates.labels[1].tolist() == ["ind3", "ind1", ""]  # not a copy: as it was
    preds = predict(answered.candidates, 0.95)  # a threshold above every score but the copy's
    assert preds[0][0] == "ind7" and preds[1][0] == "new_individual"
    assert map_at_k(preds[:1], ["ind7"], 5) == 1.0
    table = predictions_table(answered, Thresholds(0.95), copies=copies)
    assert table["copy_of"].tolist() == ["g7", ""] and table["predictions"][0].startswith("ind7 ")


def _ranker_config(*changes):
    from photoid.params import load_params
    from photoid.retrieval.ranker import RankerConfig
    from tests.structure import PARAMS

    return RankerConfig.from_params(load_params(RankerConfig.READS, PARAMS, list(changes)))


def test_a_saved_ranker_answers_new_photos_exactly_as_the_fitted_one(tmp_path):
    """What knn-rank saves is JSON and numpy arrays (no pickle), and the ranker loaded from it gives
    the test photos the answers and P(new) the fitted one gave."""
    from photoid.retrieval.ranker import Ranker

    split, truth = _planted(tmp_path, noise=0.3)
    folds = [0, 1]
    sets = load_fold_sets(tmp_path / "emb", folds)
    fitted = Ranker.fit(_ranker_config("rerank.enabled=false"), sets, folds, split, tmp_path / "no-store", truth, "emb")
    fitted.ranker.save(tmp_path / "ranker")
    assert sorted(p.name for p in (tmp_path / "ranker").iterdir()) == ["arrays.npz", "manifest.json"]
    loaded = Ranker.load(tmp_path / "ranker")
    assert loaded.config == fitted.ranker.config
    ranking, p_new = loaded.answer(sets)
    assert (ranking.candidates.labels == fitted.result.test.candidates.labels).all()
    assert np.array_equal(ranking.candidates.scores, fitted.result.test.candidates.scores)
    assert np.array_equal(p_new, fitted.test_p_new)
    assert loaded.thresholds == fitted.ranker.thresholds and loaded.folds == fitted.ranker.folds


def test_a_saved_fusion_gives_the_same_probabilities_once_loaded(tmp_path):
    from photoid.retrieval.calibration import Calibration
    from photoid.retrieval.evaluation import Shortlist
    from photoid.retrieval.ranker import Ranker
    from photoid.retrieval.rerank import FittedReranker
    from photoid.retrieval.search import Search
    from photoid.retrieval.thresholds import Thresholds

    rng = np.random.default_rng(0)
    x, valid = rng.normal(size=(40, 6, 4)), rng.random((40, 6)) > 0.1
    hits = (x[..., 0] + 0.5 * rng.normal(size=(40, 6)) > 1).astype(float)
    calibration = Calibration.fit(x, valid, hits, (hits.max(axis=1) == 0).astype(float), [0, 1, 3])
    config = _ranker_config()
    ranker = Ranker(config, [0, "all"], "emb", Search(300, "flat", 0, 0, 0.0), Shortlist(0, 3), Thresholds(0.4, {"beluga": 0.5}),
                    FittedReranker(calibration, config.rerank, 6))
    ranker.save(tmp_path / "ranker")
    loaded = Ranker.load(tmp_path / "ranker")
    p, p_new = calibration.apply(x, valid)
    q, q_new = loaded.reranker.calibration.apply(x, valid)
    assert np.array_equal(p, q) and np.array_equal(p_new, q_new)
    assert loaded.reranker.cfg == config.rerank and loaded.reranker.width == 6 and loaded.folds == [0, "all"]
    assert loaded.thresholds == Thresholds(0.4, {"beluga": 0.5}) and loaded.shortlist == Shortlist(0, 3)


def test_a_ranker_of_another_format_version_stops_with_what_to_run(tmp_path):
    import json

    from photoid.retrieval.ranker import FORMAT_VERSION, Ranker

    split, truth = _planted(tmp_path)
    fitted = Ranker.fit(_ranker_config("rerank.enabled=false"), load_fold_sets(tmp_path / "emb", [0, 1]), [0, 1], split,
                        tmp_path / "no-store", truth, "emb")
    fitted.ranker.save(tmp_path / "ranker")
    manifest = tmp_path / "ranker" / "manifest.json"
    m = json.loads(manifest.read_text())
    assert m["format"] == "photoid-ranker" and m["format_version"] == FORMAT_VERSION and m["photoid_version"]
    manifest.write_text(json.dumps({**m, "format_version": 99, "photoid_version": "9.9"}))
    with pytest.raises(DataError, match=r"version 99 \(written by photoid 9.9\).*dvc repro knn-rank"):
        Ranker.load(tmp_path / "ranker")
    manifest.unlink()
    (tmp_path / "ranker" / "ranker.pkl").write_bytes(b"an older photoid's ranker")
    with pytest.raises(DataError, match="holds no ranker of this photoid"):
        Ranker.load(tmp_path / "ranker")
