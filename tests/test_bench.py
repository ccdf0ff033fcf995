"""The benchmark scripts still run (their figures are read by people, not asserted: no timings here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.pipeline import REPO


@pytest.mark.slow
@pytest.mark.parametrize("rerank", [False, True])
def test_the_scale_bench_runs_every_stage_on_a_generated_set_and_reports_each(tmp_path, rerank):
    more = ["--rerank", "--set", "local.max_keypoints=250", "--set", "rerank.candidates=100"] if rerank else []
    out = subprocess.run([sys.executable, "bench/scale.py", "--fraction", "0.004", "--workdir", str(tmp_path / "w"),
                          "--json", str(tmp_path / "scale.json"), *more], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads((tmp_path / "scale.json").read_text())
    assert [r["stage"] for r in report["rows"]] == ["ingest", "crop", "filter", "split", *(["local-features"] * rerank),
                                                    "embed", "pseudo-label", "retrain", "knn-rank"]
    assert all(r["seconds"] > 0 and r["peak_rss_mb"] >= r["peak_anon_mb"] > 0 and r["photos"] > 0 for r in report["rows"])
    assert report["demo"]["individuals"] == 60 and not (tmp_path / "w").exists()  # the scratch folder is removed


@pytest.mark.slow
def test_the_throughput_bench_compares_its_paths(tmp_path):
    out = subprocess.run([sys.executable, "bench/train_throughput.py", "--images", "32", "--batch-size", "8",
                          "--img-size", "32", "--epochs", "2", "--workers", "0", "--paths", "naive,cached",
                          "--json", str(tmp_path / "t.json")], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = json.loads((tmp_path / "t.json").read_text())
    assert [r["path"] for r in rows] == ["naive", "cached"] and all(r["img_per_s"] > 0 for r in rows)


def _ablation_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("ablation", REPO / "bench" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_seed_spread_table_gives_mean_sd_and_range_over_the_seeds_that_ran():
    ablation = _ablation_module()
    table = {  # as `dvc exp show --csv` names them: bare keys, one `file:key` where a key is ambiguous
        "abl-demo-baseline-seed0": {"cv_queries": "74", "cv_map5": "0.70", "metrics/pseudo.json:pseudo_labels": "4"},
        "abl-demo-baseline-seed1": {"cv_queries": "74", "cv_map5": "0.80", "metrics/pseudo.json:pseudo_labels": "6"},
        "abl-demo-baseline-seed2": {"cv_queries": "74", "cv_map5": "0.90", "metrics/pseudo.json:pseudo_labels": "8"},
        "abl-demo-untrained-seed0": {"cv_map5": "0.65", "metrics/pseudo.json:pseudo_labels": "-"},
        "abl-demo-baseline": {"cv_map5": "0.10"},  # the plain row is not a seed of it
    }
    rows = [r for r in ablation.ROWS if r[0] in ("baseline", "untrained")]
    lines = ablation.spread_markdown("demo", rows, [0, 1, 2], table).splitlines()
    assert [c.strip() for c in lines[0].split("|")][4:7] == ["CV queries", "CV MAP@5", "pseudo-labels"]  # columns some run has
    baseline = [c.strip() for c in lines[2].split("|")]
    # mean 0.8, sample sd sqrt(((-.1)^2 + 0 + .1^2) / 2) = 0.1
    assert baseline[1:] == ["baseline", "–", "0,1,2", "74.0 ± 0.0 (74–74)", "0.800 ± 0.100 (0.700–0.900)",
                            "6.0 ± 2.0 (4–8)", ""]
    untrained = [c.strip() for c in lines[3].split("|")]
    assert untrained[3:7] == ["0", "–", "0.650 ± 0.000 (0.650–0.650)", "–"]
    assert "--seeds 0,1,2" in lines[-1]


def test_seed_runs_are_experiments_of_their_own():
    ablation = _ablation_module()
    assert ablation.exp_name("demo", "baseline") == "abl-demo-baseline"
    assert ablation.exp_name("marine", "untrained", 2) == "abl-marine-untrained-seed2"
    assert ablation.spread([0.5]) == (0.5, 0.0, 0.5, 0.5)


def test_the_headline_table_is_built_from_the_results_tables_and_the_demo_metrics(tmp_path, monkeypatch):
    import json

    ablation = _ablation_module()
    results = tmp_path / "results.md"
    table = ("| row | what | known top-1 | known MAP@5 | MAP@5 with new_individual | CV known MAP@5 | seconds |\n"
             "|---|---|---|---|---|---|---|\n"
             "| peer | sift | 0.100 | 0.150 | – | – | 9 |\n"
             "| default | photoid | 0.700 | 0.770 | 0.680 | 0.640 | 99 |\n"
             "| embedding | alone | 0.450 | 0.600 | 0.530 | 0.490 | 50 |\n")
    more_splits = "\nOver more splits:\n\n| row | splits | known top-1 |\n|---|---|---|\n| default | 4 | 0.999 (0.9–1.0) |\n"
    results.write_text("".join(f"<!-- real:{n}:start -->\n{table}{more_splits}<!-- real:{n}:end -->\n"
                               for n in ("cattle", "marine")))
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "knn.json").write_text(json.dumps({"test_top1_known": 0.7, "test_map5_known": 0.8,
                                                               "test_map5": 0.82, "embedding_test_map5_known": 0.75}))
    monkeypatch.setattr(ablation, "RESULTS", results)
    monkeypatch.setattr(ablation, "REPO", tmp_path)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in ablation.headline().splitlines()
            if line.startswith("| ")][1:]
    assert rows[0][1:] == ["0.700", "0.770", "0.680", "0.600", "0.150"]  # the first table's (one split)
    assert rows[2][1:] == ["0.700", "0.800", "0.820", "0.750", "–"]
    # a table over several splits with the default, embedding and peer rows: its means are the headline's
    splits = ("\n| row | splits | known top-1 | known MAP@5 | MAP@5 with new_individual | CV known MAP@5 |\n"
              "|---|---|---|---|---|---|\n| peer | 8 | 0.400 (0.2–0.5) | 0.530 (0.3–0.7) | – | – |\n"
              "| default | 8 | 0.690 (0.5–0.8) | 0.800 (0.7–0.9) | 0.710 (0.6–0.8) | 0.660 (0.4–0.8) |\n"
              "| embedding | 8 | 0.620 (0.5–0.8) | 0.760 (0.7–0.8) | 0.660 (0.5–0.7) | 0.610 (0.4–0.8) |\n")
    results.write_text(f"<!-- real:cattle:start -->\n{table}<!-- real:cattle:end -->\n"
                       f"<!-- real:marine:start -->\n{table}{splits}<!-- real:marine:end -->\n")
    lines = [line for line in ablation.headline().splitlines() if line.startswith("| ")][1:]
    marine = [c.strip() for c in lines[1].strip("|").split("|")]
    assert marine[1:] == ["0.690", "0.800", "0.710", "0.760", "0.530"] and "mean of 8 splits" in marine[0]


def test_rows_paired_photo_by_photo_get_intervals_that_tell_a_real_gap_from_none():
    """bench/real_data_splits.py: a row compared with itself differs by exactly 0 (ratio 1); a row better on
    every photo has its whole interval above 0 and above 1x; one photo's gain over 40 photos straddles 0."""
    sys.path.insert(0, str(REPO / "bench"))
    import numpy as np
    from real_data_splits import paired, photo_pairs

    rng = np.random.default_rng(0)
    b = rng.choice([0.0, 0.2, 0.25, 1 / 3, 0.5, 1.0], size=40)
    (d, lo, hi), (r, rlo, rhi) = paired(b, b)
    assert (d, lo, hi) == (0, 0, 0) and (r, rlo, rhi) == (1, 1, 1)
    (d, lo, hi), (r, rlo, rhi) = paired(np.minimum(b + 0.3, 1.0), b)
    assert 0 < lo <= d <= hi and rlo > 1
    one = b.copy()
    one[np.argmin(b)] = 1.0
    (d, lo, hi), _ = paired(one, b)
    assert lo <= 0 < d <= hi
    splits = [{"rows": {"default": {"per_photo": {"a": 1.0, "b": 0.5}}, "previous (abc1234)": {"per_photo": {"a": 0.5}}}},
              {"rows": {"default": {"per_photo": {"a": 0.2}}}}]
    x, y = photo_pairs(splits, "default", "previous")  # only the photos both rows answered, in splits with both
    assert x.tolist() == [1.0] and y.tolist() == [0.5]


