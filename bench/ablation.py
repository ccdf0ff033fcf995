"""The ablation tables: `dvc exp run` variants from one baseline, results read back with `dvc exp show --csv`
and written into docs/results.md (never typed by hand); and the README's headline table, from the demo's
metrics/knn.json and the real-photo tables of docs/results.md (``--headline``).

    python bench/ablation.py --data demo                     # the built-in demo (about 50 min on 2 cores)
    python bench/ablation.py --data marine                   # ../shared/data/marine_sample (no test truth: CV only;
                                                             # CV over all 3 folds, about 35 min on 2 cores)
    python bench/ablation.py --data demo --rows baseline,untrained --no-write    # a few rows, print only
    python bench/ablation.py --headline                      # the README's headline table only
    python bench/ablation.py --data demo --rows baseline,backbone,untrained --seeds 0,1,2   # spread over seeds

Each row is one experiment named ``abl-<data>-<row>``: the workspace's params.yaml with the row's
``-S`` overrides (and, for the marine sample, the data params that point at it). Unchanged stages
are restored from DVC's run cache, so rows that only touch embed or knn-rank cost seconds. The
workspace (params.yaml, dvc.lock, metrics and outputs) is restored to HEAD after every row, so each
row re-runs only what it changes.
With ``--seeds``, each row runs once per training seed (``abl-<data>-<row>-seed<s>``, ``-S
train.seed=<s>``) and the table written is the spread over them (mean ± standard deviation, lowest
to highest), between docs/results.md's ``ablation:<data>:seeds`` markers: what one run's figure is worth,
and whether two rows differ by more than their seeds do.
Run it on a committed tree: `dvc exp run` records the experiments against HEAD. `dvc exp run`
detaches HEAD while it runs; if you stop the script mid-row, put your branch back with
`git checkout -B main HEAD` (or your branch's name) before committing.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import typer

REPO = Path(__file__).resolve().parents[1]

# (name, what it shows, -S overrides)
ROWS: list[tuple[str, str, list[str]]] = [
    ("baseline", "photoid's default: DOLG on ImageNet Lite0, adaptive margins, 2 sub-centres, flip TTA, pseudo-labels, fold 0 "
     "cross-validates and a model on every labelled photo answers the test photos, shortlists re-ranked by SIFT + RANSAC "
     "fused with the similarity", []),
    ("embedding-only", "ranked by embedding similarity alone (no local-feature re-ranking)", ["rerank.enabled=false"]),
    ("sift-only", "ranked by SIFT + RANSAC inliers alone, every gallery photo verified (no embedding)",
     ["rerank.score=inliers", "rerank.candidates=0", "rerank.photos=0"]),
    ("new-share", "new_individual first for the demo's true share of new test photos (50 of 90) instead of the tuned threshold",
     ["knn.threshold=new_share:0.56"]),
    ("photo-folds", "folds dealt photo by photo, an encounter's burst photos split over them (no data.group_col)",
     ["data.group_col="]),
    ("untrained", "untrained ImageNet features + KNN (no training at all)", ["embed.features=untrained", "pseudo.enabled=false"]),
    ("backbone", "plain backbone features (train-backbone's classifier, no DOLG)",
     ["embed.features=backbone", "pseudo.enabled=false"]),
    ("no-pseudo", "DOLG without pseudo-labels (no retrain)", ["pseudo.enabled=false"]),
    ("fixed-margin", "fixed ArcFace margin (margin_max for every class) instead of adaptive", ["dolg.margin_rule=fixed"]),
    ("one-subcentre", "1 sub-centre per class instead of 2", ["dolg.subcenters=1"]),
    ("no-query-flip", "queries without flip TTA (the crop alone)", ["knn.query_flip=false"]),
    ("gallery-entries", "gallery images entered as the crop and its mirror image, two entries (the default before "
     "the flip-TTA mean)", ["knn.gallery_flip=entries"]),
    ("no-gallery-flip", "gallery images as the crop alone (no mirror image)", ["knn.gallery_flip=false"]),
    ("no-flips", "no flip TTA at all (queries and gallery)", ["knn.query_flip=false", "knn.gallery_flip=false"]),
    ("train-hflip", "random mirror images in training", ["train.hflip=true"]),
    ("frozen-3", "the backbone's first 3 feature stages frozen instead of 2 (stride 8 kept as ImageNet has it)",
     ["train.frozen_stages=3"]),
    ("fold-0-answers", "fold 0's model answers the test photos (no model on every labelled photo)", ["ensemble.folds=[0]"]),
    ("3-folds", "3-fold ensemble cross-validates and answers the test photos (no model on every labelled photo)",
     ["ensemble.folds=[0,1,2]"]),
    ("224px", "crops and training at 224 px instead of 160 (twice the compute)", ["train.img_size=224"]),
    ("untrained-224px", "untrained ImageNet features + KNN at 224 px (the baseline of the 224px row)",
     ["embed.features=untrained", "pseudo.enabled=false", "train.img_size=224"]),
    ("scratch", "EfficientNet-Lite0 from scratch (random init, nothing frozen)",
     ["train.pretrained=false", "train.frozen_stages=0", "backbone.freeze_epochs=0", "dolg.freeze_epochs=0"]),
]

MARINE = ["data.source=csv", "data.labels=dolphin.csv,seal.csv,whale.csv", "data.image_col=Image",
          "data.individual_col=UniqueID,ID",
          # no test part, so no model on every labelled photo (it would answer nothing); every fold's model
          # cross-validates its own fold, so CV covers every photo: 74 queries, not fold 0's 25
          "ensemble.folds=[0,1,2]"]

# rows that mean nothing on the marine sample: it has no test part, no encounters, and its CV already runs every fold
DEMO_ONLY = {"new-share", "photo-folds", "fold-0-answers", "3-folds"}

COLUMNS = [  # (csv column suffix, header)
    ("metrics/knn.json:cv_queries", "CV queries"),
    ("metrics/knn.json:cv_map5", "CV MAP@5"),
    ("metrics/knn.json:cv_map5_known", "CV MAP@5 known"),
    ("metrics/knn.json:cv_map5_rare", "CV MAP@5 rare"),
    ("metrics/knn.json:test_map5", "test MAP@5"),
    ("metrics/knn.json:test_map5_known", "test MAP@5 known"),
    ("metrics/knn.json:embedding_cv_map5", "CV MAP@5, embedding only"),
    ("metrics/knn.json:embedding_test_map5", "test MAP@5, embedding only"),
    ("metrics/knn.json:cv_new_ece", "CV ECE of P(new)"),
    ("metrics/pseudo.json:pseudo_labels", "pseudo-labels"),
    ("metrics/pseudo.json:accuracy", "their precision"),
]
COUNTS = {"CV queries", "pseudo-labels"}  # headers whose cells are counts, not fractions


def run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=REPO, check=check, text=True)


def quoted(override: str) -> str:
    """`dvc exp run -S` reads a bare comma as a sweep: quote values that hold one."""
    key, value = override.split("=", 1)
    if "," in value and not value.startswith("["):
        return f'{key}="{value}"'
    return override


def restore() -> None:
    """The workspace back to HEAD's params, lock, metrics and outputs. DVC's run cache cannot restore a
    stage with uncached outputs (the training curves), so a row must not leave its models behind."""
    run(["git", "checkout", "--", "params.yaml", "dvc.lock", "metrics"], check=False)
    run(["git", "clean", "-fdq", "metrics"], check=False)
    run(["dvc", "checkout", "--force", "--quiet"], check=False)


def exp_table() -> dict[str, dict[str, str]]:
    out = subprocess.run(["dvc", "exp", "show", "--csv", "--all-commits", "--force"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    return {row["Experiment"]: row for row in csv.DictReader(io.StringIO(out)) if row.get("Experiment")}


def cell(row: dict[str, str], column: str) -> str | None:
    """A metric of an exp-show row: DVC names a column ``file:key`` only where the bare key is ambiguous."""
    key = column.split(":", 1)[1]
    for name in (column, key):
        if row.get(name) not in (None, "", "-", "!"):
            return row[name]
    return None


def fmt(value: str | None, count: bool = False) -> str:
    if value in (None, "", "-"):
        return "–"
    try:
        f = float(value)
    except ValueError:
        return value
    return f"{int(f)}" if count else f"{f:.3f}"


def exp_name(data: str, row: str, seed: int | None = None) -> str:
    """The experiment of a row (and, with ``--seeds``, of one training seed of it)."""
    return f"abl-{data}-{row}" if seed is None else f"abl-{data}-{row}-seed{seed}"


def spread(values: list[float]) -> tuple[float, float, float, float]:
    """(mean, sample standard deviation, lowest, highest) of one metric over seeds; sd 0 for one value."""
    n = len(values)
    mean = sum(values) / n
    sd = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return mean, sd, min(values), max(values)


def spread_cell(values: list[float], count: bool = False) -> str:
    if not values:
        return "–"
    mean, sd, lo, hi = spread(values)
    if count:
        return f"{mean:.1f} ± {sd:.1f} ({lo:.0f}–{hi:.0f})"
    return f"{mean:.3f} ± {sd:.3f} ({lo:.3f}–{hi:.3f})"


def spread_markdown(data: str, rows: list[tuple[str, str, list[str]]], seeds: list[int],
                    table: dict[str, dict[str, str]]) -> str:
    """One line per row: each metric's mean ± sd (lowest–highest) over the seeds that ran."""
    found = {name: [s for s in seeds if exp_name(data, name, s) in table] for name, _, _ in rows}
    cols = [c for c in COLUMNS if any(cell(table[exp_name(data, name, s)], c[0]) is not None
                                      for name, ss in found.items() for s in ss)]
    lines = ["| row | `-S` | seeds | " + " | ".join(h for _, h in cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for name, _, overrides in rows:
        runs = [table[exp_name(data, name, s)] for s in found[name]]
        cells = [spread_cell([float(v) for r in runs if (v := cell(r, c)) is not None], count=h in COUNTS)
                 for c, h in cols]
        lines.append(f"| {name} | {' '.join(f'`{o}`' for o in overrides) or '–'} | "
                     f"{','.join(map(str, found[name])) or '–'} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Written by `python bench/ablation.py --data {data} --rows {','.join(n for n, _, _ in rows)} "
                 f"--seeds {','.join(map(str, seeds))}` from `dvc exp show --csv` (a 2-core "
                 "CPU). Each cell: mean ± sample standard deviation over the training seeds (`train.seed`) that ran, "
                 "then the lowest and highest run. Columns as in the table above.")
    return "\n".join(lines)


def markdown(data: str, rows: list[tuple[str, str, list[str]]], table: dict[str, dict[str, str]]) -> str:
    cols = [c for c in COLUMNS if any(cell(table.get(exp_name(data, name), {}), c[0]) is not None
                                      for name, _, _ in rows)]
    lines = ["| row | what | `-S` | " + " | ".join(h for _, h in cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for name, what, overrides in rows:
        r = table.get(exp_name(data, name), {})
        lines.append(f"| {name} | {what} | {' '.join(f'`{o}`' for o in overrides) or '–'} | "
                     + " | ".join(fmt(cell(r, c), count=h in COUNTS) for c, h in cols) + " |")
    lines.append("")
    lines.append(f"Written by `python bench/ablation.py --data {data}` from `dvc exp show --csv` "
                 "(a 2-core CPU). "
                 "\"known\": MAP@5 over the photos of known individuals with `new_individual` never predicted, "
                 "i.e. how well known animals are found. \"rare\": MAP@5 of the CV photos of individuals too rare to "
                 "train on. \"embedding only\": the same run's embeddings ranked by "
                 "similarity alone, before re-ranking. ECE: expected calibration error of P(new individual), "
                 "cross-fitted on CV.")
    return "\n".join(lines)


def write_between(marker: str, text: str, page: Path) -> None:
    """Put ``text`` between ``page``'s ``<!-- <marker>:start -->`` and ``<!-- <marker>:end -->``."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    content = page.read_text()
    if start not in content or end not in content:
        raise SystemExit(f"{page} lacks the markers {start} ... {end}")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    page.write_text(f"{head}{start}\n{text}\n{end}{tail}")


RESULTS = REPO / "docs" / "results.md"
# the real-photo tables of docs/results.md (bench/real_data.py's) that the README's headline shows
HEADLINE_SETS = [("cattle", "Holstein2025 cow faces (real, 82 cows)"), ("marine", "Marine sample (real, 16 animals)")]


def real_tables(name: str) -> list[dict[str, list[str]]]:
    """The tables between docs/results.md's real:<name> markers, each as its rows by row name (the header
    row kept under "row")."""
    content = RESULTS.read_text()
    block = content.split(f"<!-- real:{name}:start -->", 1)[1].split(f"<!-- real:{name}:end -->", 1)[0]
    tables: list[dict[str, list[str]]] = []
    inside = False
    for line in block.splitlines():
        if not line.startswith("|"):
            inside = False
            continue
        if not inside:
            tables.append({})
            inside = True
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not cells[0].startswith("---"):
            tables[-1][cells[0]] = cells
    return tables


def headline_rows(name: str) -> tuple[dict[str, list[str]], int]:
    """The rows the headline reads for a real set, and over how many splits: the means of the table over
    several splits (bench/real_data_splits.py's, columns row | splits | ...) where it has the default,
    embedding and peer rows, else the first table (bench/real_data.py's, one split). The figure columns
    sit at the same places in both (2: known top-1, 3: known MAP@5, 4: MAP@5 with new_individual); a
    mean's cell is read without its range."""
    tables = real_tables(name)
    for table in tables:
        if table.get("row", [None, None])[1] == "splits" and {"default", "embedding", "peer"} <= set(table):
            splits = int(table["default"][1])
            return {k: [c.split(" (")[0] for c in v] for k, v in table.items()}, splits
    return tables[0], 1


def headline() -> str:
    """The README's headline table: known animals found by photoid's default, by its embedding alone and by
    an untrained SIFT matcher, on each real set of docs/results.md, and the demo's figures from metrics/knn.json."""
    lines = ["| set | photoid: known top-1 | known MAP@5 | MAP@5 with new_individual | embedding alone: known MAP@5 "
             "| untrained SIFT matcher (wildlife-tools): known MAP@5 |", "|---|---|---|---|---|---|"]
    for name, title in HEADLINE_SETS:
        rows, splits = headline_rows(name)
        d, e, p = rows["default"], rows["embedding"], rows["peer"]
        title = title if splits == 1 else f"{title[:-1]}; mean of {splits} splits)"
        lines.append(f"| {title} | {d[2]} | {d[3]} | {d[4]} | {e[3]} | {p[3]} |")
    knn = json.loads((REPO / "metrics" / "knn.json").read_text())
    lines.append(f"| Demo (generated, 90 test photos) | {knn['test_top1_known']:.3f} | {knn['test_map5_known']:.3f} | "
                 f"{knn['test_map5']:.3f} | {knn['embedding_test_map5_known']:.3f} | – |")
    lines += ["", "Known: the test photos of animals in the catalogue, `new_individual` taken out of the answers. "
              "Written by `python bench/ablation.py --headline` from the tables of [docs/results.md](docs/results.md) "
              "(a set measured over several splits: their mean) and the demo's `metrics/knn.json`."]
    return "\n".join(lines)


def main(
    data: str = typer.Option("demo", help="demo | marine"),
    rows: str = typer.Option("all", help="Comma-separated row names, or all."),
    marine_root: Path = typer.Option(REPO.parent / "shared" / "data" / "marine_sample", help="The marine sample."),
    write: bool = typer.Option(True, help="Write the table into docs/results.md (else print it only)."),
    headline_only: bool = typer.Option(False, "--headline", help="Only write the README's headline table (from "
                                       "docs/results.md and metrics/knn.json); run nothing."),
    run_experiments: bool = typer.Option(True, help="false: only rebuild the table from experiments already run."),
    seeds: str = typer.Option("", help="Comma-separated training seeds: each row runs once per seed and the table is "
                                       "the spread over them (docs/results.md markers ablation:<data>:seeds)."),
):
    if headline_only:
        text = headline()
        print(text)
        write_between("headline", text, REPO / "README.md")
        return
    every = [r for r in ROWS if data == "demo" or r[0] not in DEMO_ONLY]
    chosen = every if rows == "all" else [r for r in ROWS if r[0] in rows.split(",")]
    if not chosen:
        raise SystemExit(f"no such rows: {rows}; have {', '.join(r[0] for r in ROWS)}")
    base = [] if data == "demo" else [*MARINE, f"data.root={os.path.relpath(marine_root.resolve(), REPO)}"]
    if data == "marine" and not marine_root.is_dir():
        raise SystemExit(f"{marine_root} not found: the shared folder belongs beside the checkout")
    try:
        seed_list = [int(x) for x in seeds.split(",")] if seeds else []
    except ValueError:
        raise SystemExit(f"--seeds takes comma-separated integers (e.g. 0,1,2), not {seeds!r}") from None
    runs = [(name, overrides, seed) for name, _, overrides in chosen for seed in (seed_list or [None])]
    start = time.perf_counter()
    if run_experiments:
        try:
            for name, overrides, seed in runs:
                exp = exp_name(data, name, seed)
                subprocess.run(["dvc", "exp", "remove", exp], cwd=REPO, capture_output=True)
                seeded = [] if seed is None else [f"train.seed={seed}"]
                args = [a for o in [*base, *overrides, *seeded] for a in ("-S", quoted(o))]
                t0 = time.perf_counter()
                result = run(["dvc", "exp", "run", "--name", exp, *args], check=False)
                print(f"ablation {exp}: exit {result.returncode} in {time.perf_counter() - t0:.0f} s", flush=True)
                restore()  # the next row starts from the baseline, not from this row's outputs
        finally:
            restore()
    table = exp_table()  # every row run so far for this data set, also by earlier invocations
    if seed_list:
        text = spread_markdown(data, chosen, seed_list, table)
    else:
        text = markdown(data, [r for r in every if exp_name(data, r[0]) in table], table)
    if run_experiments:
        print(f"ablation: {len(runs)} runs in {(time.perf_counter() - start) / 60:.0f} min")
    print(text)
    if write:
        write_between(f"ablation:{data}:seeds" if seed_list else f"ablation:{data}", text, RESULTS)


if __name__ == "__main__":
    typer.run(main)
    sys.exit(0)
