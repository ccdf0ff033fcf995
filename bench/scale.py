"""The pipeline's data and ranking stages at Happywhale's size, on this machine: seconds, photos per
second and peak memory per stage.

    python bench/scale.py --fraction 1.0     # ~51,000 training and ~28,000 test photos, ~15,000 individuals
    python bench/scale.py --fraction 0.1     # a tenth: the same table, to see how each stage grows

A demo data set of that size is generated first (Happywhale's shape: 15,000 known individuals with
uneven photo counts, mean 3.4, every one of them also in test, and 6,500 individuals seen only in
test, 2 photos each; times ``--fraction``), in the Happywhale layout with boxes and test truth, under
``--workdir``. Then each stage script runs as ``dvc repro`` would run it (its own process, the
project's params.yaml with the changes below), with the working folder as its project:

ingest (as a Happywhale set) -> crop (from the set's boxes: no detector is trained at this size on
a CPU) -> filter -> split -> embed (an untrained DOLG on ImageNet EfficientNet-Lite0 at
``--img-size``: the stage's cost does not depend on what the model learnt; its accuracy here means
nothing) -> pseudo-label -> retrain (passes the model through: its training cost is
bench/train_throughput.py's) -> knn-rank (embedding similarity; the local-feature re-ranking, whose
cost bench/rerank_cost.py measures, is off).

With ``--rerank`` the local-features stage runs too (after crop) and knn-rank re-ranks as the
defaults say (catalogue-wide LNBNN, RANSAC on the best, the fusion over the candidates), so its
row is the whole stage at that size; ``--set key=value`` (repeatable) changes params on top, e.g.
``--set local.max_keypoints=250 --set rerank.candidates=100``, the settings docs/scale.md names
for Happywhale's size. knn-rank's own log lines (each part's progress and seconds) are in the
stage log.

Peak RSS is the largest sum of resident memory over the stage's process and its children, sampled
every 0.1 s; peak anon the same for their anonymous memory alone (what a stage allocates; RSS also
counts the pages of files it maps, such as the keypoint store, which the page cache holds). Prints
the table and writes it as JSON (``--json``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import typer
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from photoid import paths  # noqa: E402
from photoid.data import demo  # noqa: E402
from photoid.data.schema import FULL_FRAME  # noqa: E402
from photoid.models import create_model, save_model  # noqa: E402
from photoid.params import load_params  # noqa: E402
from photoid.train.fold import FoldData, dolg_config, dolg_configs  # noqa: E402

app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)

HAPPYWHALE = dict(individuals=15_000, new_individuals=6_500, mean_images=3.4, test_known_fraction=1.0, test_per_new=2)


def anonymous_bytes(process: psutil.Process) -> int:
    """The process's anonymous resident memory (RssAnon: its own heap and arrays, not the pages of files
    it maps, such as the keypoint store, which the kernel's page cache holds and can drop)."""
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return process.memory_info().rss


def peak_rss(proc: subprocess.Popen, every: float = 0.1) -> tuple[int, float, float]:
    """Wait for ``proc``; return its exit code, the peak sum of RSS over it and its children (MB) and the
    peak sum of their anonymous memory (MB)."""
    peak, peak_anon, root = 0, 0, psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            processes = [root, *root.children(recursive=True)]
            total = sum(c.memory_info().rss for c in processes)
            anon = sum(anonymous_bytes(c) for c in processes)
        except (psutil.Error, OSError):
            total = anon = 0
        peak, peak_anon = max(peak, total), max(peak_anon, anon)
        time.sleep(every)
    return proc.returncode, peak / 2**20, peak_anon / 2**20


