"""The benchmark scripts still run (their figures are read by people, not asserted: no timings here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.pipeline import REPO


@pytest.mark.slow
def test_the_scale_bench_runs_every_stage_on_a_generated_set_and_reports_each(tmp_path):
    out = subprocess.run([sys.executable, "bench/scale.py", "--fraction", "0.004", "--workdir", str(tmp_path / "w"),
                          "--json", str(tmp_path / "scale.json")], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads((tmp_path / "scale.json").read_text())
    assert [r["stage"] for r in report["rows"]] == ["ingest", "crop", "filter", "split", "embed", "pseudo-label",
                                                    "retrain", "knn-rank"]
    assert all(r["seconds"] > 0 and r["peak_rss_mb"] > 0 and r["photos"] > 0 for r in report["rows"])
    assert report["demo"]["individuals"] == 60 and not (tmp_path / "w").exists()  # the scratch folder is removed


@pytest.mark.slow
def test_the_throughput_bench_compares_its_paths(tmp_path):
    out = subprocess.run([sys.executable, "bench/train_throughput.py", "--images", "32", "--batch-size", "8",
                          "--img-size", "32", "--epochs", "2", "--workers", "0", "--paths", "naive,cached",
                          "--json", str(tmp_path / "t.json")], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = json.loads((tmp_path / "t.json").read_text())
    assert [r["path"] for r in rows] == ["naive", "cached"] and all(r["img_per_s"] > 0 for r in rows)
