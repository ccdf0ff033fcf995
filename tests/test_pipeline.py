"""`dvc repro` of every stage on a tiny demo, in a temporary git repository; which stages a
param change or a `dvc exp run -S` re-runs; what a user reads back (`dvc metrics diff`, `dvc exp show`)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.pipeline import dvc, make_project, run, set_params, stages_run, stages_skipped

DATA_STAGES = ["ingest", "detect", "crop", "local-features", "filter", "split"]
TRAINING_ONWARD = ["train-backbone@0", "train-dolg@0", "embed@0", "pseudo-label", "retrain@0", "knn-rank", "report"]
ALL_STAGES = [*DATA_STAGES, *TRAINING_ONWARD]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("pipeline") / "proj")
    first = dvc(root, "repro")
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "first run"], root)  # the baseline `dvc metrics diff` compares against
    return root, first


def test_repro_runs_every_data_stage_and_writes_the_tables(project):
    root, first = project
    assert stages_run(first) == ALL_STAGES
    images = pd.read_parquet(root / "data/interim/ingest/images.parquet")
    split = pd.read_parquet(root / "data/processed/split.parquet")
    crops = pd.read_parquet(root / "data/processed/crops/crops.parquet")
    assert len(crops) == len(images) and all((root / p).exists() for p in crops.crop_path)
    assert split.fold.max() == 1 and split.is_new.any()
    for name in DATA_STAGES:
        assert json.loads((root / "metrics" / f"{name.replace('-', '_')}.json").read_text())
    dolg = json.loads((root / "metrics/dolg/fold0.json").read_text())
    assert 0 <= dolg["val_map5"] <= 1 and 0 <= dolg["backbone_val_map5"] <= 1
    assert (root / "models/dolg/fold0/model.pt").exists()
    assert (root / "metrics/curves/dolg/fold0/plots/metrics").is_dir()  # dvclive curves
    assert not (root / "checkpoints/dolg/fold0/state.pt").exists()  # resume state removed once done
    # the training stages read the crops from one cache at the training size (48 px), outside DVC's outputs
    assert [p.name[:5] for p in (root / "cache/crops").glob("*.npy")] in (["48px-"], ["48px-", "48px-"])
    detect = json.loads((root / "metrics/detect.json").read_text())
    assert detect["detected"] + detect["full_frame"] == len(images) and "map50" in detect
    # ultralytics wrote nothing outside the stage's outputs and left dvc.yaml alone
    assert not (root / "runs").exists() and not (root / "dvclive").exists()
    assert "dvclive" not in (root / "dvc.yaml").read_text()
    # the retrieval half: embeddings, pseudo-labels, (passed-through or retrained) models, submission, metrics
    emb = root / "data/processed/embeddings"
    assert (emb / "dolg/fold0/embeddings.npy").exists() and (emb / "retrain/fold0/flipped.npy").exists()
    assert (root / "models/retrain/fold0/model.pt").exists()
    sub = pd.read_csv(root / "data/processed/submission.csv")
    test_ids = set(images.loc[images.part == "test", "image_id"])
    assert list(sub.columns) == ["image", "predictions"] and set(sub["image"]) == test_ids
    assert all(len(p.split(" ")) == 5 for p in sub["predictions"])
    knn = json.loads((root / "metrics/knn.json").read_text())
    for key in ["cv_map5", "cv_top1", "cv_map20", "cv_new_precision", "cv_new_recall", "cv_map5_per_species",
                "threshold", "test_map5", "test_map20"]:
        assert key in knn, key
    assert 0 <= knn["cv_map5"] <= 1 and 0 <= knn["test_map5"] <= 1
    # re-ranked by local features (the default), with the embedding-only figures beside and P(new) calibrated
    assert knn["rerank"] and knn["rerank_figures"]["pairs"] > 0 and 0 <= knn["embedding_cv_map5"] <= 1
    assert 0 <= knn["cv_new_ece"] <= 1 and (root / "metrics/reliability/cv.csv").exists()
    predictions = pd.read_parquet(root / "data/processed/predictions.parquet")
    assert predictions["p_new"].between(0, 1).all() and set(predictions["image_id"]) == test_ids
    assert json.loads((root / "metrics/local_features.json").read_text())["crops"] == len(crops)
    pseudo = json.loads((root / "metrics/pseudo.json").read_text())
    assert pseudo["enabled"] and pseudo["test_images"] == len(test_ids)
    # the review page of every answered test photo
    report = json.loads((root / "metrics/report.json").read_text())
    assert report["queries"] == len(test_ids) and (root / "reports/review.html").stat().st_size == report["bytes"]


def _retrain_by_hand(root, outputs: str, last: bool, select_best: bool, epochs: int = 1) -> dict:
    """retrain run by hand (outputs under ``outputs``) on two test photos pseudo-labelled as one
    individual fold 0 trains (the first or ``last`` of them, on the first or last two test photos),
    with the project's (tiny) params and pseudo-labelling on (an earlier test turned it off); its
    metrics."""
    import subprocess
    import sys

    from tests.pipeline import env

    split = pd.read_parquet(root / "data/processed/split.parquet")
    crops = pd.read_parquet(root / "data/processed/crops/crops.parquet")
    trained = split[(~split.is_new) & (split.fold != 0)]["individual"].iloc[-1 if last else 0]
    test = crops[crops.part == "test"]
    test = test.tail(2) if last else test.head(2)
    pseudo = test[["image_id", "part", "crop_path"]].assign(individual=trained, species="x", confidence=0.9, margin=0.1,
                                                             fold=0)
    pseudo.to_parquet(root / f"pseudo_{outputs}.parquet", index=False)
    args = [sys.executable, "stages/retrain.py", "--fold", "0", "-S", "pseudo.enabled=true", "-S", f"retrain.epochs={epochs}",
            "-S", "retrain.init=dolg", "-S", f"dolg.select_best={str(select_best).lower()}",
            "--pseudo", f"pseudo_{outputs}.parquet", "--outputs", outputs]
    done = subprocess.run(args, cwd=root, env=env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads((root / outputs / "metrics/retrain/fold0.json").read_text())


def test_training_validates_each_epoch_exactly_as_knn_rank_cross_validates(project):
    """The epoch train-dolg keeps, and retrain's choice between its starting weights and its epochs,
    are chosen by the very figure knn-rank reports: the fold's embedding CV MAP@5 (rare individuals'
    photos among the queries, pseudo-labelled test photos never in the gallery). So retraining cannot
    lower it."""
    from photoid.retrieval.evaluation import load_fold_sets, rank_sets, scores
    from photoid.train.fold import EVERY_ENTRY

    def cv_figures(embeddings, folds, split, search):  # knn-rank's embedding CV figures of one set of embeddings
        result = rank_sets(load_fold_sets(embeddings, folds), folds, split, search)
        return scores(result.cv, result.thresholds)

    root, _ = project
    split = pd.read_parquet(root / "data/processed/split.parquet")
    emb = root / "data/processed/embeddings"
    dolg = json.loads((root / "metrics/dolg/fold0.json").read_text())
    before = cv_figures(emb / "dolg", [0], split, EVERY_ENTRY)
    assert dolg["val_map5"] == pytest.approx(before["map5"], abs=1e-9)
    assert dolg["val_map5_known"] == pytest.approx(before["map5_known"], abs=1e-9)
    # retrain on two (wrong or right) pseudo-labels, its starting weights competing with its epoch
    m = _retrain_by_hand(root, "validate", last=True, select_best=True)
    after = cv_figures(root / "validate" / emb.relative_to(root) / "retrain", [0], split, EVERY_ENTRY)
    assert m["retrained"] and m["val_map5"] == pytest.approx(after["map5"], abs=1e-9)
    assert after["map5"] >= before["map5"] - 1e-9


def test_dvc_plots_show_draws_every_plot_without_a_warning(project):
    import subprocess
    import sys

    from tests.pipeline import env

    root, _ = project
    done = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json"], cwd=root, env=env(),
                          capture_output=True, text=True)
    assert done.returncode == 0 and "WARNING" not in done.stderr, done.stderr
    shown = json.loads(done.stdout)
    assert not shown.get("errors")
    for name in ["cv-map5-by-threshold", "top-score-known-and-new", "map5-per-species", "reliability-of-p-new",
                 "metrics/curves/dolg/fold0/plots/metrics/val_map5.tsv",
                 "metrics/curves/backbone/fold0/plots/metrics/val_accuracy.tsv"]:
        assert name in shown["data"], sorted(shown["data"])
    assert not any(k.endswith("metrics.json") for k in shown["data"])  # no summary DVC cannot draw


def test_second_repro_runs_nothing(project):
    root, _ = project
    again = dvc(root, "repro")
    assert stages_run(again) == []


def test_a_stage_run_by_hand_with_no_options_trains_what_dvc_repro_trained(project):
    """params.yaml is the only source of parameters: the script needs no option but its fold (and,
    here, outputs beside DVC's) to train the very weights `dvc repro` trained."""
    import subprocess
    import sys

    import torch

    from tests.pipeline import env

    root, _ = project
    hand = ["--outputs", "hand"]
    subprocess.run([sys.executable, "stages/train_backbone.py", "--fold", "0", *hand], cwd=root, env=env(), check=True,
                   capture_output=True)
    a = torch.load(root / "models/backbone/fold0/model.pt", weights_only=False)
    b = torch.load(root / "hand/models/backbone/fold0/model.pt", weights_only=False)
    assert a["config"] == b["config"] and a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    # and one value changed for one run, as `dvc exp run -S` would change it, trains something else
    subprocess.run([sys.executable, "stages/train_backbone.py", "--fold", "0", *hand, "--set", "train.seed=1"], cwd=root,
                   env=env(), check=True, capture_output=True)
    c = torch.load(root / "hand/models/backbone/fold0/model.pt", weights_only=False)
    assert not all(torch.equal(a["state_dict"][k], c["state_dict"][k]) for k in a["state_dict"])


def _identify(root, *args):
    import subprocess
    import sys

    from tests.pipeline import env

    return subprocess.run([sys.executable, "-m", "photoid.console", "identify", *args], cwd=root, env=env(),
                          capture_output=True, text=True)


def test_the_demo_review_page_draws_a_candidates_matches_when_clicked(project, tmp_path):
    """The report stage's page in headless Chromium: a click on the candidate with the most verified
    matches draws the two photos from their views with a line for each match knn-rank kept."""
    from tests.test_review_page import drawn_match

    root, _ = project
    drawn = drawn_match(root / "reports" / "review.html", tmp_path / "profile")
    matches = pd.read_parquet(root / "data/processed/matches.parquet")
    assert drawn["lines"] == drawn["stated"] == matches["inliers"].max() > 0
    assert len(list((root / "reports" / "review_views").glob("*.jpg"))) == json.loads(
        (root / "metrics/report.json").read_text())["views"] > 0


def test_identify_answers_test_photos_exactly_as_knn_rank_did(project, tmp_path):
    root, _ = project
    images = pd.read_parquet(root / "data/interim/ingest/images.parquet")
    test = images[images.part == "test"].head(3)
    done = _identify(root, *test["path"], "--out", str(tmp_path / "answers.csv"), "--html", str(tmp_path / "review.html"),
                     "-q")
    assert done.returncode == 0, done.stderr
    answers = pd.read_csv(tmp_path / "answers.csv")
    submitted = pd.read_csv(root / "data/processed/submission.csv").set_index("image")["predictions"]
    assert answers["image"].tolist() == test["path"].tolist()
    assert answers["predictions"].tolist() == [submitted[i] for i in test["image_id"]]
    predictions = pd.read_parquet(root / "data/processed/predictions.parquet").set_index("image_id")
    assert np.allclose(answers["p_new"], predictions.loc[test["image_id"], "p_new"], atol=1e-6)
    assert set(answers["box_source"]) <= {"detector", "full_frame"} and answers["box_x2"].gt(answers["box_x1"]).all()
    assert "3 answered, 0 not" in done.stderr
    # the review page of those answers: each photo (named by its path, as its export names it) beside its candidates
    page = (tmp_path / "review.html").read_text()
    data = json.loads(page.split("const DATA = ", 1)[1].split(";\n", 1)[0].replace("<\\/", "</"))
    assert [r["q"] for r in data["rows"]] == test["path"].tolist()
    assert [" ".join(a["id"] for a in r["answers"]) for r in data["rows"]] == answers["predictions"].tolist()
    shown = {r["q"] for r in data["rows"]} | {a["photo"] for r in data["rows"] for a in r["answers"] if a["photo"]}
    assert set(data["thumbs"]) == shown and all(t.startswith("data:image/jpeg;base64,") for t in data["thumbs"].values())


def test_identify_answers_a_copy_of_a_training_photo_with_its_individual(project, tmp_path):
    """The same bytes under another name: that photo's individual first at score 1, P(new) 0, the training
    photo named; a photo of the same individual that is no copy keeps its ranked answer."""
    import shutil

    root, _ = project
    images = pd.read_parquet(root / "data/interim/ingest/images.parquet")
    train = images[images.part == "train"].iloc[3]
    shutil.copy(root / train["path"], tmp_path / "renamed.jpg")
    other = images[images.part == "test"].iloc[0]
    done = _identify(root, str(tmp_path / "renamed.jpg"), str(root / other["path"]), "--out", str(tmp_path / "a.csv"), "-q")
    assert done.returncode == 0, done.stderr
    answers = pd.read_csv(tmp_path / "a.csv", keep_default_na=False).set_index("image")
    copy = answers.loc[str(tmp_path / "renamed.jpg")]
    assert (copy["id1"], float(copy["score1"]), float(copy["p_new"])) == (train["individual"], 1.0, 0.0)
    assert copy["copy_of"] == train["path"] and "1 exact copies of training photos" in done.stderr
    assert answers.loc[str(root / other["path"]), "copy_of"] == ""
    submitted = pd.read_csv(root / "data/processed/submission.csv").set_index("image")["predictions"]
    assert answers.loc[str(root / other["path"]), "predictions"] == submitted[other["image_id"]]


def test_identify_answers_what_it_can_and_names_what_it_cannot(project, tmp_path):
    root, _ = project
    photo = pd.read_parquet(root / "data/interim/ingest/images.parquet").query("part == 'test'")["path"].iloc[0]
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a photo")
    done = _identify(root, photo, str(tmp_path / "missing.jpg"), str(tmp_path / "notes.txt"), str(tmp_path / "empty"), "-q",
                     "--json")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and json.loads(done.stdout.splitlines()[0])["image"] == photo
    assert "missing.jpg: does not exist" in done.stderr and "notes.txt:" in done.stderr
    assert "empty: an empty folder" in done.stderr and "1 answered, 3 not" in done.stderr
    # nothing to answer: exit 2, and so without a pipeline run (a clear message, no traceback)
    assert _identify(root, str(tmp_path / "missing.jpg"), "-q").returncode == 2
    nowhere = _identify(root, photo, "--from", str(tmp_path), "-q")
    assert nowhere.returncode == 2 and "run the pipeline first" in nowhere.stderr and "Traceback" not in nowhere.stderr


def test_min_samples_reruns_filter_and_after_only(project):
    root, _ = project
    before = json.loads((root / "metrics/filter.json").read_text())
    set_params(root / "params.yaml", {"filter.min_samples": 5})
    out = dvc(root, "repro")
    assert stages_run(out) == ["filter", "split", *TRAINING_ONWARD]
    assert set(stages_skipped(out)) == {"ingest", "detect", "crop", "local-features"}
    after = json.loads((root / "metrics/filter.json").read_text())
    assert after["min_samples"] == 5 and after["individuals_after"] <= before["individuals_after"]


def test_dolg_param_reruns_train_dolg_and_what_follows(project):
    root, _ = project
    set_params(root / "params.yaml", {"dolg.subcenters": 1})
    out = dvc(root, "repro")
    assert stages_run(out) == TRAINING_ONWARD[1:]
    assert "train-backbone@0" in stages_skipped(out)


def test_exp_run_img_size_reruns_training_onward_not_the_data_stages(project):
    root, _ = project
    out = dvc(root, "exp", "run", "-S", "train.img_size=40")
    # crop reads train.img_size (its crops follow it where crop.side is 0); here crop.side is set, so it writes the
    # same crops again and nothing that reads them runs but training
    assert stages_run(out) == ["crop", *TRAINING_ONWARD]
    assert set(DATA_STAGES) - {"crop"} <= set(stages_skipped(out))
    assert json.loads((root / "metrics/embed/fold0.json").read_text())["img_size"] == 40


RANKINGS = {"pseudo-label", "retrain@0", "knn-rank", "report"}  # retrain (and report) follow only if their inputs changed


def test_exp_run_knn_threshold_reruns_the_rankings_not_training_and_the_metrics_show_it(project):
    root, _ = project
    baseline_pseudo_labels = json.loads((root / "metrics/pseudo.json").read_text())["pseudo_labels"]
    out = dvc(root, "exp", "run", "-S", "knn.threshold=2.0")  # above every similarity: new_individual first
    # pseudo-label ranks with knn-rank's threshold rule; retrain re-runs only where its labels changed (with a
    # threshold above every score no label is left, so it does where the default run had some)
    assert {"pseudo-label", "knn-rank", "report"} <= set(stages_run(out)) <= RANKINGS
    assert ("retrain@0" in stages_run(out)) == (json.loads((root / "metrics/pseudo.json").read_text())["pseudo_labels"]
                                                != baseline_pseudo_labels)
    assert {"train-backbone@0", "train-dolg@0", "local-features"} <= set(stages_skipped(out))
    knn = json.loads((root / "metrics/knn.json").read_text())
    assert knn["threshold"] == 2.0 and knn["test_new_recall"] == 1.0
    sub = pd.read_csv(root / "data/processed/submission.csv")
    assert all(p.startswith("new_individual ") for p in sub["predictions"])
    diff = dvc(root, "metrics", "diff")
    assert "metrics/knn.json" in diff and "threshold" in diff
    shown = dvc(root, "exp", "show", "--no-pager", "--csv")
    assert "cv_map5" in shown and "knn.threshold" in shown


def test_exp_run_rerank_param_reruns_the_rankings_not_the_keypoint_cache_nor_training(project):
    root, _ = project
    out = dvc(root, "exp", "run", "-S", "rerank.candidates=10")
    assert {"pseudo-label", "knn-rank"} <= set(stages_run(out)) <= RANKINGS
    assert "local-features" in stages_skipped(out) and "train-dolg@0" in stages_skipped(out)
    knn = json.loads((root / "metrics/knn.json").read_text())
    assert knn["rerank_figures"]["candidates"] == 10
    out = dvc(root, "exp", "run", "-S", "rerank.enabled=false")
    assert {"pseudo-label", "knn-rank"} <= set(stages_run(out)) <= RANKINGS
    knn = json.loads((root / "metrics/knn.json").read_text())
    assert not knn["rerank"] and knn["cv_map5"] == knn["embedding_cv_map5"]
    assert not json.loads((root / "metrics/pseudo.json").read_text())["rerank"]


def test_pseudo_labels_are_cut_on_the_ranking_knn_rank_answers_with(project, tmp_path):
    """With re-ranking on, pseudo-label ranks the CV queries exactly as knn-rank does (shortlists
    verified by local features, fused P(same), the threshold tuned on it), so the cut that reaches
    pseudo.precision on CV is on the scale of the answers users get: knn-rank run on the same
    (train-dolg's) embeddings reports the same CV MAP@5 and new_individual threshold. knn-rank reads
    the local evidence pseudo-label computed (its memo) and answers exactly as it does without it."""
    import subprocess
    import sys

    from tests.pipeline import env

    root, _ = project
    common = ["-S", "rerank.enabled=true"]  # (an earlier test may have turned either off)
    pseudo = subprocess.run([sys.executable, "stages/pseudo_label.py", *common, "-S", "pseudo.enabled=true",
                             "--out", str(tmp_path / "p.parquet"), "--metrics", str(tmp_path / "p.json"),
                             "--evidence-out", str(tmp_path / "memo")],
                            cwd=root, env=env(), capture_output=True, text=True)
    assert pseudo.returncode == 0, pseudo.stderr

    def knn_rank(out: Path, memo: Path):
        done = subprocess.run([sys.executable, "stages/knn_rank.py", *common, "--embeddings", "data/processed/embeddings/dolg",
                               "--evidence", str(memo), "--matches-out", str(out / "matches.parquet"),
                               *[a for name in ("submission-out", "predictions-out", "metrics", "plots", "reliability",
                                                "ranker-out")
                                 for a in (f"--{name}", str(out / name))]],
                              cwd=root, env=env(), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return json.loads((out / "metrics").read_text())

    k = knn_rank(tmp_path, tmp_path / "memo")
    alone = knn_rank(tmp_path / "alone", tmp_path / "no memo")
    assert k["rerank_figures"]["catalogue_seconds"] < alone["rerank_figures"]["catalogue_seconds"] / 3
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "predictions-out"),
                                  pd.read_parquet(tmp_path / "alone" / "predictions-out"))
    p = json.loads((tmp_path / "p.json").read_text())
    assert p["rerank"] and k["rerank"]
    assert p["cv_map5_as_ranked"] == k["cv_map5"] and p["new_individual_threshold"] == k["threshold"]
    assert p["cv_map5_before_retrain"] == k["embedding_cv_map5"]
    assert p["threshold"] is None or 0 <= p["threshold"] <= 1  # a margin of probabilities


