"""What every stage script shares: a Typer app and the way bad input is reported."""

from __future__ import annotations

import functools
import os
import sys
import time

import typer

from photoid.data.sources import DataError


def stage_app(help: str) -> typer.Typer:
    return typer.Typer(add_completion=False, help=help, pretty_exceptions_enable=False,
                       context_settings={"help_option_names": ["-h", "--help"]})


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
        print(f"{os.path.basename(sys.argv[0]).removesuffix('.py')}: done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        return result

    return wrapper


def as_bool(value: str, name: str) -> bool:
    """A boolean option given as a value (dvc.yaml renders params as ``true``/``false``)."""
    v = str(value).strip().lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off", ""):
        return False
    raise DataError(f"--{name} takes true or false, got {value!r}")


def as_ints(value: str, name: str) -> tuple[int, ...]:
    """A comma-separated list of integers (``3,6,9``)."""
    try:
        return tuple(int(v) for v in str(value).split(",") if v.strip())
    except ValueError:
        raise DataError(f"--{name} takes comma-separated integers like 3,6,9, got {value!r}") from None
