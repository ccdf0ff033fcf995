"""`dvc repro` of the data stages on a tiny demo, in a temporary git repository, and which stages a
param change re-runs."""

import json

import pandas as pd
import pytest

from tests.pipeline import dvc, make_project, set_params, stages_run, stages_skipped

DATA_STAGES = ["ingest", "detect", "crop", "filter", "split"]
ALL_STAGES = [*DATA_STAGES, "train-backbone@0", "train-dolg@0"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("pipeline") / "proj")
    first = dvc(root, "repro")
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
        assert json.loads((root / "metrics" / f"{name}.json").read_text())
    dolg = json.loads((root / "metrics/dolg/fold0.json").read_text())
    assert 0 <= dolg["val_map5"] <= 1 and 0 <= dolg["backbone_val_map5"] <= 1
    assert (root / "models/dolg/fold0/model.pt").exists()
    assert (root / "metrics/curves/dolg/fold0/plots/metrics").is_dir()  # dvclive curves
    assert not (root / "checkpoints/dolg/fold0/state.pt").exists()  # resume state removed once done
    detect = json.loads((root / "metrics/detect.json").read_text())
    assert detect["detected"] + detect["full_frame"] == len(images) and "map50" in detect
    # ultralytics wrote nothing outside the stage's outputs and left dvc.yaml alone
    assert not (root / "runs").exists() and not (root / "dvclive").exists()
    assert "dvclive" not in (root / "dvc.yaml").read_text()


def test_second_repro_runs_nothing(project):
    root, _ = project
    again = dvc(root, "repro")
    assert stages_run(again) == []


def test_min_samples_reruns_filter_and_after_only(project):
    root, _ = project
    before = json.loads((root / "metrics/filter.json").read_text())
    set_params(root / "params.yaml", {"filter.min_samples": 5})
    out = dvc(root, "repro")
    assert stages_run(out) == ["filter", "split", "train-backbone@0", "train-dolg@0"]
    assert set(stages_skipped(out)) == {"ingest", "detect", "crop"}
    after = json.loads((root / "metrics/filter.json").read_text())
    assert after["min_samples"] == 5 and after["individuals_after"] <= before["individuals_after"]


def test_dolg_param_reruns_train_dolg_only(project):
    root, _ = project
    set_params(root / "params.yaml", {"dolg.subcenters": 1})
    out = dvc(root, "repro")
    assert stages_run(out) == ["train-dolg@0"]
    assert "train-backbone@0" in stages_skipped(out)


def test_kill_9_mid_run_resumes_to_the_same_weights(project):
    """A training stage killed with SIGKILL mid-run and started again ends where an uninterrupted run ends."""
    import signal
    import subprocess
    import sys
    import time

    import torch

    from tests.pipeline import env

    root, _ = project
    args = [sys.executable, "stages/train_backbone.py", "--fold", "0", "--backbone", "resnet18", "--img-size", "48",
            "--batch-size", "4", "--epochs", "6", "--seed", "3"]

    def outputs(tag):
        return ["--out-dir", f"models/kill/{tag}", "--metrics", f"metrics/kill/{tag}.json",
                "--curves", f"metrics/kill/curves/{tag}", "--state-dir", f"checkpoints/kill/{tag}"]

    subprocess.run(args + outputs("straight"), cwd=root, env=env(), check=True, capture_output=True)
    state = root / "checkpoints/kill/resumed/state.pt"
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
    assert 1 <= killed_at < 5 and not (root / "models/kill/resumed/model.pt").exists()
    again = subprocess.run(args + outputs("resumed"), cwd=root, env=env(), check=True, capture_output=True, text=True)
    assert f"resuming from epoch {killed_at + 1}" in again.stdout
    a = torch.load(root / "models/kill/straight/model.pt", weights_only=False)["state_dict"]
    b = torch.load(root / "models/kill/resumed/model.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not state.exists()  # removed once the model was written