def test_pseudo_labelling_off_passes_the_models_through(project):
    root, _ = project
    set_params(root / "params.yaml", {"pseudo.enabled": False})
    out = dvc(root, "repro")
    # knn-rank follows only if retrain's output changed (it had trained on pseudo-labels before)
    assert stages_run(out)[:2] == ["pseudo-label", "retrain@0"] and set(stages_run(out)) <= {
        "pseudo-label", "retrain@0", "knn-rank", "report"}
    retrain = json.loads((root / "metrics/retrain/fold0.json").read_text())
    assert retrain["retrained"] is False and "off" in retrain["reason"]
    assert (root / "models/retrain/fold0/model.pt").read_bytes() == (root / "models/dolg/fold0/model.pt").read_bytes()


def test_retrain_trains_on_pseudo_labels_and_embeds_with_the_new_model(project):
    import numpy as np

    root, _ = project
    split = pd.read_parquet(root / "data/processed/split.parquet")
    crops = pd.read_parquet(root / "data/processed/crops/crops.parquet")
    # fine-tunes train-dolg's model (retrain.init dolg) for one epoch and keeps that epoch
    m = _retrain_by_hand(root, "rt", last=False, select_best=False)
    assert m["retrained"] and m["pseudo_rows"] == 2 and m["train_images"] == m["pseudo_rows"] + len(
        split[(~split.is_new) & (split.fold != 0)])
    new = np.load(root / "rt/data/processed/embeddings/retrain/fold0/embeddings.npy")
    old = np.load(root / "data/processed/embeddings/dolg/fold0/embeddings.npy")
    assert new.shape[0] == old.shape[0] == len(crops) and not np.allclose(new, old)


