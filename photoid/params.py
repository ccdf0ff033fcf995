"""params.yaml: the one place where a parameter's value lives.

Every stage reads its parameters from params.yaml itself; dvc.yaml passes none on the command line,
and no dataclass or option carries a competing default. So a stage script run by hand
(``python stages/train_dolg.py --fold 0``) trains exactly what ``dvc repro`` trains, and
``--set dolg.epochs=3`` changes one value for one run, as ``dvc exp run -S dolg.epochs=3`` does.

A stage names the keys it reads (``READS = ("train", "dolg")``: whole sections or single keys),
and dvc.yaml lists the same under the stage's ``params`` (a test checks the two agree). A key of
those that the stage never reads (a typo in params.yaml or in ``--set``) stops it with a message:
a parameter that is silently ignored is worse than none.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path

import yaml

from photoid.errors import DataError

PARAMS_FILE = Path("params.yaml")


def _flatten(node, prefix: str, out: dict) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = node


def _as_text(value) -> str:
    if isinstance(value, bool):  # YAML's false, as dvc renders it on a command line
        return "true" if value else "false"
    return str(value)


def coerce(key: str, value, kind):
    """``value`` of ``key`` as ``kind`` (int, float, bool, str, tuple of ints, list, dict), or a
    DataError naming the key."""
    origin = typing.get_origin(kind) or kind
    bad = DataError(f"parameter {key} takes {getattr(kind, '__name__', kind)}, got {value!r}: fix it in params.yaml "
                    "(or in --set / dvc exp run -S).")
    if origin is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0", ""):
            return False
        raise bad
    if origin is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if origin is float:  # text too: YAML 1.1 reads 3e-05 (no dot, as `dvc exp run -S x=0.00003` writes it) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad
        try:
            number = float(value)
        except ValueError:
            raise bad from None
        if not math.isfinite(number):
            raise bad
        return number
    if origin is str:
        if isinstance(value, (dict, list)) or value is None:
            raise bad
        return _as_text(value)
    if origin is tuple:  # comma-separated integers: "3,6,9" or [3, 6, 9]
        items = value if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v.strip()]
        try:
            return tuple(int(v) for v in items)
        except (TypeError, ValueError):
            raise DataError(f"parameter {key} takes comma-separated integers like 3,6,9, got {value!r}") from None
    if origin is list:
        if not isinstance(value, list):
            raise bad
        return value
    return value


class Params:
    """The values of the keys one stage reads, and which of them it has read."""

    def __init__(self, values: dict, reads: tuple[str, ...], source: str):
        self.values, self.reads, self.source = values, reads, source
        self.read: set[str] = set()

    def _key(self, key: str):
        if key not in self.values:
            raise DataError(f"{self.source} has no parameter {key}, which this stage reads: add it (see the "
                            "project's params.yaml for its meaning and value).")
        self.read.add(key)
        return self.values[key]

    def get(self, key: str, kind=str):
        return coerce(key, self._key(key), kind)

    def str(self, key: str) -> str:
        return self.get(key, str)

    def int(self, key: str) -> int:
        return self.get(key, int)

    def float(self, key: str) -> float:
        return self.get(key, float)

    def bool(self, key: str) -> bool:
        return self.get(key, bool)

    def list(self, key: str) -> list:
        return self.get(key, list)

    def build(self, cls, *sections: str, **given):
        """A ``cls`` dataclass whose fields come from ``given``, else from the first of ``sections``
        that has a key of the field's name, else from the field's own default (a code constant,
        never a parameter of params.yaml)."""
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in given:
                kwargs[f.name] = given[f.name]
                continue
            key = next((f"{s}.{f.name}" for s in sections if f"{s}.{f.name}" in self.values), None)
            if key is not None:
                kwargs[f.name] = self.get(key, hints[f.name])
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise DataError(f"{self.source} has no parameter {' or '.join(f'{s}.{f.name}' for s in sections)}: "
                                "add it (see the project's params.yaml).")
        return cls(**kwargs)

    def check_all_read(self) -> None:
        """Stop when a key the stage was given is one it never read: a misspelt key, or one that no
        longer means anything."""
        unread = sorted(set(self.values) - self.read)
        if unread:
            raise DataError(f"{self.source}: {', '.join(unread)} {'is' if len(unread) == 1 else 'are'} not a parameter "
                            f"this stage uses (it reads {', '.join(self.reads)}): check the spelling, or remove "
                            f"{'it' if len(unread) == 1 else 'them'}.")


def _covered(key: str, reads: tuple[str, ...]) -> bool:
    return any(key == r or key.startswith(r + ".") for r in reads)


# Rules across params.yaml, checked whenever a stage loads its params (from the whole file, with the
# stage's --set applied), so a wrong value stops at once with the keys named, not in a later traceback.
AT_LEAST_ONE = ("detect.img_size", "detect.batch", "local.long_side", "local.max_keypoints",
                "filter.min_samples", "train.img_size", "train.batch_size", "train.grad_accum", "backbone.epochs",
                "dolg.epochs", "dolg.embedding_dim", "dolg.local_dim", "dolg.subcenters",
                "knn.neighbours", "knn.min_species_queries", "report.thumbnail", "report.page_size", "rerank.lnbnn_k",
                "rerank.ivf_probe", "knn.ivf_probe")
AT_LEAST_ZERO = ("data.min_side", "data.workers", "detect.epochs", "detect.max_train_images", "detect.workers",
                 "crop.side", "crop.margin", "crop.workers", "local.workers", "train.workers", "train.frozen_stages",
                 "backbone.freeze_epochs", "dolg.freeze_epochs", "retrain.epochs", "embed.batch_size", "embed.workers",
                 "knn.ivf_lists", "rerank.candidates", "rerank.verify", "rerank.photos", "rerank.ivf_above", "rerank.workers")
SHARES = ("detect.conf", "detect.val_fraction", "split.new_fraction", "pseudo.precision")  # from 0 to 1


def check_rules(values: dict, source: str) -> None:
    """Stop (DataError naming every key that breaks one) when ``values`` (flat keys) break a rule:
    a size or count below 1, a number below 0, a share outside 0..1, at least 2 folds, and crop.side
    0 (train.img_size) or at least train.img_size (the crops are stored at crop.side, read at train.img_size)."""
    problems = []

    def number(key):
        v = values.get(key)
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    for keys, least, what in ((AT_LEAST_ONE, 1, "at least 1"), (AT_LEAST_ZERO, 0, "0 or more")):
        problems += [f"{k} is {values[k]!r}: it must be {what}" for k in keys if number(k) is not None and number(k) < least]
    problems += [f"{k} is {values[k]!r}: it must be a share from 0 to 1" for k in SHARES
                 if number(k) is not None and not 0 <= number(k) <= 1]
    if number("split.n_folds") is not None and number("split.n_folds") < 2:
        problems.append(f"split.n_folds is {values['split.n_folds']!r}: cross-validation needs at least 2 folds")
    side, size = number("crop.side"), number("train.img_size")
    if side and size is not None and side < size:
        problems.append(f"crop.side ({side}) is smaller than train.img_size ({size}): the crops are stored at crop.side "
                        f"and read at train.img_size; set crop.side to at least {size}, or to 0 (train.img_size)")
    if problems:
        raise DataError(f"{source}: " + "; ".join(problems) + " (params.yaml, --set or dvc exp run -S).")


def load_params(reads: tuple[str, ...], path: Path = PARAMS_FILE, overrides: list[str] | None = None) -> Params:
    """The values under ``reads`` (section names or dotted keys) in ``path``, with ``overrides``
    (``section.key=value``, the value read as YAML like ``dvc exp run -S`` reads it) applied."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found: run the stage from the project's folder (where params.yaml is), "
                        "or name the file with --params.")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DataError(f"{path} is not valid YAML: {e}") from None
    flat: dict = {}
    _flatten(tree, "", flat)
    values = {}
    for r in reads:
        found = {k: v for k, v in flat.items() if _covered(k, (r,))}
        if not found:
            raise DataError(f"{path} has no {r}, which this stage reads: add it (see the project's params.yaml).")
        values.update(found)
    for item in overrides or []:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise DataError(f"--set {item!r}: write section.key=value, for example --set dolg.epochs=3.")
        if not _covered(key, reads):
            raise DataError(f"--set {key}: this stage does not read {key}; it reads {', '.join(reads)}.")
        if key not in values:
            near = sorted(k for k in values if k.rsplit(".", 1)[0] == key.rsplit(".", 1)[0])
            raise DataError(f"--set {key}: {path} has no such parameter" + (f" (there are {', '.join(near)})." if near else "."))
        try:  # `key=` is the empty string, as dvc exp run -S reads it (YAML would read null)
            values[key] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            values[key] = text
    check_rules({**flat, **values}, str(path))
    return Params(values, tuple(reads), str(path))
