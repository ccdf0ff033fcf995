"""One table over several splits of a real set: `bench/real_data.py ... --seed <s> --out <s>.json` run once
per split seed, then

    python bench/real_data_splits.py seed0.json seed1.json seed2.json seed3.json

prints each row's figures as the mean over the splits, with the lowest and highest: on a set with a
dozen test photos of known animals one photo moves top-1 by 0.08, and only several splits tell rows
apart. A row missing from a split's file is left out of that split's mean (the count says how many).

A second table pairs the rows photo by photo: every test photo of a known animal of every split, its
AP@5 in one row against its AP@5 in another (--against, e.g. the earlier default, and the peer), the
difference and the ratio of the means with a 95 % bootstrap interval over those photos (10,000
draws): whether a set this size can tell the rows apart at all. A pair means something only where its
two rows ran on one machine: bench/real_data.py records each row's CPU and numeric libraries, another
machine's floating-point kernels train other models (the same commit's figures move by several hundredths
on a set this size), and a warning lists the pairs that mixed machines or did not record theirs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer

FIGURES = [("top1_known", "known top-1"), ("map5_known", "known MAP@5"), ("map5", "MAP@5 with new_individual"),
           ("cv_map5_known", "CV known MAP@5")]


def cell(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{sum(values) / len(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def paired(a: np.ndarray, b: np.ndarray, draws: int = 10_000, seed: int = 0) -> tuple[tuple, tuple]:
    """mean(a) - mean(b) and mean(a) / mean(b) over paired photos, each with its 95 % bootstrap interval
    (photos drawn with replacement, the pairs kept together)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(a), size=(draws, len(a)))
    ma, mb = a[picks].mean(axis=1), b[picks].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(mb > 0, ma / np.where(mb > 0, mb, 1), np.inf)
    ratio = a.mean() / b.mean() if b.mean() > 0 else np.inf
    return ((a.mean() - b.mean(), *np.percentile(ma - mb, [2.5, 97.5])), (ratio, *np.percentile(ratios, [2.5, 97.5])))


def row_name(row: str) -> str:
    """A row's name across splits: "previous (<commit>)" is "previous"."""
    return row.split(" (")[0] if row.startswith("previous") else row


def photo_pairs(splits: list[dict], row: str, against: str) -> tuple[np.ndarray, np.ndarray]:
    """AP@5 of the photos both rows answered, over every split that has both (bench/real_data.py's per_photo)."""
    a, b = [], []
    for split in splits:
        rows = {row_name(r): f for r, f in split["rows"].items()}
        if row in rows and against in rows and "per_photo" in rows[row] and "per_photo" in rows[against]:
            common = sorted(set(rows[row]["per_photo"]) & set(rows[against]["per_photo"]))
            a += [rows[row]["per_photo"][k] for k in common]
            b += [rows[against]["per_photo"][k] for k in common]
    return np.array(a), np.array(b)


def machine_mismatches(splits: list[dict], row: str, against: str) -> list[str]:
    """The splits (by their position) where ``row`` and ``against`` both ran but on different machines, or
    where either's machine is not recorded (bench/real_data.py's ``machine``: the CPU and the numeric
    libraries): the same recipe on another machine trains other models, so such a pair mixes the change
    with the machine's."""
    found = []
    for position, split in enumerate(splits):
        rows = {row_name(r): f for r, f in split["rows"].items()}
        if row in rows and against in rows:
            a, b = rows[row].get("machine"), rows[against].get("machine")
            if a is None or b is None:
                found.append(f"split {position}: machine not recorded")
            elif a != b:
                found.append(f"split {position}: {a} against {b}")
    return found


def main(files: list[Path] = typer.Argument(..., help="bench/real_data.py --out files, one per split."),
         name: str = typer.Option("", help="The set's name (default: the first file's)."),
         against: str = typer.Option("previous,peer", help="Rows every other row is paired with, photo by photo.")):
    splits = [json.loads(Path(f).read_text()) for f in files]
    rows: dict[str, list[dict]] = {}
    for split in splits:
        for row, figures in split["rows"].items():
            rows.setdefault(row_name(row), []).append(figures)
    print(f"{name or splits[0]['set']}: {len(splits)} splits ({', '.join(str(Path(f).stem) for f in files)}); each cell the mean "
          "over the splits (lowest–highest)\n")
    print("| row | splits | " + " | ".join(h for _, h in FIGURES) + " |")
    print("|---|---|" + "---|" * len(FIGURES))
    for row, runs in rows.items():
        cells = [cell([r[k] for r in runs if r.get(k) is not None]) for k, _ in FIGURES]
        print(f"| {row} | {len(runs)} | " + " | ".join(cells) + " |")
    mixed = []
    for base in [b for b in against.split(",") if b in rows]:
        print(f"\nPaired with {base}, photo by photo (known animals' test photos of every split with both rows; "
              "AP@5 from the five answers): 95 % bootstrap intervals\n")
        print(f"| row | photos | known MAP@5 | {base}'s | difference | ratio |")
        print("|---|---|---|---|---|---|")
        for row in rows:
            a, b = photo_pairs(splits, row, base)
            if row == base or not len(a):
                continue
            (d, dlo, dhi), (r, rlo, rhi) = paired(a, b)
            print(f"| {row} | {len(a)} | {a.mean():.3f} | {b.mean():.3f} | {d:+.3f} ({dlo:+.3f} to {dhi:+.3f}) | "
                  f"{r:.2f}x ({rlo:.2f}x to {rhi:.2f}x) |")
            mixed += [f"{row} with {base}, {m}" for m in machine_mismatches(splits, row, base)]
    if mixed:
        print("\nWarning: these pairs did not run on one machine (another CPU or other library versions train other "
              "models), so their differences are not the change's alone:\n" + "\n".join(f"- {m}" for m in mixed))


if __name__ == "__main__":
    typer.run(main)
