"""Where the minutes of a whole `dvc repro` go: a fresh clone of this repository (a commit of it), the
pipeline run there from nothing as a new user runs it, and the seconds of each stage printed as a
table with the total (wall clock, from the moment dvc starts a stage to the moment it starts the next).

    python bench/pipeline_time.py                       # the demo at HEAD's params
    python bench/pipeline_time.py --set train.img_size=224 --commit <commit>

``--set`` runs `dvc exp run -S ...` instead of `dvc repro` (the same stages, from nothing, with those
params). The clone imports its own photoid (PYTHONPATH), with this environment's packages.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer

REPO = Path(__file__).resolve().parents[1]
STAGE_START = re.compile(r"Running stage '([^']+)'")


def stage_seconds(lines, clock=time.perf_counter) -> tuple[list[tuple[str, float]], float]:
    """Each stage's seconds from dvc's output lines as they come (a stage ends where the next starts,
    the last where the output ends), and the seconds in all; lines are echoed."""
    start = last = clock()
    stages: list[tuple[str, float]] = []
    current = None
    for line in lines:
        sys.stdout.write(line)
        sys.stdout.flush()
        found = STAGE_START.search(line)
        if found:
            now = clock()
            if current is not None:
                stages.append((current, now - last))
            current, last = found.group(1), now
    end = clock()
    if current is not None:
        stages.append((current, end - last))
    return stages, end - start


def table(stages: list[tuple[str, float]], total: float) -> str:
    rows = ["| stage | seconds | share |", "|---|---|---|"]
    rows += [f"| {name} | {s:.0f} | {100 * s / total:.0f} % |" for name, s in stages]
    rows.append(f"| whole chain (dvc's own work included) | {total:.0f} ({total / 60:.1f} min) | 100 % |")
    return "\n".join(rows)


def main(
    commit: str = typer.Option("HEAD", help="The commit of this repository to clone and run."),
    set_params: list[str] = typer.Option([], "--set", help="A param for this run (key=value; repeatable): "
                                         "`dvc exp run -S` instead of `dvc repro`."),
    work: Path = typer.Option(None, help="Folder to clone into (default: a temporary one, removed after)."),
):
    with tempfile.TemporaryDirectory(prefix="photoid-time-") as tmp:
        clone = (work or Path(tmp)).resolve() / "photoid"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        subprocess.run(["git", "checkout", "-q", commit], cwd=clone, check=True)
        args = ["exp", "run", *[f"-S={p}" for p in set_params]] if set_params else ["repro"]
        env = {**os.environ, "PYTHONPATH": str(clone), "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "dvc", *args], cwd=clone, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        stages, total = stage_seconds(proc.stdout)
        if proc.wait() != 0:
            raise SystemExit(f"dvc {' '.join(args)} failed in {clone} (exit {proc.returncode}): see its output above")
        described = subprocess.run(["git", "log", "-1", "--format=%h %s"], cwd=clone, capture_output=True,
                                   text=True).stdout.strip()
    print(f"\n`dvc {' '.join(args)}` on a fresh clone of {described[:80]}, {os.cpu_count()} CPUs:\n")
    print(table(stages, total))


if __name__ == "__main__":
    typer.run(main)