def run_stage(name: str, args: list[str], project: Path, log: Path) -> dict:
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n=== {name}: {' '.join(args)}\n")
        f.flush()
        proc = subprocess.Popen([sys.executable, str(REPO / "stages" / args[0]), *args[1:]], cwd=project, stdout=f,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
        code, rss, anon = peak_rss(proc)
    seconds = time.perf_counter() - t0
    if code:
        raise SystemExit(f"{name} failed (exit {code}); its output is in {log}")
    return {"stage": name, "seconds": seconds, "peak_rss_mb": rss, "peak_anon_mb": anon}


def bench_params(project: Path, data_root: Path, img_size: int, workers: int, rerank: bool = False,
                 overrides: list[str] = ()) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(source="happywhale", root=str(data_root), boxes=str(data_root / "boxes.csv"),
                          test_truth=str(data_root / "test_truth.csv"),
                          workers=workers)
    params["crop"].update(side=0, workers=workers)  # 0: the crops at train.img_size
    params["train"].update(img_size=img_size)
    params["embed"].update(workers=workers, batch_size=128)
    params["ensemble"]["folds"] = [0]  # one (untrained) model: the stages' cost per model
    params["rerank"]["enabled"] = rerank
    params["local"]["workers"] = workers
    for item in overrides:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if section not in params or name not in params[section]:
            raise typer.BadParameter(f"{key} is no param of params.yaml", param_hint="--set")
        params[section][name] = yaml.safe_load(value)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def given_boxes(project: Path) -> int:
    """boxes.parquet from the set's own boxes (what detect writes, without a detector)."""
    images = pd.read_parquet(project / paths.IMAGES_TABLE)
    has = images["box_x1"].notna()
    boxes = pd.DataFrame({"image_id": images["image_id"],
                          "x1": images["box_x1"].where(has, 0.0), "y1": images["box_y1"].where(has, 0.0),
                          "x2": images["box_x2"].where(has, images["width"]),
                          "y2": images["box_y2"].where(has, images["height"]),
                          "confidence": 1.0, "box_source": np.where(has, "given", FULL_FRAME)})
    (project / paths.BOXES_TABLE).parent.mkdir(parents=True, exist_ok=True)
    boxes.to_parquet(project / paths.BOXES_TABLE, index=False)
    return len(boxes)


def untrained_dolg(project: Path, img_size: int) -> None:
    """models/dolg/fold0 and models/backbone/fold0 as train-dolg and train-backbone would leave them, untrained."""
    bp, p, _ = dolg_configs(load_params(("train", "dolg"), project / "params.yaml", []))
    data = FoldData.of(pd.read_parquet(project / paths.SPLIT_TABLE), 0)
    config = dolg_config(bp, p, data)
    extra = {"classes": data.classes, "img_size": img_size, "fold": 0}
    save_model(project / "models/dolg/fold0/model.pt", create_model({**config, "pretrained": bp.pretrained}), config, extra)
    backbone = dict(kind="classifier", backbone=bp.backbone, n_classes=len(data.classes))
    save_model(project / "models/backbone/fold0/model.pt", create_model({**backbone, "pretrained": bp.pretrained}),
               backbone, {**extra, "pretrained": bp.pretrained})
    (project / "metrics/curves/dolg/fold0").mkdir(parents=True, exist_ok=True)


@app.command()
def main(fraction: float = typer.Option(1.0, help="Share of Happywhale's size."),
         workdir: Path = typer.Option(Path("/tmp/photoid-scale"), help="Scratch folder (replaced)."),
         img_size: int = typer.Option(64, help="Crop and embedding size."),
         width: int = typer.Option(320, help="Demo photo width (height: 3/4 of it)."),
         workers: int = typer.Option(2, help="Processes for ingest, crop and embed."),
         json_out: Path = typer.Option(None, "--json", help="Also write the rows to this JSON file."),
         rerank: bool = typer.Option(False, help="Run local-features and re-rank in knn-rank as the defaults do."),
         overrides: list[str] = typer.Option([], "--set", help="A param on top (key=value), repeatable."),
         keep: bool = typer.Option(False, help="Keep the scratch folder.")):
    if workdir.exists():
        shutil.rmtree(workdir)
    project, data_root, log = workdir / "project", workdir / "happywhale", workdir / "stages.log"
    project.mkdir(parents=True)
    shape = {k: (round(v * fraction) if k.endswith("individuals") else v) for k, v in HAPPYWHALE.items()}
    cfg = demo.DemoConfig(seed=0, width=width, height=width * 3 // 4, photos_per_encounter=1.0, **shape)
    t0 = time.perf_counter()
    counts = demo.generate(data_root, cfg, progress=False, workers=workers)
    generated = time.perf_counter() - t0
    photos = counts["train_images"] + counts["test_images"]
    print(f"demo at {fraction:g} x Happywhale: {counts['train_images']} training and {counts['test_images']} test photos "
          f"of {counts['individuals']} + {counts['new_individuals']} individuals, {cfg.width}x{cfg.height} px, generated "
          f"in {generated:.0f} s; machine: {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB",
          flush=True)
    bench_params(project, data_root, img_size, workers, rerank, overrides)
    rows = [run_stage("ingest", ["ingest.py"], project, log)]
    rows[-1]["photos"] = photos
    given_boxes(project)
    for name, args in [("crop", ["crop.py"]), ("filter", ["filter.py"]), ("split", ["split.py"])]:
        rows.append({**run_stage(name, args, project, log), "photos": photos})
    if rerank:
        rows.append({**run_stage("local-features", ["local_features.py"], project, log), "photos": photos})
        store = json.loads((project / "metrics/local_features.json").read_text())
        print(f"local-features: {store['keypoints_per_crop']:.0f} keypoints per photo, "
              f"{store['store_mb_per_1000_photos']:.0f} MB per 1,000 photos", flush=True)
    untrained_dolg(project, img_size)
    rows.append({**run_stage("embed", ["embed.py", "--fold", "0"], project, log), "photos": photos})
    test = int((pd.read_parquet(project / paths.CROPS_TABLE)["part"] == "test").sum())
    rows.append({**run_stage("pseudo-label", ["pseudo_label.py"], project, log), "photos": test})
    rows.append({**run_stage("retrain", ["retrain.py", "--fold", "0", "--set", "pseudo.enabled=false"], project, log),
                 "photos": photos})
    rows.append({**run_stage("knn-rank", ["knn_rank.py"], project, log), "photos": test})
    knn = json.loads((project / "metrics/knn.json").read_text())
    print(f"\n{'stage':<14} {'photos':>8} {'seconds':>9} {'photos/s':>9} {'peak RSS MB':>12} {'peak anon MB':>13}")
    for r in rows:
        r["photos_per_s"] = r["photos"] / r["seconds"]
        print(f"{r['stage']:<14} {r['photos']:>8} {r['seconds']:>9.1f} {r['photos_per_s']:>9.1f} {r['peak_rss_mb']:>12.0f} "
              f"{r['peak_anon_mb']:>13.0f}")
    figures = knn.get("rerank_figures") or {}
    if figures:
        print("knn-rank's re-ranking: " + ", ".join(f"{k.removesuffix('_seconds')} {figures[k]:.1f} s" for k in
                                                    ("catalogue_seconds", "verify_seconds", "fusion_seconds") if k in figures)
              + f", {figures.get('pairs', 0)} pairs verified")
    print(f"knn-rank ranked {knn.get('test_images')} test photos against the gallery and "
          f"{knn.get('cv_queries', '?')} CV queries; stage logs: {log}")
    if json_out:
        json_out.write_text(json.dumps({"fraction": fraction, "rerank": rerank, "set": overrides, "demo": counts,
                                        "generate_s": generated,
                                        "width": cfg.width, "height": cfg.height, "img_size": img_size,
                                        "cpus": os.cpu_count(), "rows": rows}, indent=1))
    if not keep:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    app()