def test_retrain_that_keeps_its_starting_weights_gives_embeds_own_embeddings(project):
    """When no epoch beats the starting weights (train-dolg's model), retrain's embeddings are the
    embed stage's embeddings of that model, byte for byte (copied, not computed again), and its
    metrics say so."""
    root, _ = project
    m = _retrain_by_hand(root, "kept", last=False, select_best=True, epochs=0)
    assert m["retrained"] and m["epoch_kept"] == 0 and "copied" in m["embeddings"]
    for name in ("embeddings.npy", "flipped.npy", "rows.parquet", "meta.json"):
        assert ((root / "kept/data/processed/embeddings/retrain/fold0" / name).read_bytes()
                == (root / "data/processed/embeddings/dolg/fold0" / name).read_bytes())


def test_embeddings_are_reused_only_for_the_model_and_crops_that_made_them(project, tmp_path):
    from photoid.embed import embedded_by

    root, _ = project
    emb, model = root / "data/processed/embeddings/dolg/fold0", root / "models/dolg/fold0/model.pt"
    crops = pd.read_parquet(root / "data/processed/crops/crops.parquet")
    assert embedded_by(emb, model, crops, flip=True)
    assert not embedded_by(emb, model, crops, flip=False)  # the set has flips; a set without was asked for
    assert not embedded_by(emb, model, crops.iloc[::-1], flip=True)  # other order: rows would not line up
    assert not embedded_by(emb, model, crops.iloc[1:], flip=True)
    other = tmp_path / "model.pt"  # another model file: one byte changed
    data = bytearray(model.read_bytes())
    data[-1] ^= 1
    other.write_bytes(bytes(data))
    assert not embedded_by(emb, other, crops, flip=True)
    assert not embedded_by(tmp_path / "missing", model, crops, flip=True)