def test_pairs_whose_rows_ran_on_different_machines_are_named():
    """bench/real_data_splits.py: a pair is named where its rows' recorded machines differ or one is not
    recorded, and not where they match or a split lacks one of the rows."""
    sys.path.insert(0, str(REPO / "bench"))
    from real_data_splits import machine_mismatches

    here, there = "CPU A, 2 cores; torch 2", "CPU B, 2 cores; torch 2"
    splits = [{"rows": {"default": {"machine": here}, "previous (abc1234)": {"machine": here}}},
              {"rows": {"default": {"machine": here}, "previous (abc1234)": {"machine": there}}},
              {"rows": {"default": {"machine": here}, "previous (abc1234)": {}}},
              {"rows": {"default": {"machine": there}}}]
    found = machine_mismatches(splits, "default", "previous")
    assert len(found) == 2 and found[0].startswith("split 1:") and there in found[0]
    assert found[1] == "split 2: machine not recorded"


def test_the_pipeline_timer_gives_each_stage_the_time_until_the_next_one_starts():
    import importlib.util
    spec = importlib.util.spec_from_file_location("pipeline_time", REPO / "bench" / "pipeline_time.py")
    timer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(timer)
    ticks = iter([0.0, 2.0, 12.0, 42.5, 50.0])  # start, ingest starts, detect starts, knn-rank starts, end
    lines = ["Verifying data sources\n", "Running stage 'ingest':\n", "> python stages/ingest.py\n",
             "epoch 1/2\r epoch 2/2\n", "Running stage 'detect':\n", "Running stage 'knn-rank':\n", "done\n"]
    stages, total = timer.stage_seconds(lines, clock=lambda: next(ticks))
    assert stages == [("ingest", 10.0), ("detect", 30.5), ("knn-rank", 7.5)] and total == 50.0
    assert "| detect | 30 | 61 % |" in timer.table(stages, total)
