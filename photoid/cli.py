"""What every stage script shares: a Typer app, its two parameter options, and the way bad input is
reported."""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path

import typer

from photoid.errors import DataError
from photoid.params import PARAMS_FILE

# Every stage takes its parameters from params.yaml (see photoid.params); these two options say
# which file, and change single values for one run.
PARAMS_OPTION = typer.Option(PARAMS_FILE, "--params", help="The parameter file: every parameter of the stage comes "
                             "from it (its comments say what each does).")
SET_OPTION = typer.Option(None, "--set", "-S", metavar="KEY=VALUE", help="Change one parameter for this run only, as "
                          "`dvc exp run -S` does: section.key=value (repeatable).")

# The per-fold stages (train-backbone, train-dolg, embed, retrain): which fold, and where its files are.
FOLD_OPTION = typer.Option(..., help="Which fold: a number (see split.n_folds), or all (the model on every labelled "
                           "photo, no validation).")
# Every output of a per-fold stage, in the project's layout (photoid.paths.FoldOutputs) under one folder.
OUTPUTS_OPTION = typer.Option(Path("."), "--outputs", help="The folder this fold's outputs go under, in the project's "
                              "layout: the model in <outputs>/models/<stage>/fold<k>, its metrics in "
                              "<outputs>/metrics/<stage>/fold<k>.json, curves in <outputs>/metrics/curves/<stage>/fold<k>, "
                              "resume state in <outputs>/checkpoints/<stage>/fold<k>, embeddings in "
                              "<outputs>/data/processed/embeddings/<stage>/fold<k>. Default: the project itself, where "
                              "dvc.yaml expects them; another folder runs a stage by hand beside them.")


def fold_path_option(what: str, stage: str, help: str):
    """The option for another stage's per-fold output that this stage reads: empty by default, standing for
    ``paths.FoldOutputs(stage, k).<what>``, which the script fills in once it knows the fold."""
    from photoid.paths import FoldOutputs

    return typer.Option(None, help=f"{help} [default: {getattr(FoldOutputs(stage, '<k>'), what)}].")


class StageApp(typer.Typer):
    """A Typer app of one command whose --help shows the stage's docstring and the parameters it reads,
    and whose bad input ends in one clear message (:func:`reports_data_errors`)."""

    def __init__(self, help: str, epilog: str | None):
        super().__init__(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
                         context_settings={"help_option_names": ["-h", "--help"]})
        self.stage_help, self.stage_epilog = help, epilog

    def command(self, *args, **kwargs):
        kwargs.setdefault("help", self.stage_help)
        kwargs.setdefault("epilog", self.stage_epilog)
        register = super().command(*args, **kwargs)
        return lambda fn: register(reports_data_errors(fn))


def stage_app(help: str, reads: tuple[str, ...] = ()) -> StageApp:
    """The stage's Typer app; ``reads`` (the params.yaml sections or keys it reads) goes into its --help."""
    epilog = (f"Parameters: {', '.join(reads)} from params.yaml (or --params); change one for a run with --set, "
              f"e.g. --set {reads[0]}{'' if '.' in reads[0] else '.<key>'}=<value>.") if reads else None
    return StageApp(help, epilog)


def reports_data_errors(fn):
    """Turn a :class:`DataError` into a one-paragraph message and exit status 2, no traceback:
    the message already names the file, row or column and what to do. Also prints the stage's time."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            raise typer.Exit(2)
        stage = os.path.basename(sys.argv[0]).removesuffix(".py")
        print(f"{stage}: done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        return result

    return wrapper

