"""The ``photoid`` command: what a researcher runs once the pipeline has trained (``dvc repro``).

    photoid identify survey/2026-11-20/ more.jpg          # top-5 answers for new photos
    photoid identify photo.jpg --from /data/photoid-run --out answers.csv --json

The stage scripts (``stages/``) stay what ``dvc repro`` runs; this is for photos outside the data set.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from pathlib import Path

import typer

from photoid.errors import DataError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None, no_args_is_help=True,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="photoid: which known whale, dolphin or beluga is in a photo, or is it a new one?")


@app.callback()
def main():
    """photoid: which known whale, dolphin or beluga is in a photo, or is it a new one?"""


@app.command()
def identify(
    photos: list[str] = typer.Argument(..., metavar="PATH...", help="Photos, or folders of photos (searched recursively)."),
    from_dir: Path = typer.Option(Path("."), "--from", help="The workspace where `dvc repro` ran (its models, embeddings, "
                                  "keypoints and params.yaml)."),
    out: Path = typer.Option(None, help="Write the answers there too: .csv, or .parquet."),
    as_json: bool = typer.Option(False, "--json", help="Print the answers as JSON lines instead of a table."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
):
    """Answer for new photos as knn-rank answers for the test photos: the five most likely
    individuals with their scores, new_individual where it ranks, and the box the crop came from.
    Photos that cannot be used are listed with their reason; the others are answered."""
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"  # the steps' progress bars too (tqdm reads it)
    from photoid.identify import Identifier, write_answers

    start = time.perf_counter()
    try:
        identifier = Identifier(from_dir, progress=not quiet)
        result = identifier.answer(photos)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(2)
    answers, rejected = result.answers, result.rejected
    if out is not None:
        write_answers(answers, out)
    if as_json:
        for row in answers.to_dict("records"):
            print(json.dumps(row, default=float))
    elif len(answers):
        for row in answers.itertuples():
            scores = " ".join("new" if getattr(row, f"id{n}") == "new_individual" else f"{getattr(row, f'score{n}'):.3f}"
                              for n in range(1, 6))
            print(f"{row.image}\t{row.predictions}\t({scores})")
    for row in rejected.itertuples():
        print(f"not answered: {row.path}: {row.reason}", file=sys.stderr)
    print(f"photoid identify: {len(answers)} answered, {len(rejected)} not, in {time.perf_counter() - start:.1f} s"
          + (f"; answers in {out}" if out is not None else ""), file=sys.stderr)
    if not len(answers):
        raise typer.Exit(2 if len(rejected) else 0)


def run() -> None:
    """The console script: the app, then an exit without the interpreter's teardown of torch (about
    2 s of a 2-core CPU, a quarter of answering three photos), once the exit handlers have run."""
    try:
        app()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(code)


if __name__ == "__main__":
    run()