def test_kill_9_mid_run_resumes_to_the_same_weights(project):
    """A training stage killed with SIGKILL mid-run and started again ends where an uninterrupted run ends."""
    import signal
    import subprocess
    import sys
    import time

    import torch

    from tests.pipeline import env

    root, _ = project
    args = [sys.executable, "stages/train_backbone.py", "--fold", "0", "-S", "train.img_size=48",
            "-S", "train.batch_size=4", "-S", "backbone.epochs=6", "-S", "train.seed=3"]

    def outputs(tag):
        return ["--outputs", f"kill/{tag}"]

    subprocess.run(args + outputs("straight"), cwd=root, env=env(), check=True, capture_output=True)
    state = root / "kill/resumed/checkpoints/backbone/fold0/state.pt"
    proc = subprocess.Popen(args + outputs("resumed"), cwd=root, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and torch.load(state, weights_only=False)["epoch"] >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(state, weights_only=False)["epoch"]
    assert 1 <= killed_at < 5 and not (root / "kill/resumed/models/backbone/fold0/model.pt").exists()
    again = subprocess.run(args + outputs("resumed"), cwd=root, env=env(), check=True, capture_output=True, text=True)
    assert f"resuming from epoch {killed_at + 1}" in again.stdout
    a = torch.load(root / "kill/straight/models/backbone/fold0/model.pt", weights_only=False)["state_dict"]
    b = torch.load(root / "kill/resumed/models/backbone/fold0/model.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not state.exists()  # removed once the model was written


def test_a_model_on_every_labelled_photo_answers_the_test_photos(project, tmp_path):
    """ensemble.folds [0, all]: fold all trains on every labelled photo (no validation, not retrained)
    and ranks the test photos; fold 0 alone still cross-validates, so CV and the threshold do not move;
    photoid identify answers with the same model."""
    root, _ = project
    before = json.loads((root / "metrics/knn.json").read_text())
    out = dvc(root, "exp", "run", "-S", "ensemble.folds=[0,all]")
    assert {"train-backbone@all", "train-dolg@all", "embed@all", "retrain@all", "knn-rank"} <= set(stages_run(out))
    assert {"train-backbone@0", "train-dolg@0", "embed@0"} <= set(stages_skipped(out))
    knn = json.loads((root / "metrics/knn.json").read_text())
    assert knn["folds"] == [0, "all"] and knn["test_folds"] == ["all"]
    assert (knn["cv_map5"], knn["threshold"]) == (before["cv_map5"], before["threshold"])
    split = pd.read_parquet(root / "data/processed/split.parquet")
    dolg = json.loads((root / "metrics/dolg/foldall.json").read_text())
    assert dolg["train_images"] == len(split) and dolg["classes"] == split["individual"].nunique()
    assert "val_map5" not in dolg
    assert json.loads((root / "metrics/retrain/foldall.json").read_text())["retrained"] is False
    images = pd.read_parquet(root / "data/interim/ingest/images.parquet")
    test = images[images.part == "test"].head(2)
    done = _identify(root, *test["path"], "--out", str(tmp_path / "answers.csv"), "-q")
    assert done.returncode == 0, done.stderr
    submitted = pd.read_csv(root / "data/processed/submission.csv").set_index("image")["predictions"]
    assert pd.read_csv(tmp_path / "answers.csv")["predictions"].tolist() == [submitted[i] for i in test["image_id"]]
    set_params(root / "params.yaml", {"ensemble.folds": [0]})


def test_marine_sample_runs_through_every_stage(tmp_path, marine_sample):
    """Real photos with messy labels and no test part: every stage runs, CV metrics come out, the
    submission is an empty table with its header, and nothing is lost."""
    root = make_project(tmp_path / "marine", {
        "data.source": "csv", "data.group_col": "", "data.root": str(marine_sample),
        "data.labels": "dolphin.csv,seal.csv,whale.csv", "data.image_col": "Image", "data.individual_col": "UniqueID,ID",
        "filter.min_samples": 3})
    out = dvc(root, "repro")
    assert stages_run(out) == ALL_STAGES
    images = pd.read_parquet(root / "data/interim/ingest/images.parquet")
    rejected = pd.read_parquet(root / "data/interim/ingest/rejected.parquet")
    assert len(images) + len(rejected) == 58
    sub = pd.read_csv(root / "data/processed/submission.csv")
    assert list(sub.columns) == ["image", "predictions"] and sub.empty
    knn = json.loads((root / "metrics/knn.json").read_text())
    assert knn["test_images"] == 0 and "test_map5" not in knn and 0 <= knn["cv_map5"] <= 1
    assert set(knn["cv_map5_per_species"]) <= {"dolphin", "seal", "whale"}
    assert json.loads((root / "metrics/retrain/fold0.json").read_text())["retrained"] is False


def test_a_second_machine_pulls_every_output_from_a_dvc_remote_and_has_nothing_to_run(project, tmp_path):
    """Data and models shared through a DVC remote (a local folder here; s3://, ssh:// or gs:// the same way):
    `dvc push` where the pipeline ran, `git clone` and `dvc pull` on another machine, and there `dvc repro`
    runs nothing: its outputs are the very ones the lock names."""
    root, _ = project
    store = tmp_path / "store"
    here = tmp_path / "here"  # the machine that ran it: HEAD's lock, the project's cache (whatever earlier tests left)
    run(["git", "clone", "-q", str(root), str(here)], tmp_path)
    dvc(here, "cache", "dir", "--local", str(root / ".dvc" / "cache"))
    dvc(here, "remote", "add", "--local", "-d", "store", str(store))
    dvc(here, "push")
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(root), str(clone)], tmp_path)
    assert not (clone / "models").exists()  # git carries the code, params, lock and metrics; not data or models
    dvc(clone, "remote", "add", "--local", "-d", "store", str(store))
    dvc(clone, "pull")
    assert "up to date" in dvc(clone, "status")
    assert stages_run(dvc(clone, "repro")) == []
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    model = next(o for o in lock["stages"]["train-dolg@0"]["outs"] if o["path"] == "models/dolg/fold0")
    assert (clone / "models/dolg/fold0/model.pt").stat().st_size > 0 and model["nfiles"] >= 1


