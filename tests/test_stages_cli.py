"""The stage scripts as a user meets them: --help explains every option; bad input exits with
status 2 and a message that names the file and line, not a traceback."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.structure import PARAMS, load_stage


def _app(name):
    return load_stage(name).app


def _params(*changes):
    return ["--params", str(PARAMS), *[a for c in changes for a in ("--set", c)]]


@pytest.mark.parametrize("name", ["ingest", "detect", "crop", "local_features", "filter", "split", "train_backbone", "train_dolg",
                                  "embed", "pseudo_label", "retrain", "knn_rank"])
def test_help_explains_every_option(name):
    result = CliRunner().invoke(_app(name), ["--help"], terminal_width=200)
    assert result.exit_code == 0
    options = [line for line in result.output.splitlines() if line.strip().lstrip("│ ").startswith("--")]
    assert options, result.output
    for line in options:
        if "--help" in line:
            continue
        text = line.strip("│ ").split(None, 2)
        assert len(text) == 3 and len(text[2].strip()) > 10, f"{name}: option without help: {line}"


def test_ingest_bad_labels_exit_2_with_a_clear_message(tmp_path, photo):
    photo("set/whale/a.jpg")
    pd.DataFrame({"Image": ["a.jpg", "b.jpg"], "ID": ["W1", "W2"]}).to_csv(tmp_path / "set" / "whale.csv", index=False)
    result = CliRunner().invoke(_app("ingest"), [
        *_params("data.group_col=", "data.source=csv", f"data.root={tmp_path / 'set'}", "data.labels=whale.csv",
                 "data.image_col=Image", "data.individual_col=ID"),
        "--out-dir", str(tmp_path / "out"), "--metrics", str(tmp_path / "m.json")])
    assert result.exit_code == 2
    assert "b.jpg" in result.output and "whale.csv line 3" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_ingest_writes_tables_and_counts(tmp_path, photo):
    for n in range(3):
        photo(f"set/ind{n % 2}/{n}.jpg")
    (tmp_path / "set" / "ind0" / "broken.jpg").write_bytes(b"")
    out = tmp_path / "out"
    given = _params("data.group_col=", "data.source=folders", f"data.root={tmp_path / 'set'}")
    result = CliRunner().invoke(_app("ingest"), [*given, "--out-dir", str(out), "--metrics", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert (metrics["images"], metrics["rejected"], metrics["rejected_by_reason"]) == (3, 1, {"empty file": 1})
    assert pd.read_parquet(out / "rejected.parquet").image_id.tolist() == ["ind0/broken.jpg"]
    assert len(pd.read_parquet(out / "images.parquet")) == 3


def test_ingest_trains_on_confirmed_test_photos_and_counts_them(tmp_path, photo):
    for n in range(2):
        photo(f"set/ind{n}/{n}.jpg")
    photo("set/survey/t.jpg")
    out, m = tmp_path / "out", tmp_path / "m.json"
    base = _params("data.group_col=", "data.source=folders", f"data.root={tmp_path / 'set'}", "data.test_dir=survey")
    assert CliRunner().invoke(_app("ingest"), [*base, "--out-dir", str(out), "--metrics", str(m)]).exit_code == 0
    test_id = pd.read_parquet(out / "images.parquet").query("part == 'test'")["image_id"].item()
    (tmp_path / "set" / "confirmed.csv").write_text(f"image,individual_id\n{test_id},ind1\n")
    result = CliRunner().invoke(_app("ingest"), [*base, "--set", f"data.confirmed={tmp_path / 'set' / 'confirmed.csv'}",
                                                 "--out-dir", str(out), "--metrics", str(m)])
    assert result.exit_code == 0, result.output
    images = pd.read_parquet(out / "images.parquet").set_index("image_id")
    assert (images.loc[test_id, "part"], images.loc[test_id, "individual"]) == ("train", "ind1")
    metrics = json.loads(m.read_text())
    assert (metrics["confirmed"], metrics["train_images"], metrics["test_images"]) == (1, 3, 0)
    assert metrics["rejected"] == 0  # the decisions file beside the individuals' folders is a table, not a photo
    # one rule for every data file param: a relative path is read under data.root, as data.labels is
    relative = CliRunner().invoke(_app("ingest"), [*base, "--set", "data.confirmed=confirmed.csv", "--out-dir", str(out),
                                                   "--metrics", str(m)])
    assert relative.exit_code == 0, relative.output
    assert json.loads(m.read_text())["confirmed"] == 1
    for param in ("confirmed", "boxes", "test_truth"):
        missing = CliRunner().invoke(_app("ingest"), [*base, "--set", f"data.{param}=nowhere.csv", "--out-dir", str(out),
                                                      "--metrics", str(m)])
        assert missing.exit_code == 2 and f"check data.{param} in params.yaml" in missing.output
        assert str(tmp_path / "set" / "nowhere.csv") in missing.output and "Traceback" not in missing.output
