"""`pip install .` alone gives a photoid that runs: the wheel holds every module and the files they
read, installs a `photoid` command, and declares every distribution its modules import."""

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from tests.structure import REPO


def _build_wheel(tmp_path: Path) -> Path:
    src = tmp_path / "src"  # a copy of what the wheel is built from: the build leaves nothing in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "photoid", src / "photoid", ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return next((tmp_path / "dist").glob("photoid-*.whl"))


def test_the_wheel_installs_a_photoid_whose_every_module_imports_and_whose_command_runs(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {p.relative_to(REPO).as_posix() for p in (REPO / "photoid").rglob("*") if p.is_file()
               and p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts}
    assert sources <= names, f"missing from the wheel: {sorted(sources - names)}"
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    env = {**os.environ, "PYTHONPATH": str(site), "YOLO_OFFLINE": "1"}
    code = ("import importlib, pkgutil, photoid\n"
            f"assert photoid.__file__.startswith({str(site)!r}), photoid.__file__\n"
            "mods = [m.name for m in pkgutil.walk_packages(photoid.__path__, 'photoid.')]\n"
            "[importlib.import_module(m) for m in mods]\n"
            "print(len(mods))")
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    modules = len([s for s in sources if s.endswith(".py")]) - 1  # photoid/__init__ is not among its submodules
    assert int(run.stdout.split()[-1]) >= modules
    command = subprocess.run([sys.executable, str(site / "bin" / "photoid"), "--help"], cwd=tmp_path, env=env,
                             capture_output=True, text=True)
    assert command.returncode == 0 and "identify" in command.stdout, command.stderr


def test_the_package_declares_every_distribution_its_modules_import():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11 on
    imported = set()
    for f in (REPO / "photoid").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"photoid"}
    declared = {_normal(d.split(">")[0].split("=")[0].split("<")[0].split("[")[0].split(";")[0])
                for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    provides = packages_distributions()
    undeclared = {m: provides.get(m) for m in third_party if not {_normal(d) for d in provides.get(m, [])} & declared}
    assert not undeclared, f"imported by photoid but not in pyproject's dependencies: {undeclared}"


def _normal(name: str) -> str:
    return name.strip().lower().replace("_", "-")
