"""`dvc repro` of the data stages on a tiny demo, in a temporary git repository, and which stages a
param change re-runs."""

import json

import pandas as pd
import pytest

from tests.pipeline import dvc, make_project, set_params, stages_run, stages_skipped

DATA_STAGES = ["ingest", "detect", "crop", "filter", "split"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("pipeline") / "proj")
    first = dvc(root, "repro")
    return root, first


def test_repro_runs_every_data_stage_and_writes_the_tables(project):
    root, first = project
    assert stages_run(first) == DATA_STAGES
    images = pd.read_parquet(root / "data/interim/ingest/images.parquet")
    split = pd.read_parquet(root / "data/processed/split.parquet")
    crops = pd.read_parquet(root / "data/processed/crops/crops.parquet")
    assert len(crops) == len(images) and all((root / p).exists() for p in crops.crop_path)
    assert split.fold.max() == 1 and split.is_new.any()
    for name in DATA_STAGES:
        assert json.loads((root / "metrics" / f"{name}.json").read_text())
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
    assert stages_run(out) == ["filter", "split"]
    assert set(stages_skipped(out)) == {"ingest", "detect", "crop"}
    after = json.loads((root / "metrics/filter.json").read_text())
    assert after["min_samples"] == 5 and after["individuals_after"] <= before["individuals_after"]
