"""`photoid identify` on a folder of many new photos, as a survey's batch arrives: seconds, photos
per second and peak RSS of the whole command, with its review page.

    python bench/identify_batch.py --photos 1000          # after `dvc repro` in this workspace

The photos are drawn by the demo generator with another seed (fins the pipeline never saw, in new
photos), so the run is of unseen photos of the kind the workspace was trained on; a few unusable
files (empty, not an image, truncated) are mixed in and must come back as "not answered" with their
reason, the rest answered. The command is run as a user runs it, in a child process.
"""

from __future__ import annotations

import dataclasses
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import typer

app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)


@app.command()
def main(
    photos: int = typer.Option(1000, help="How many photos to answer."),
    workspace: Path = typer.Option(Path("."), help="Where `dvc repro` ran (identify's --from)."),
    seed: int = typer.Option(12345, help="The demo generator's seed for these photos (the pipeline's is data.demo.seed)."),
    keep: Path = typer.Option(None, help="Keep the photos, answers and review page there (default: a temporary folder)."),
):
    from photoid.data import demo
    from photoid.params import load_params

    base = load_params(("data.demo",), workspace / "params.yaml").build(demo.DemoConfig, "data.demo")
    # each individual gets about mean_images + 1 photos: enough individuals that `photos` are drawn
    cfg = dataclasses.replace(base, seed=seed, individuals=max(1, int(np.ceil(photos / base.mean_images))), new_individuals=0,
                              test_known_fraction=1.0)
    with tempfile.TemporaryDirectory(prefix="photoid-identify-bench-") as tmp:
        folder = Path(keep) if keep else Path(tmp)
        survey = folder / "survey"
        generated = folder / "generated"
        demo.generate(generated, cfg, progress=False)
        files = sorted((generated / "train_images").glob("*.jpg")) + sorted((generated / "test_images").glob("*.jpg"))
        files = files[:photos]
        survey.mkdir(parents=True, exist_ok=True)
        for n, f in enumerate(files):
            f.rename(survey / f"IMG_{n:05d}.jpg")
        (survey / "IMG_empty.jpg").write_bytes(b"")
        (survey / "notes.jpg").write_text("not a photo")
        whole = (survey / "IMG_00000.jpg").read_bytes()
        (survey / "IMG_truncated.jpg").write_bytes(whole[: len(whole) // 3])
        out, page = folder / "answers.csv", folder / "review.html"
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "photoid.console", "identify", str(survey), "--from", str(workspace),
                               "--out", str(out), "--html", str(page), "-q"], capture_output=True, text=True)
        seconds = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if done.returncode != 0:
            sys.exit(f"identify failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        answers = pd.read_csv(out)
        not_answered = [line for line in done.stderr.splitlines() if line.startswith("not answered:")]
        print(f"photos given: {len(files) + 3} ({len(files)} generated, 3 unusable)")
        print(f"answered: {len(answers)}; not answered: {len(not_answered)}")
        for line in not_answered:
            print(f"  {line}")
        print(f"traceback in stderr: {'Traceback' in done.stderr}")
        print(f"wall: {seconds:.1f} s ({len(answers) / seconds:.1f} photos/s, models loaded once)")
        print(f"peak RSS of the command: {peak_mb:.0f} MB")
        print(f"review page: {page.stat().st_size / 1e6:.1f} MB; {done.stderr.strip().splitlines()[-1]}")
        new_first = (answers["id1"] == "new_individual").mean()
        print(f"answered new_individual first: {new_first:.0%} (all these fins are unseen: every one is new)")


if __name__ == "__main__":
    app()