def test_two_machines_rendezvous_under_torchrun_and_train_one_model(project, tmp_path):
    """The multi-node command as two machines would run it: one torchrun per node, both given the same
    rendezvous endpoint and id (here both on this machine, one gloo process each). They form one job of
    two ranks: rank 0 alone reports and writes the model."""
    import socket
    import subprocess
    import sys

    from tests.pipeline import env

    root, _ = project
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
            "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "photoid-test",
            "stages/train_backbone.py", "--fold", "0", "--outputs", str(tmp_path / "out")]
    nodes = [subprocess.Popen(node, cwd=root, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [n.communicate(timeout=600)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outputs
    assert sum("train-backbone fold 0:" in o for o in outputs) == 1  # one job of two ranks, not two jobs of one
    assert (tmp_path / "out/models/backbone/fold0/model.pt").exists()
    assert json.loads((tmp_path / "out/metrics/backbone/fold0.json").read_text())["train_images"] > 0


def test_queued_experiments_run_at_once_in_a_dvc_queue(project, tmp_path, monkeypatch):
    """Several experiments at once, as the README says: `dvc exp run --queue` each, then `dvc queue start
    --jobs 2` (with PHOTOID_GPU=claim each stage process would take a GPU of its own on a GPU box, and
    PHOTOID_CACHE lets them share one crop cache). Both run to the end and show in `dvc exp show`
    with their own params and metrics; the workspace is left as it was."""
    import csv
    import io
    import time

    root, _ = project
    before = (root / "metrics/knn.json").read_text()
    for share in ("0.3", "0.7"):
        dvc(root, "exp", "run", "--queue", "-S", f"knn.threshold=new_share:{share}")
    monkeypatch.setenv("PHOTOID_GPU", "claim")  # the workers pass the environment of `dvc queue start` on
    monkeypatch.setenv("PHOTOID_CACHE", str(tmp_path / "shared-cache"))
    try:
        dvc(root, "queue", "start", "--jobs", "2")
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            status = dvc(root, "queue", "status")
            if "Queued" not in status and "Running" not in status:
                break
            time.sleep(3)
    finally:
        dvc(root, "queue", "stop")
    assert status.count("Success") == 2, status
    rows = list(csv.DictReader(io.StringIO(dvc(root, "exp", "show", "--csv"))))
    done = {r["knn.threshold"]: r for r in rows if r["knn.threshold"].startswith("new_share:")}
    assert set(done) == {"new_share:0.3", "new_share:0.7"}
    shares = {k: float(r["test_new_first_share"]) for k, r in done.items()}
    assert shares["new_share:0.3"] < shares["new_share:0.7"]
    assert (root / "metrics/knn.json").read_text() == before
