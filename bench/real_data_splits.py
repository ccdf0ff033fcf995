"""One table over several splits of a real set: `bench/real_data.py ... --seed <s> --out <s>.json` run once
per split seed, then

    python bench/real_data_splits.py seed0.json seed1.json seed2.json seed3.json

prints each row's figures as the mean over the splits, with the lowest and highest: on a set with a
dozen test photos of known animals one photo moves top-1 by 0.08, and only several splits tell rows
apart. A row missing from a split's file is left out of that split's mean (the count says how many).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

FIGURES = [("top1_known", "known top-1"), ("map5_known", "known MAP@5"), ("map5", "MAP@5 with new_individual"),
           ("cv_map5_known", "CV known MAP@5")]


def cell(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{sum(values) / len(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def main(files: list[Path] = typer.Argument(..., help="bench/real_data.py --out files, one per split."),
         name: str = typer.Option("", help="The set's name (default: the first file's).")):
    splits = [json.loads(Path(f).read_text()) for f in files]
    rows: dict[str, list[dict]] = {}
    for split in splits:
        for row, figures in split["rows"].items():
            rows.setdefault(row.split(" (")[0] if row.startswith("previous") else row, []).append(figures)
    print(f"{name or splits[0]['set']}: {len(splits)} splits ({', '.join(str(Path(f).stem) for f in files)}); each cell the mean "
          "over the splits (lowest–highest)\n")
    print("| row | splits | " + " | ".join(h for _, h in FIGURES) + " |")
    print("|---|---|" + "---|" * len(FIGURES))
    for row, runs in rows.items():
        cells = [cell([r[k] for r in runs if r.get(k) is not None]) for k, _ in FIGURES]
        print(f"| {row} | {len(runs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    typer.run(main)
