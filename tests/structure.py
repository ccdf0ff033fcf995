"""What the structure tests read: the photoid modules a stage script imports (directly or not), and
what dvc.yaml says each stage depends on and reads."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"


def project_config(cls, *sections: str, **given):
    """A ``cls`` config (e.g. MatchConfig from ``rerank``) with the project's params.yaml values but ``given``."""
    from photoid.params import load_params

    return load_params(sections, PARAMS).build(cls, *sections, **given)


def load_stage(name: str, root: Path = REPO):
    """The module of stage script ``stages/<name>.py`` (its ``app`` and ``READS``)."""
    spec = importlib.util.spec_from_file_location(f"stage_{name}", root / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def module_file(root: Path, dotted: str) -> Path | None:
    """The file of module ``dotted`` under ``root`` (a module or a package's __init__), if it is one."""
    base = root.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(tree: ast.AST) -> set[str]:
    """Dotted names a module imports anywhere in it (in functions too: a lazy import is still a dependency)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # `from photoid import paths`
    return names


def photoid_imports(root: Path, script: Path) -> set[str]:
    """Paths (relative to ``root``, posix) of every photoid module ``script`` runs when imported:
    what it imports, what those import, and the __init__ of every package on the way."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        tree = ast.parse(todo.pop().read_text())
        for name in _imported_names(tree):
            if name.split(".")[0] != "photoid":
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # photoid, photoid.data, photoid.data.split: each runs
                f = module_file(root, ".".join(parts[:i]))
                if f is not None and f not in seen:
                    seen.add(f)
                    todo.append(f)
    return {f.relative_to(root).as_posix() for f in seen}


def dvc_stages(root: Path) -> dict:
    """dvc.yaml's stages, a foreach stage as its ``do`` block."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return {name: spec.get("do", spec) for name, spec in stages.items()}


def covered_modules(root: Path, deps: list[str]) -> set[str]:
    """The photoid .py files that a stage's deps cover (a folder dep covers every module in it)."""
    out = set()
    for dep in deps:
        if not dep.startswith("photoid"):
            continue
        path = root / dep
        if path.is_dir():
            out.update(f.relative_to(root).as_posix() for f in path.rglob("*.py"))
        elif path.suffix == ".py":
            out.add(dep)
    return out


def script_of(spec: dict) -> str:
    """The stage script a dvc.yaml command runs (``python stages/x.py ...``)."""
    return next(w for w in spec["cmd"].split() if w.startswith("stages/") and w.endswith(".py"))


def import_graph(root: Path) -> dict[str, set[str]]:
    """Each photoid module (path relative to ``root``) and the photoid modules it names in an import,
    anywhere in it (inside a function or under TYPE_CHECKING too)."""
    graph = {}
    for f in sorted((root / "photoid").rglob("*.py")):
        targets = {module_file(root, n) for n in _imported_names(ast.parse(f.read_text())) if n.split(".")[0] == "photoid"}
        graph[f.relative_to(root).as_posix()] = {t.relative_to(root).as_posix() for t in targets if t is not None and t != f}
    return graph


def import_cycles(root: Path) -> list[list[str]]:
    """Chains of photoid modules that import each other back (a -> ... -> a), one per module caught in one."""
    graph, cycles, caught = import_graph(root), [], set()
    for start in graph:
        if start in caught:
            continue
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    cycles.append(path + [start])
                    caught.update(path)
                    stack.clear()
                    break
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
    return cycles
