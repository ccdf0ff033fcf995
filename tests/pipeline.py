"""A throw-away copy of the project in a temporary git repository, for tests that run DVC."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["dvc.yaml", "params.yaml", "stages", "photoid", "data/raw/README.md", ".dvcignore", ".gitignore"]

# The demo at its smallest: the whole pipeline in about a minute.
TINY_PARAMS = {
    "data.demo.individuals": 6, "data.demo.new_individuals": 2, "data.demo.mean_images": 5.0,
    "data.demo.width": 160, "data.demo.height": 120,
    "detect.epochs": 2, "detect.img_size": 96, "detect.batch": 8,
    "crop.side": 64, "filter.min_samples": 3, "split.n_folds": 2,
    "train.backbone": "resnet18", "train.pretrained": "false", "train.img_size": 48, "train.batch_size": 8,
    "train.frozen_stages": 0, "backbone.freeze_epochs": 0, "dolg.freeze_epochs": 0,
    "backbone.epochs": 1, "dolg.epochs": 1, "dolg.embedding_dim": 32, "dolg.local_dim": 32, "retrain.epochs": 1,
    "ensemble.folds": [0],  # one model per run (the default's fold all has a test of its own)
}


def set_params(params_file: Path, changes: dict) -> None:
    params = yaml.safe_load(params_file.read_text())
    for dotted, value in changes.items():
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def env() -> dict:
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"  # `python` in dvc.yaml = this one
    e.setdefault("GIT_AUTHOR_NAME", "photoid tests")
    e.setdefault("GIT_AUTHOR_EMAIL", "tests@photoid.invalid")
    e.setdefault("GIT_COMMITTER_NAME", "photoid tests")
    e.setdefault("GIT_COMMITTER_EMAIL", "tests@photoid.invalid")
    e["DVC_NO_ANALYTICS"] = "1"
    return e


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    if proc.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def make_project(dest: Path, params: dict | None = None) -> Path:
    dest.mkdir(parents=True)
    for rel in PROJECT_FILES:
        src = REPO / rel
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dest / rel)
    set_params(dest / "params.yaml", {**TINY_PARAMS, **(params or {})})
    run(["git", "init", "-q"], dest)
    run([sys.executable, "-m", "dvc", "init", "-q"], dest)
    shutil.copy(REPO / ".dvc" / "config", dest / ".dvc" / "config")  # the project's settings (parsing.list = append)
    run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "project"], dest)
    return dest


def dvc(project: Path, *args: str) -> str:
    return run([sys.executable, "-m", "dvc", *args], project)


def stages_run(output: str) -> list[str]:
    """Names of the stages a `dvc repro` output says it ran."""
    return re.findall(r"Running stage '([^']+)'", output)


def stages_skipped(output: str) -> list[str]:
    return re.findall(r"Stage '([^']+)' didn't change, skipping", output)


def embed_in_memory(model_embed, paths, img_size: int, flip: bool = False, cache=None) -> np.ndarray:
    """The flip-TTA embeddings of crops ``paths``, in memory: what the embed stage writes, as a reference."""
    from photoid.embed import flip_tta, iter_embeddings

    return np.concatenate([flip_tta(e, f) for e, f in iter_embeddings(model_embed, paths, img_size, 64, flip, None,
                                                                      cache=cache)])
